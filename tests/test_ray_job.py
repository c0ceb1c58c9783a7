"""A study sent with `ray job submit` to a Ray head started on 127.0.0.1 with token authentication."""

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
from conftest import TWO_ARMS

ROOT = Path(__file__).parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_submit_smoke_study_to_a_local_head_with_token_auth(tmp_path):
    token = secrets.token_hex(16)
    bin_dir = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": token,
    }
    dash, gcs = _free_port(), _free_port()
    address = f"http://127.0.0.1:{dash}"
    # Someone else's Ray on this machine (a process named like a Ray daemon: `ray stop --force` kills
    # it): the test must leave it alone.
    sentinel_exe = tmp_path / "raylet"
    shutil.copy("/bin/sleep", sentinel_exe)
    sentinel = subprocess.Popen([str(sentinel_exe), "600"], start_new_session=True)
    # Our head runs in a process session of its own (--block keeps `ray start` as its leader), so the
    # test stops exactly the processes it started and never runs `ray stop`.
    head = subprocess.Popen(
        [
            "ray",
            "start",
            "--head",
            "--block",
            "--node-ip-address=127.0.0.1",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dash}",
            f"--port={gcs}",
            "--num-cpus=2",
            "--disable-usage-stats",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        out = tmp_path / "study"
        deadline = time.time() + 600
        while time.time() < deadline:  # the head starting in the background, or without its job agent yet
            # (minutes on a loaded 2-core machine): try again
            res = subprocess.run(
                [
                    "ray_jobs/submit.sh",
                    address,
                    "configs/smoke.yaml",
                    "--out",
                    str(out),
                    "--set",
                    "generations=2",
                    "--set",
                    "seeds=[0]",
                    "--set",
                    TWO_ARMS,
                ],
                env=env,
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=600,
            )
            log = res.stdout + res.stderr
            if "submitted successfully" in log:  # the job ran (or failed) on the cluster: no retry
                break
            time.sleep(5)
        assert res.returncode == 0 and "succeeded" in log, log[-3000:]
        articles = pd.read_parquet(out / "articles")
        assert articles.groupby(["arm", "generation"]).size().to_dict() == {
            ("preservation", 0): 12,
            ("preservation", 1): 12,
            ("synthetic", 0): 12,
            ("synthetic", 1): 12,
        }
        assert len(pd.read_parquet(out / "summary.parquet")) == 4
        # The token is required, and never lands in the study's files.
        denied = subprocess.run(
            ["ray", "job", "list", "--address", address],
            env={**env, "RAY_AUTH_TOKEN": "x" * 32},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert denied.returncode != 0 and "token" in (denied.stdout + denied.stderr).lower()
        for f in out.rglob("*"):
            if f.is_file() and f.stat().st_size < 50_000_000:
                assert token.encode() not in f.read_bytes(), f
    finally:
        _stop_session(head)
        # `ray start` named our head as this machine's current cluster; `ray stop` would remove that
        # note, so without it we remove it, only if it still names our head.
        note = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
        if note.exists() and note.read_text().strip().endswith(f":{gcs}"):
            note.unlink()
    assert sentinel.poll() is None, "the test killed a process that was not its own"
    sentinel.kill()


def _stop_session(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL, to every process of `proc`'s session (the head and what it started)."""
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue


def test_submit_checks_its_config_and_ray_before_sending_anything(tmp_path):
    """A bad config is refused on this machine (a fake `ray` records any call), and without `ray`
    on PATH the script says what to install; both in one line, exit 2."""
    calls = tmp_path / "calls"
    fake = tmp_path / "bin" / "ray"
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    fake.chmod(0o755)
    assert shutil.which("ray", path="/usr/bin:/bin") is None
    for path, args, says in (
        (
            f"{fake.parent}:{Path(sys.executable).parent}:/usr/bin:/bin",
            ["--set", "train.lr=-1"],
            "train.lr: Input should be greater than 0",
        ),
        ("/usr/bin:/bin", [], "'ray' is not on PATH"),
    ):
        res = subprocess.run(
            ["ray_jobs/submit.sh", "http://127.0.0.1:1", "configs/smoke.yaml", *args],
            cwd=ROOT,
            env={**os.environ, "PATH": path},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert res.returncode == 2 and says in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert not calls.exists()  # nothing was submitted
