"""How well trajectories share a machine: the smoke study's 4 trajectories (4 arms x 1 seed x 3
generations) under Ray, one after another (2 CPUs, so 2 torch threads, per trajectory: the
baseline) vs side by side (1 CPU each: 2 at once; 0.5 each: 4 at once, 1 thread each). Wall time of
the whole `biasamp run` (Ray's start included, the same in each), min / median / max over repeats,
and the ratio of medians to the baseline.

    python bench/concurrency.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).parents[1]
STUDY = [str(ROOT / "configs" / "smoke.yaml"), "--set", "seeds=[0]", "--set", "wandb.mode=disabled"]
LAYOUTS = {"one after another (2 CPU each)": 2, "2 at once (1 CPU each)": 1, "4 at once (0.5 CPU each)": 0.5}


def wall(cpus: float, out: Path) -> float:
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "biasamp.cli", "run", *STUDY, "--out", str(out),
                          "--set", f"resources.cpus_per_trajectory={cpus}"], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if res.returncode != 0:
        raise SystemExit(res.stdout[-2000:] + res.stderr[-2000:])
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="biasamp-concurrency-"))
    print(f"{os.cpu_count()} CPUs; smoke study, 4 trajectories; {args.repeats} repeats, interleaved")
    times = {name: [] for name in LAYOUTS}
    try:
        for r in range(args.repeats):
            for name, cpus in LAYOUTS.items():
                out = work / f"{cpus}-{r}"
                times[name].append(wall(cpus, out))
                shutil.rmtree(out)
        base = statistics.median(times[next(iter(LAYOUTS))])
        for name, ts in times.items():
            med = statistics.median(ts)
            print(f"{name:32s} wall {min(ts):6.1f} / {med:6.1f} / {max(ts):6.1f} s (min/median/max)  "
                  f"{med / base:5.2f}x the one-after-another median")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
