"""Start-up: `biasamp run configs/quickstart.yaml` from this tree and from the commit before the
converted-model cache (BASELINE), interleaved, each run in a fresh study folder. Figures per run:
each trajectory's start (its first log line) to its first training step (its "training on" line,
after which the trainer takes its first step), the launch of `biasamp run` to that step, and the
whole run. Ours runs on a warm cache (converted once before the timed runs; BIASAMP_CACHE is a
folder of the bench's own); the baseline converts the GGUF file in every trajectory, as it did.
Run by `python -m bench startup` (a quickstart per repeat and side: about 9 minutes a repeat).
"""

from __future__ import annotations

import datetime
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).parents[1]
BASELINE = "c7797fb"  # main before the converted-model cache and the instruments loaded at first scoring
QUICKSTART = "configs/quickstart.yaml"


def _stamp(line: str) -> float:
    return datetime.datetime.strptime(line[:19], "%Y-%m-%d %H:%M:%S").timestamp()


def run_once(tree: Path, out: Path, env: dict) -> dict:
    """One quickstart run from `tree`: seconds to each trajectory's first training step, from its own
    start and from the launch, and the whole run (log stamps are whole seconds)."""
    launch = time.time()
    command = [
        sys.executable,
        "-m",
        "biasamp.cli",
        "run",
        QUICKSTART,
        "--out",
        str(out),
        "--set",
        "wandb.mode=disabled",
    ]
    try:  # a quickstart takes about 8 min on 2 cores: three times that is a stall
        res = subprocess.run(
            command, cwd=tree, capture_output=True, text=True, env={**env, "PYTHONPATH": str(tree)}, timeout=1500
        )
    except subprocess.TimeoutExpired:
        raise TimeoutError(f"{tree}: the quickstart did not end in 1,500 s (stalled); see {out / 'logs'}") from None
    whole = time.time() - launch
    if res.returncode != 0:
        raise SystemExit(f"{tree}: biasamp run failed\n{res.stdout[-2000:]}{res.stderr[-2000:]}")
    own, from_launch = [], []
    for log in sorted((out / "logs").glob("*.log")):
        lines = log.read_text().splitlines()
        first_step = _stamp(next(line for line in lines if " G0/" in line and "training on" in line))
        own.append(first_step - _stamp(lines[0]))
        from_launch.append(first_step - launch)
    return {"own": max(own), "launch": max(from_launch), "whole": whole}


def measure(repeats: int) -> list[dict]:
    work = Path(tempfile.mkdtemp(prefix="biasamp-startup-"))
    base = work / "baseline"
    base.mkdir()
    archive = subprocess.run(["git", "archive", BASELINE], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(base)], input=archive, check=True)
    os.environ["BIASAMP_CACHE"] = str(work / "cache")  # this process's conversion and both sides' runs
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    from biasamp.config import ModelConfig
    from biasamp.models import gguf_converted

    t0 = time.perf_counter()
    gguf_converted(ModelConfig(kind="gguf", name="smollm2"))  # the one conversion this machine makes
    print(f"startup: the GGUF file converted into the cache in {time.perf_counter() - t0:.0f}s (once per machine)")
    runs = {"ours": [], "baseline": []}
    try:
        for r in range(repeats):  # interleaved: a slow spell of the machine touches both
            for side, tree in (("baseline", base), ("ours", ROOT)):
                runs[side].append(run_once(tree, work / f"{side}-{r}", env))
                print(f"startup: {side} run {r + 1}: {runs[side][-1]}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    figures = {
        "own": "a quickstart trajectory's start to its first training step (the later of 2)",
        "launch": "`biasamp run` launch to the later trajectory's first training step",
        "whole": "the whole `biasamp run configs/quickstart.yaml` (W&B disabled)",
    }
    return [
        {
            "figure": figure,
            "unit": "s",
            "ours": "converted-model cache (warm), instruments at first scoring",
            "baseline": f"GGUF de-quantized per load, instruments before training ({BASELINE})",
            "ours_s": [x[key] for x in runs["ours"]],
            "baseline_s": [x[key] for x in runs["baseline"]],
            "check": "both studies complete (exit 0)",
        }
        for key, figure in figures.items()
    ]
