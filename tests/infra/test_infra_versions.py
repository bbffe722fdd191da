"""One Ray/torch/MLflow/pdfusion version everywhere: infra/versions.env is the pin; pyproject.toml,
the installed packages, the Dockerfiles and every manifest must agree with it."""

from __future__ import annotations

import re
import tomllib

import infra_checks as ic
import mlflow
import pytest
import ray
import torch
from packaging.requirements import Requirement
from packaging.version import Version

PYPROJECT = tomllib.loads((ic.ROOT / "pyproject.toml").read_text())


def _requirement(name: str) -> Requirement:
    reqs = [Requirement(r) for r in PYPROJECT["project"]["dependencies"]]
    found = [r for r in reqs if r.name == name]
    assert found, f"pyproject.toml has no {name} dependency"
    return found[0]


def test_pinned_ray_is_allowed_by_pyproject_and_installed():
    pin = ic.versions()["RAY_VERSION"]
    assert _requirement("ray").specifier.contains(pin), f"pyproject's ray spec excludes pinned {pin}"
    assert ray.__version__ == pin, f"installed ray {ray.__version__} != infra/versions.env RAY_VERSION {pin}"


def test_pinned_torch_mlflow_and_project_versions_match_the_environment():
    v = ic.versions()
    assert Version(torch.__version__).base_version == v["TORCH_VERSION"]
    assert _requirement("torch").specifier.contains(v["TORCH_VERSION"])
    assert mlflow.__version__ == v["MLFLOW_VERSION"], "MLflow server and client must run the same version"
    assert _requirement("mlflow").specifier.contains(v["MLFLOW_VERSION"])
    assert PYPROJECT["project"]["version"] == v["PDFUSION_VERSION"]
    # scripts/setup.sh installs the CPU torch that development and CI run on: same pin as the images.
    setup = (ic.ROOT / "scripts" / "setup.sh").read_text()
    pins = set(re.findall(r"torch==([\w.+]+)", setup))
    assert pins <= {v["TORCH_VERSION"]}, f"scripts/setup.sh pins torch {pins}, versions.env {v['TORCH_VERSION']}"


def test_python_tag_matches_the_development_python():
    import sys

    assert ic.versions()["PYTHON_TAG"] == f"py{sys.version_info.major}{sys.version_info.minor}"


@pytest.mark.parametrize("flavour", ["gpu", "cpu"])
def test_dockerfile_defaults_equal_the_pins(flavour):
    v = ic.versions()
    instrs = ic.dockerfile(ic.DOCKER / f"Dockerfile.{flavour}")
    args = ic.arg_defaults(instrs)
    assert args["RAY_VERSION"] == v["RAY_VERSION"]
    assert args["TORCH_VERSION"] == v["TORCH_VERSION"]
    index = v["TORCH_CUDA_INDEX_URL" if flavour == "gpu" else "TORCH_CPU_INDEX_URL"]
    assert args["TORCH_INDEX_URL"] == index


def test_mlflow_server_image_pins_the_client_version():
    v = ic.versions()["MLFLOW_VERSION"]
    assert ic.arg_defaults(ic.dockerfile(ic.INFRA / "mlflow" / "Dockerfile"))["MLFLOW_VERSION"] == v
    compose = ic.load_docs(ic.INFRA / "mlflow" / "docker-compose.yaml")[0]
    for name in ("mlflow", "bucket-init"):
        svc = compose["services"][name]
        assert svc["build"]["args"]["MLFLOW_VERSION"] == v, name
        assert svc["image"].endswith(f":{v}"), name


def test_every_manifest_image_and_ray_version_is_the_pinned_one():
    pin = ic.versions()["RAY_VERSION"]
    images: list[tuple[str, str]] = []
    for where, spec in ic.cluster_specs():
        assert spec["rayVersion"] == pin, f"{where}: rayVersion {spec['rayVersion']} != {pin}"
        for group, tmpl in ic.pod_templates(spec):
            images += [(f"{where}/{group}/{c['name']}", c["image"]) for c in tmpl["spec"]["containers"]]
    launcher = ic.load_docs(ic.INFRA / "cluster" / "aws-gpu.yaml")[0]
    images.append(("aws-gpu.yaml:docker.image", launcher["docker"]["image"]))
    assert len(images) >= 4
    wrong = [(w, img) for w, img in images if img != ic.image_tag("gpu")]
    assert not wrong, f"images other than {ic.image_tag('gpu')}: {wrong}"
    # The launcher's setup command asserts the image's Ray version at node start.
    assert any(f"'{pin}'" in c for c in launcher["setup_commands"])


def test_build_script_tags_images_as_the_manifests_expect():
    text = (ic.DOCKER / "build.sh").read_text()
    assert 'tag="${PDFUSION_IMAGE}:${PDFUSION_VERSION}-ray${RAY_VERSION}-${flavour}"' in text
    assert "infra/versions.env" in text
