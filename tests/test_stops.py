"""How a run ends when it cannot go on: SIGTERM (schedulers, `ray job stop`), SIGHUP (a closed terminal)
and SIGINT (Ctrl-C) sent to a real `biasamp run` end it with one line and exit 143 / 129 / 130, with
no Ray process of its own left, and the same command resumes it; a full disk (a real tmpfs, where this
machine can mount one) is one line naming the file, what it needed and what was free, with nothing
half-written left."""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import cli

from biasamp import artifacts
from biasamp.progress import study_status
from biasamp.study import study_config

ROOT = Path(__file__).parents[1]


def _ray_processes(marker: str) -> list[int]:
    """Live processes whose command line names the run's own Ray folder."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and marker.encode() in (proc / "cmdline").read_bytes():
                found.append(int(proc.name))
        except OSError:
            pass
    return found


# Two real runs on a private Ray (two minutes beside the other tests): CI runs SIGTERM (make test-slow);
# SIGHUP and SIGINT take SIGTERM's path, make test-all runs them, and bench/chaos.py.
@pytest.mark.parametrize(
    "sig",
    [
        pytest.param(signal.SIGTERM, marks=pytest.mark.slow),
        pytest.param(signal.SIGHUP, marks=pytest.mark.extended),
        pytest.param(signal.SIGINT, marks=pytest.mark.extended),
    ],
    ids=lambda s: s.name,
)
def test_a_stopped_run_ends_in_one_line_leaves_no_ray_and_resumes(tmp_path, study_dict, sig):
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump(study_dict()))
    raytmp = tempfile.mkdtemp(prefix="bst", dir="/tmp")  # short: Ray's socket paths are limited
    env = {**os.environ, "RAY_TMPDIR": raytmp, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "biasamp.cli", "run", str(config)]
    log = tmp_path / "run.log"
    with log.open("w") as fh:
        proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 120
    while "G0/1: training" not in log.read_text() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert proc.poll() is None, log.read_text() + proc.stderr.read()
    out = tmp_path / "out"
    # From another process while it runs (in this one: a forked CLI's first start would outlast the tiny run).
    running = study_status(study_config(out))
    assert running.state == "running" and running.pid == proc.pid, running
    assert [(t.state, t.generation) for t in running.trajectories] == [("running", 0)], running
    proc.send_signal(sig)  # to the driver alone, as a scheduler does
    stderr = proc.communicate(timeout=120)[1]
    lines = stderr.strip().splitlines()
    assert proc.returncode == 128 + sig, stderr
    assert len(lines) == 1 and lines[0].startswith(f"stopped by {sig.name}; finished work is kept:"), stderr
    assert f"biasamp run {config}` resumes" in lines[0]
    deadline = time.time() + 30
    while _ray_processes(raytmp) and time.time() < deadline:
        time.sleep(1)
    assert not _ray_processes(raytmp), "Ray processes of the stopped run are alive 30 s later"
    stopped = cli("status", str(out))
    assert stopped.stdout.startswith(f"study t in {out}: stopped; "), stopped.stdout + stopped.stderr
    assert stopped.stdout.strip().splitlines()[-1].endswith(f"; resume: biasamp run {out}"), stopped.stdout
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert (out / "summary_arms.parquet").exists()
    assert json.loads(cli("status", str(out), "--json").stdout)["state"] == "finished"


def test_a_full_disk_is_one_error_naming_the_file_and_leaves_no_temp(small_disk):
    target = small_disk / "neurons.npz"
    with pytest.raises(OSError) as e:
        artifacts.write_npz(target, x=np.random.default_rng(0).random(400_000))  # 3 MB, incompressible
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(target)
    assert e.value.strerror.startswith("no space left on device: ran out after ") and "B free" in e.value.strerror
    assert list(small_disk.iterdir()) == []  # neither the file nor its temp


def test_a_command_on_a_full_disk_ends_in_one_line(small_disk):
    (small_disk / "filler").write_bytes(b"x" * (shutil.disk_usage(small_disk).free - 16_384))
    res = subprocess.run(
        [sys.executable, "-m", "biasamp.cli", "simulate", "--out", str(small_disk / "sim"), "--generations", "3"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1, res.stderr
    assert lines[0].startswith(f"error: {small_disk / 'sim'}/") and "no space left on device" in lines[0]
    assert not [p for p in small_disk.rglob("*") if p.name.endswith(".tmp")]


def test_a_checkpoint_larger_than_the_free_space_is_refused_before_writing(small_disk, study_dict):
    from biasamp.config import from_dict
    from biasamp.models import load_base_model, load_tokenizer, save_checkpoint

    cfg = from_dict(study_dict())
    tokenizer = load_tokenizer(cfg.model)
    model = load_base_model(cfg.model, len(tokenizer), 0)
    with pytest.raises(OSError) as e:
        save_checkpoint(model, tokenizer, small_disk / "gen0")
    assert e.value.errno == errno.ENOSPC and "needs about" in e.value.strerror
    assert list(small_disk.iterdir()) == []
