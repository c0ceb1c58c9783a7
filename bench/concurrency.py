"""Concurrency: the smoke study's 4 trajectories (4 arms x 1 seed x 3 generations) under Ray, 2 at
once (1 CPU each) and all 4 at once (0.5 CPU each; torch uses one thread per trajectory either
way) vs one after another (2 CPUs, 2 threads each), wall time of the whole `biasamp run` (Ray's
start included, the same in each). The check is where a sequential run's time went, by stage
(the line `biasamp run` ends with). Run by `python -m bench concurrency`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from biasamp.study import time_by_stage

ROOT = Path(__file__).parents[1]
STUDY = [str(ROOT / "configs" / "smoke.yaml"), "--set", "seeds=[0]", "--set", "wandb.mode=disabled"]


def wall(cpus: float, out: Path) -> float:
    t0 = time.perf_counter()
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "biasamp.cli",
            "run",
            *STUDY,
            "--out",
            str(out),
            "--set",
            f"resources.cpus_per_trajectory={cpus}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    if res.returncode != 0:
        raise SystemExit(res.stdout[-2000:] + res.stderr[-2000:])
    return time.perf_counter() - t0


def measure(repeats: int) -> list[dict]:
    work = Path(tempfile.mkdtemp(prefix="biasamp-concurrency-"))
    layouts = {
        2: "one after another (2 CPUs each)",
        1: "2 at once under Ray (1 CPU each)",
        0.5: "all 4 at once under Ray (0.5 CPU each)",
    }
    times = {cpus: [] for cpus in layouts}
    try:
        for r in range(repeats):  # interleaved: a slow spell of the machine touches every layout
            for cpus in layouts:
                times[cpus].append(wall(cpus, work / f"{cpus}-{r}"))
        split = time_by_stage(work / "2-0")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return [
        {
            "figure": f"4 trajectories of the smoke study on one machine, {layouts[cpus].split(' under')[0]}",
            "unit": "s (wall of biasamp run)",
            "ours": layouts[cpus],
            "baseline": layouts[2],
            "ours_s": times[cpus],
            "baseline_s": times[2],
            "check": f"one after another, {split}",
        }
        for cpus in (1, 0.5)
    ]
