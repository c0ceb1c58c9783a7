"""How far `biasamp status`'s ETA is from when a finished study really ended.

The study's logs replayed at points of its run (`biasamp status --as-of`): at each, the time it
really had left, the ETA's (biasamp.progress: generations left at the median generation, as many
trajectories at once as ran then) and, as the baseline, a naive one (elapsed time scaled by the
share of generations left). Errors are relative to the time really left.

    python bench/status_eta.py STUDY_DIR [--at 0.25,0.5,0.75]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from biasamp.progress import read_log, study_status
from biasamp.study import study_config


def log_span(out: Path) -> tuple[float, float]:
    """The first and the last time stamped in the study's trajectory logs."""
    stamps = [r[0] for log in (out / "logs").glob("*.log") for r in read_log(log, float("inf")) if isinstance(r, tuple)]
    return min(stamps), max(stamps)


def replay(study_dir: Path, fractions=(0.25, 0.5, 0.75)) -> list[dict]:
    """At each fraction of the logs' span: seconds really left, our ETA's and the naive one's."""
    cfg = study_config(study_dir)
    start, end = log_span(cfg.output_dir)
    rows = []
    for f in fractions:
        at = start + f * (end - start)
        s = study_status(cfg, as_of=at)
        share = s.generations_done / s.generations_total
        naive = (at - start) * (1 - share) / share if share else None
        rows.append(
            {
                "at": f,
                "generations_done": s.generations_done,
                "left_s": end - at,
                "ours_s": s.eta_seconds,
                "naive_s": naive,
                "ours_error": None if s.eta_seconds is None else abs(s.eta_seconds - (end - at)) / (end - at),
                "naive_error": None if naive is None else abs(naive - (end - at)) / (end - at),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study_dir", type=Path)
    parser.add_argument("--at", default="0.25,0.5,0.75", help="Fractions of the run's span, comma-separated.")
    args = parser.parse_args()
    rows = replay(args.study_dir, [float(x) for x in args.at.split(",")])
    print(f"{'at':>5} {'gens done':>9} {'left':>8} {'ETA (ours)':>11} {'naive':>8} {'error ours':>10} {'naive':>7}")
    for r in rows:
        print(
            f"{r['at']:5.0%} {r['generations_done']:9d} {r['left_s']:7.1f}s {r['ours_s'] or float('nan'):10.1f}s "
            f"{r['naive_s'] or float('nan'):7.1f}s {r['ours_error'] or float('nan'):10.0%} "
            f"{r['naive_error'] or float('nan'):7.0%}"
        )


if __name__ == "__main__":
    main()
