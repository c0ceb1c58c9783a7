"""Memory of fine-tuning under DeepSpeed ZeRO: estimated for each study model, and measured on CPU.

    python bench/zero_memory.py                          # estimate: GPU memory per GPU, ZeRO-2, bf16 (~10 s)
    python bench/zero_memory.py --measure qwen2.5-0.5b   # measure: each worker's peak RSS on CPU (~12 min, 2 cores)

Estimate: DeepSpeed's own estimator (bf16, AdamW, no offload) over the parameter counts of the shipped
architectures (biasamp/data/architectures, built on the meta device: no download, no memory).
Activations come on top: at micro-batch 1 x 512 tokens they add roughly 1-3 GB at these sizes.

Measure: the architecture at random init (model.kind architecture, the GPT-2 BPE vocabulary) trains
2 optimizer steps (8 bundled articles, batch 4, 256 tokens, fp32 AdamW) with the plain backend, and
with backend deepspeed under ZeRO-2 and ZeRO-3 on 1, 2 and 4 Ray Train workers (gloo). Each runs in
a fresh process; per worker it prints the peak resident memory, and the peak minus what the process
held before the model was loaded (model states + activations + buffers), beside the model states that
each layout should hold: fp32 weights 4, gradients 4 and Adam moments 8 bytes per parameter, of which
ZeRO-2 splits gradients and moments over the workers and ZeRO-3 all three.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT))
from biasamp.config import ModelConfig, TrainConfig  # noqa: E402
from biasamp.models import ARCHITECTURES, architecture_config  # noqa: E402

# (backend, ZeRO stage, workers) measured by --measure, in the order printed
LAYOUTS = [("plain", None, 1), ("deepspeed", 2, 2), ("deepspeed", 3, 1), ("deepspeed", 3, 2), ("deepspeed", 3, 4)]
TRAIN = {"epochs": 1, "batch_size": 4, "lr": 1e-4, "max_length": 256}  # 8 articles: 2 optimizer steps
ARTICLES = 8


def parameters(name: str, vocab_size: int | None = None) -> int:
    cfg = ModelConfig(kind="architecture", name=name, tokenizer="gpt2-bpe")
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(architecture_config(cfg, vocab_size))
    return sum(p.numel() for p in model.parameters())  # tied embeddings counted once


def estimate() -> None:
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    print(f"{'model':16}{'params':>8}" + "".join(f"{f'{n} GPU':>9}" for n in (1, 2, 4, 8)))
    for name in sorted(p.stem for p in ARCHITECTURES.glob("*.json")):
        params = parameters(name)
        per_gpu = [
            estimate_zero2_model_states_mem_needs(params, n, 1, cpu_offload=False)[1] / 2**30 for n in (1, 2, 4, 8)
        ]
        print(f"{name:16}{params / 1e9:7.2f}B" + "".join(f"{g:8.1f}G" for g in per_gpu))


def model_states(params: int, stage: int | None, workers: int) -> float:
    """Bytes per worker for fp32 weights (4), gradients (4) and AdamW moments (8) per parameter."""
    if stage == 3:
        return 16 * params / workers
    if stage == 2:
        return 4 * params + 12 * params / workers
    return 16 * params


def one(arch: str, backend: str, stage: int | None, workers: int) -> dict:
    """One layout in this (fresh) process: the loss curve and each worker's memory."""
    import psutil

    from biasamp.corpus import read_source
    from biasamp.models import load_base_model, load_tokenizer
    from biasamp.stages.train import TRAINERS

    cfg = ModelConfig(kind="architecture", name=arch, tokenizer="gpt2-bpe")
    tok = load_tokenizer(cfg)
    train = dict(TRAIN, backend=backend)
    if backend == "deepspeed":
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        import ray

        from biasamp.backends import deepspeed_train  # noqa: F401 (registers the trainer)

        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        train["deepspeed"] = {"workers": workers, "zero_stage": stage, "micro_batch": 1, "cpus_per_worker": 2 / workers}
    before = psutil.Process().memory_info().rss
    model = load_base_model(cfg, len(tok), seed=0)
    with tempfile.TemporaryDirectory(prefix="biasamp-zero-") as work:
        metrics = TRAINERS[backend](
            model, tok, read_source("bundled").head(ARTICLES), TrainConfig(**train), seed=0, workdir=Path(work)
        )
    if backend == "plain":
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        metrics["worker_memory"] = [{"peak_rss": peak, "rss_before_model": before}]
    return {"loss_curve": metrics["loss_curve"], "worker_memory": metrics["worker_memory"]}


def measure(arch: str) -> None:
    import psutil

    params = parameters(arch, vocab_size=50257)
    print(f"{arch} at random init, GPT-2 BPE vocabulary: {params / 1e6:.0f}M parameters; fp32 AdamW, CPU, gloo")
    print(
        f"{'layout':22}{'loss per step':>18}{'peak RSS per worker, GiB':>32}"
        f"{'peak - before model':>24}{'expected states':>18}"
    )
    curves = []
    for backend, stage, workers in LAYOUTS:
        child = subprocess.run(
            [sys.executable, __file__, "--one", json.dumps([arch, backend, stage, workers])],
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        name = "plain (1 process)" if backend == "plain" else f"ZeRO-{stage} x {workers} workers"
        if child.returncode != 0:  # e.g. Ray's memory monitor killed a worker: the layout does not fit here
            oom = "out of memory" in child.stderr.lower()
            why = "killed by Ray's memory monitor: does not fit this machine" if oom else child.stderr[-2000:]
            print(f"{name:22}{why}", flush=True)
            continue
        got = json.loads(child.stdout.strip().splitlines()[-1])
        curves.append(got["loss_curve"])
        peaks = [w["peak_rss"] / 2**30 for w in got["worker_memory"]]
        used = [(w["peak_rss"] - w["rss_before_model"]) / 2**30 for w in got["worker_memory"]]
        print(
            f"{name:22}{' '.join(f'{x:.3f}' for x in got['loss_curve']):>18}"
            f"{', '.join(f'{p:.2f}' for p in peaks):>32}{max(used):>23.2f}G"
            f"{model_states(params, stage, workers) / 2**30:>17.2f}G",
            flush=True,
        )
    gap = max(abs(a - b) for curve in curves[1:] for a, b in zip(curves[0], curve))
    print(f"largest loss gap to the plain backend at any step: {gap:.4f} nats")
    print(f"(this machine: {psutil.virtual_memory().total / 2**30:.1f} GiB, {os.cpu_count()} cores)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--measure", metavar="ARCHITECTURE", help="measure on CPU (e.g. qwen2.5-0.5b, smollm2-135m)")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # a child of --measure: [arch, backend, stage, workers]
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(*json.loads(args.one))))
    elif args.measure:
        measure(args.measure)
    else:
        estimate()


if __name__ == "__main__":
    main()
