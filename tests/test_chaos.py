"""The chaos test, small: a smoke study SIGKILLed (its whole process group) at three points that
matter most, resumed, and compared with an uninterrupted run. `python bench/chaos.py` runs every
targeted point and random ones (docs/cluster.md: "Killed at any point")."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


@pytest.mark.slow
def test_killed_smoke_study_resumes_identical_without_orphans_or_debris():
    points = "checkpoint_being_written,scores_written,after_last_trajectory"
    res = subprocess.run(
        [sys.executable, "bench/chaos.py", "--points", points, "--random", "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "3/3 identical after a kill and a resume" in res.stdout
    assert "orphaned Ray processes: 0; trials leaving debris: 0" in res.stdout
