"""The chaos test, small: a smoke study SIGKILLed (its whole process group) at three points that
matter most, stopped by SIGTERM and by SIGINT, an extension killed after its last trajectory, and the
disk filled (where a tmpfs can be mounted); each resumed and compared with an uninterrupted run. And
on a multi-node Ray (a 0-CPU head, two worker nodes), a worker node SIGKILLed while a trajectory on
it trains, while it generates, and where the driver's queue once lived: the same run must finish.
`python bench/chaos.py` runs every targeted point and random ones (docs/cluster.md: "Killed at any point")."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


@pytest.mark.slow
def test_killed_stopped_or_node_lost_smoke_study_ends_identical_without_orphans_or_debris():
    points = "checkpoint_being_written,scores_written,after_last_trajectory"
    stops = "sigterm_training,sigint_scoring,extension_after_last_trajectory,disk_full"
    res = subprocess.run(
        [sys.executable, "bench/chaos.py", "--points", points, "--random", "0", "--stops", stops, "--nodes", "all"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=2700,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    same, trials = map(int, re.search(r"(\d+)/(\d+) identical after a kill or stop", res.stdout).groups())
    skipped = res.stdout.count("skipped disk_full: cannot mount")  # a machine that cannot mount a tmpfs
    assert same == trials == 10 - skipped, res.stdout
    # A worker node SIGKILLed while a trajectory on it trains, while it generates, and the node that
    # held the driver's progress queue before it was pinned: the same run finished each time.
    assert "worker nodes killed: 3; the same run finished identical: 3/3; the killed trajectory retried" in res.stdout
    assert f"stops ending in one line with their exit status: {trials}/{trials}" in res.stdout
    assert "orphaned Ray processes: 0; trials leaving debris: 0" in res.stdout
