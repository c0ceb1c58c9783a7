"""The chaos test, small, in two parts (`python bench/chaos.py` runs every targeted point and random
ones: docs/cluster.md, "Killed at any point"):
- on a multi-node Ray (a 0-CPU head, two worker nodes), a worker node SIGKILLed while a trajectory on
  it trains, the node that was alone when the run connected (where the driver's queue once lived),
  and the same run must finish, identical (slow: CI runs it); the same while a trajectory trains with
  both nodes there from the start, and while one generates (extended: `make test-all`);
- a smoke study SIGKILLed (its whole process group) at three points that matter most, stopped by
  SIGTERM and by SIGINT, an extension killed after its last trajectory, and the disk filled (where a
  tmpfs can be mounted); each resumed and compared with an uninterrupted run (extended: `make
  test-all`; the default suite stops a real run with SIGTERM, fills a real disk and resumes an
  extension interrupted after its last trajectory)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


def _chaos(points: str, stops: str, nodes: str) -> str:
    cmd = [sys.executable, "bench/chaos.py", "--points", points, "--random", "0", "--stops", stops, "--nodes", nodes]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=2700)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res.stdout


def _identical_without_orphans_or_debris(out: str, expected: int) -> None:
    same, trials = map(int, re.search(r"(\d+)/(\d+) identical after a kill or stop", out).groups())
    assert same == trials == expected, out
    assert f"stops ending in one line with their exit status: {trials}/{trials}" in out
    assert "orphaned Ray processes: 0; trials leaving debris: 0" in out


@pytest.mark.slow  # one node kill (a study of its own and its reference: five minutes on 2 cores); CI runs it
def test_a_worker_node_lost_while_training_where_the_queue_once_lived_ends_identical():
    # The first worker node alone when the run connected (the driver's progress queue lived there
    # before it was pinned), SIGKILLed while a trajectory on it trains: the same run finished.
    out = _chaos("none", "none", "node_shared_actors")
    assert "worker nodes killed: 1; the same run finished identical: 1/1; the killed trajectory retried" in out
    _identical_without_orphans_or_debris(out, 1)


@pytest.mark.extended  # the other two node kills (the slow test above guards node loss in CI)
def test_a_worker_node_lost_while_training_or_generating_ends_identical():
    out = _chaos("none", "none", "node_training,node_generating")
    assert "worker nodes killed: 2; the same run finished identical: 2/2; the killed trajectory retried" in out
    _identical_without_orphans_or_debris(out, 2)


@pytest.mark.extended
def test_killed_or_stopped_smoke_study_ends_identical_without_orphans_or_debris():
    points = "checkpoint_being_written,scores_written,after_last_trajectory"
    stops = "sigterm_training,sigint_scoring,extension_after_last_trajectory,disk_full"
    out = _chaos(points, stops, "none")
    skipped = out.count("skipped disk_full: cannot mount")  # a machine that cannot mount a tmpfs
    _identical_without_orphans_or_debris(out, 7 - skipped)
