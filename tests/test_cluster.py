"""The cluster files: the launcher config passes Ray's own schema, the RayJob runs a shipped study
with no secret in it, and both use the Ray version of the image."""

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).parents[1]


def test_launcher_config_passes_rays_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((ROOT / "cluster" / "aws.yaml").read_text())
    validate_config(prepare_config(config))
    config["available_node_types"]["gpu_worker"]["gpus"] = 4  # a misspelt key is caught
    with pytest.raises(Exception, match="gpus"):
        validate_config(prepare_config(config))


def test_rayjob_runs_a_shipped_study_without_secrets():
    from biasamp.config import load_config

    job = yaml.safe_load((ROOT / "cluster" / "rayjob.yaml").read_text())
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    script, config = job["spec"]["entrypoint"].split()[1:3]
    assert (ROOT / script).exists()
    cfg = load_config(ROOT / config, [])
    assert cfg.train.backend == "deepspeed" and cfg.generation.backend.kind == "vllm"
    for group in job["spec"]["rayClusterSpec"]["workerGroupSpecs"]:
        for container in group["template"]["spec"]["containers"]:
            for env in container.get("env", []):
                assert "value" not in env, f"{env['name']} is set in the manifest: use a secret"
    launcher = yaml.safe_load((ROOT / "cluster" / "aws.yaml").read_text())
    version = job["spec"]["rayClusterSpec"]["rayVersion"]
    assert f"ray:{version}-" in launcher["docker"]["image"]
    assert f"ray:{version}-" in (ROOT / "cluster" / "Dockerfile").read_text()
