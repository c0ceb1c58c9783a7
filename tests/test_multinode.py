"""A real multi-node Ray on this machine: a head with no CPUs and worker nodes on 127.0.0.1 (Ray's own
`ray.cluster_utils.Cluster`, which starts each node's processes as `ray start` does). The smoke study
runs on it through `resources.ray_address`; a worker node is killed while trajectories train G1, or
while they generate D1. The
driver's progress queue is pinned to the driver's node, so a worker's death never takes it (with a
0-CPU head Ray placed it on a worker, whose death ended the study)."""

import os
import subprocess
import sys
import threading
from pathlib import Path

import pandas as pd
import pytest
from conftest import ROOT

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster(tmp_path):
    """A 0-CPU head (as the shipped cluster files have it) and two 1-CPU worker nodes, on loopback."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "node_ip_address": "127.0.0.1"})
    workers = [c.add_node(num_cpus=1, node_ip_address="127.0.0.1") for _ in range(2)]
    c.wait_for_nodes()
    yield c, workers
    c.shutdown()


def _sorted(path: Path) -> pd.DataFrame:
    return pd.read_parquet(path).sort_values(["arm", "seed", "generation", "article_id"]).reset_index(drop=True)


@pytest.mark.parametrize("kill_at", ["G1/2: training", "G1/2: writing"])  # training G1; generating D1
def test_a_worker_node_killed_mid_study_costs_nothing_but_time(cluster, smoke_study, tmp_path, kill_at):
    c, workers = cluster
    out = tmp_path / "study"
    run = subprocess.Popen(
        [sys.executable, "-m", "biasamp.cli", "run", "configs/smoke.yaml", "--out", str(out)]
        + ["--set", f"resources.ray_address={c.address}", "--set", "wandb.mode=disabled"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines, killed = [], threading.Event()

    def read():
        for line in run.stdout:
            lines.append(line)
            if kill_at in line and not killed.is_set():
                killed.set()
                c.remove_node(workers[0], allow_graceful=False)  # SIGKILL to the node's processes

    reader = threading.Thread(target=read)
    reader.start()
    assert run.wait(timeout=1200) == 0, "".join(lines[-40:])
    reader.join()
    log = "".join(lines)
    assert killed.is_set() and "finished (8/8 trajectories)" in log, log[-3000:]
    # Tables and weights equal the uninterrupted smoke study's (the session's, on a local Ray).
    for table in ("articles", "scores"):
        pd.testing.assert_frame_equal(_sorted(out / table), _sorted(smoke_study.out / table))
    for a in sorted((smoke_study.out / "checkpoints").glob("*/seed*/gen2/model.safetensors")):
        b = out / a.relative_to(smoke_study.out)
        assert a.read_bytes() == b.read_bytes(), b
    # The trajectory that lost its node started again (resources.max_retries) and resumed from its files.
    assert "resuming after G0" in log, log[-3000:]
    if kill_at.endswith("writing"):  # G1's checkpoint was saved before it generated: not retrained
        assert "checkpoint found, skipping training" in log, log[-3000:]
