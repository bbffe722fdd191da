"""infra/cluster/aws-gpu.yaml: valid for the installed Ray's cluster launcher (its own JSON schema),
autoscaled GPU workers, the pinned image, and the same shared-storage path as KubeRay."""

from __future__ import annotations

import copy

import infra_checks as ic
import jsonschema
import pytest
from ray.autoscaler._private.util import prepare_config, validate_config

PATH = ic.INFRA / "cluster" / "aws-gpu.yaml"


def _config() -> dict:
    (doc,) = ic.load_docs(PATH)
    return doc


def test_launcher_config_passes_rays_own_validation():
    validate_config(prepare_config(_config()))


def test_launcher_validation_is_live():
    bad = copy.deepcopy(_config())
    bad["available_node_types"]["gpu"]["max_wrokers"] = 4
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(bad))


def test_gpu_workers_autoscale_on_aws_with_docker():
    cfg = _config()
    assert cfg["provider"]["type"] == "aws"
    nodes = cfg["available_node_types"]
    workers = {k: v for k, v in nodes.items() if k != cfg["head_node_type"]}
    gpu = [v for v in workers.values() if v["node_config"]["InstanceType"].split(".")[0][0] in "gp"]
    assert gpu, "no GPU (g*/p*) instance type among worker node types"
    for name, node in workers.items():
        assert 0 <= node["min_workers"] <= node["max_workers"], name
    assert sum(n["max_workers"] for n in workers.values()) >= cfg["max_workers"] >= max(
        n["max_workers"] for n in workers.values())
    assert cfg["docker"]["image"] == ic.image_tag("gpu")


def test_shared_storage_is_mounted_into_the_container_at_the_kuberay_path():
    cfg = _config()
    run_options = " ".join(cfg["docker"]["run_options"])
    assert f"-v {ic.SHARED_MOUNT}:{ic.SHARED_MOUNT}" in run_options
    init = " ".join(cfg["initialization_commands"])
    assert "mount -t nfs4" in init and ic.SHARED_MOUNT in init
    assert "MLFLOW_TRACKING_URI=http" in run_options


def test_launcher_commands_reference_existing_jobs_with_valid_flags():
    problems = [p for where, cmd in ic.manifest_commands() if where.startswith("aws-gpu")
                for c in ic.job_calls(cmd, where) for p in ic.check_call(c)]
    assert not problems, "\n".join(problems)
