"""Studies sent with `ray_jobs/submit.sh` (`ray job submit`) to a Ray started with `ray start` on
127.0.0.2 with token authentication: a single head that runs it (slow: CI runs it), and (extended:
make test-all) a 0-CPU head with two worker nodes, where a study stopped with `ray job stop` leaves
nothing on the cluster and its resubmission resumes it to the uninterrupted run's tables."""

import contextlib
import os
import re
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
import pytest
from conftest import TWO_ARMS

ROOT = Path(__file__).parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def ray_cluster(tmp_path: Path, head_cpus: int, workers: int = 0):
    """`ray start --head` and `workers` 1-CPU `ray start --address` nodes on 127.0.0.2, with a fresh
    token; yields (dashboard address, env). Each node runs in a process session of its own (--block
    keeps `ray start` as its leader) that this ends itself: the suite never runs `ray stop`, which
    would kill every Ray on the machine (a sentinel process checks that)."""
    token = secrets.token_hex(16)
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": token,
    }
    # Ray turns 127.0.0.1 in `ray start --address` into the machine's outward address (where nothing
    # listens), and refuses worker nodes under RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, which would keep
    # it; 127.0.0.2 is loopback too, and Ray takes it as it is.
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
    dash, gcs = _free_port(), _free_port()
    # Someone else's Ray on this machine (a process named like a Ray daemon: `ray stop --force` kills it).
    sentinel_exe = tmp_path / "raylet"
    shutil.copy("/bin/sleep", sentinel_exe)
    sentinel = subprocess.Popen([str(sentinel_exe), "600"], start_new_session=True)
    head = ["--head", f"--dashboard-port={dash}", f"--port={gcs}", "--dashboard-host=127.0.0.2"]
    head += [f"--ray-client-server-port={_free_port()}"]
    nodes = [_ray_start([*head, f"--num-cpus={head_cpus}"], env)]
    try:
        for _ in range(workers):  # one after another: each joins a head that is up
            _wait_for_nodes(gcs, env, len(nodes))
            nodes.append(_ray_start([f"--address=127.0.0.2:{gcs}", "--num-cpus=1"], env))
        _wait_for_nodes(gcs, env, len(nodes))
        yield f"http://127.0.0.2:{dash}", env
    finally:
        for node in reversed(nodes):
            _stop_session(node)
        # `ray start` named our head as this machine's current cluster; `ray stop` would remove that
        # note, so without it we remove it, only if it still names our head.
        note = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
        if note.exists() and note.read_text().strip().endswith(f":{gcs}"):
            note.unlink()
        assert sentinel.poll() is None, "the test killed a process that was not its own"
        sentinel.kill()


def _ray_start(args: list[str], env: dict) -> subprocess.Popen:
    # Each node's agent listens on a port of its own (the default is one for the whole machine).
    args += ["--block", "--node-ip-address=127.0.0.2", "--disable-usage-stats"]
    args += [f"--dashboard-agent-listen-port={_free_port()}"]
    return subprocess.Popen(
        ["ray", "start", *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )


def _wait_for_nodes(gcs: int, env: dict, n: int, timeout: float = 300) -> None:
    code = (
        f"import ray; ray.init('127.0.0.2:{gcs}', logging_level='ERROR'); print(sum(x['Alive'] for x in ray.nodes()))"
    )
    deadline = time.time() + timeout
    while time.time() < deadline:
        res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
        if res.returncode == 0 and res.stdout.strip().endswith(str(n)):
            return
        time.sleep(2)
    raise AssertionError(f"{n} Ray nodes did not come up: {res.stdout[-500:]} {res.stderr[-2000:]}")


def _submit(address: str, env: dict, out: Path, *args: str, **popen) -> subprocess.CompletedProcess | subprocess.Popen:
    cmd = ["ray_jobs/submit.sh", address, "configs/smoke.yaml", "--out", str(out), *args]
    if popen:
        return subprocess.Popen(cmd, env=env, cwd=ROOT, text=True, **popen)
    return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)


@pytest.mark.slow  # a `ray start` head and a study through the jobs API: two minutes; CI runs it
def test_submit_smoke_study_to_a_local_head_with_token_auth(tmp_path):
    with ray_cluster(tmp_path, head_cpus=2) as (address, env):
        out = tmp_path / "study"
        res = _submit(address, env, out, "--set", "generations=2", "--set", "seeds=[0]", "--set", TWO_ARMS)
        log = res.stdout + res.stderr
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
                assert env["RAY_AUTH_TOKEN"].encode() not in f.read_bytes(), f


_LEFT = """
import time
from ray.util.state import list_actors, list_placement_groups, list_tasks
deadline = time.time() + 30
while True:  # what of the stopped job is still on the cluster, after up to 30 s
    left = [f"actor {a.class_name}" for a in list_actors(address=ADDRESS, filters=[("state", "!=", "DEAD")])]
    groups = list_placement_groups(address=ADDRESS, filters=[("state", "!=", "REMOVED")])
    left += [f"group {g.name}" for g in groups]
    left += [f"task {t.name}" for t in list_tasks(address=ADDRESS, filters=[("state", "=", "RUNNING")])]
    if not left or time.time() > deadline:
        break
    time.sleep(2)
print("left:", left)
"""


@pytest.mark.extended  # three `ray start` nodes; the submission and a real SIGTERM stop are in CI
def test_a_study_stopped_with_ray_job_stop_leaves_nothing_and_resumes(tmp_path, smoke_study):
    """On a 0-CPU head with two worker nodes: `ray job stop` while trajectories train G1; nothing of
    the job is left on the cluster (no actor, placement group or running task); the same study
    submitted again resumes and ends with the uninterrupted smoke study's tables."""
    with ray_cluster(tmp_path, head_cpus=0, workers=2) as (address, env):
        out = tmp_path / "study"
        job = _submit(address, env, out, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        lines = []
        for line in job.stdout:  # `ray job submit` follows the job's output
            lines.append(line)
            if "G1/2: training" in line:
                break
        log = "".join(lines)
        job_id = re.search(r"Job '(raysubmit_\w+)' submitted successfully", log)[1]
        stop = subprocess.run(
            ["ray", "job", "stop", job_id, "--address", address], env=env, capture_output=True, text=True
        )
        assert stop.returncode == 0, stop.stdout + stop.stderr
        job.stdout.read()
        job.wait(timeout=120)  # (`ray job submit` exits 0 for a stopped job)
        status = subprocess.run(
            ["ray", "job", "status", job_id, "--address", address], env=env, capture_output=True, text=True
        )
        assert "was stopped" in status.stdout, status.stdout + status.stderr
        # Ray sent the driver SIGTERM (SIGKILL 3 s later): it ended on its own, in one line.
        logs = subprocess.run(
            ["ray", "job", "logs", job_id, "--address", address], env=env, capture_output=True, text=True
        )
        assert logs.stdout.strip().splitlines()[-1].startswith("stopped by SIGTERM"), logs.stdout[-2000:]
        left = subprocess.run(
            [sys.executable, "-c", _LEFT.replace("ADDRESS", repr(address))], env=env, capture_output=True, text=True
        )
        assert left.stdout.strip() == "left: []", left.stdout + left.stderr[-2000:]
        again = _submit(address, env, out)
        log = again.stdout + again.stderr
        assert again.returncode == 0 and "succeeded" in log and "resuming after G0" in log, log[-3000:]
    for table in ("articles", "scores"):
        a, b = (
            pd.read_parquet(d / table).sort_values(["arm", "seed", "generation", "article_id"])
            for d in (out, smoke_study.out)
        )
        pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True))


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
            "train.lr: Input should be greater than or equal to 0.000000001",
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
