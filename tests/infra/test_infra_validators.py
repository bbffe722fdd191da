"""Third-party validators over infra/: yamllint (all YAML), check-jsonschema with its bundled
Compose specification (docker-compose.yaml). Each is also shown to reject a broken file, so a
green run means the validator actually ran. hadolint and kubernetes-validate are used in
test_infra_docker.py and test_infra_kuberay.py."""

from __future__ import annotations

import shutil
import subprocess
import sys

import infra_checks as ic
import pytest


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not installed (it is in pyproject's dev extra)")
    return path


def test_yamllint_passes_on_every_infra_yaml_file():
    files = ic.infra_yaml_files()
    assert len(files) >= 7
    res = subprocess.run([_tool("yamllint"), "-s", "-c", str(ic.INFRA / ".yamllint.yaml"), *map(str, files)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr


def test_yamllint_is_live(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: 1\na: 2\nb:   [1,2\n")
    res = subprocess.run([_tool("yamllint"), "-c", str(ic.INFRA / ".yamllint.yaml"), str(bad)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode != 0


def test_compose_file_matches_the_compose_specification():
    res = subprocess.run([_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec",
                          str(ic.INFRA / "mlflow" / "docker-compose.yaml")],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr


def test_compose_validation_is_live(tmp_path):
    bad = tmp_path / "docker-compose.yaml"
    text = (ic.INFRA / "mlflow" / "docker-compose.yaml").read_text()
    bad.write_text(text.replace("    depends_on:\n      minio:", "    depend_on:\n      minio:", 1))
    assert bad.read_text() != text
    res = subprocess.run([_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(bad)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode != 0 and "depend_on" in res.stdout


def test_ruff_passes_on_infra_python():
    """scripts/test.sh lints platform/tests/jobs/benchmarks/experiments/serve; infra/kuberay/render.py is checked
    here."""
    files = sorted(str(p) for p in ic.INFRA.rglob("*.py"))
    assert files
    res = subprocess.run([sys.executable, "-m", "ruff", "check", *files], capture_output=True, text=True,
                         timeout=120, cwd=ic.ROOT)
    assert res.returncode == 0, res.stdout + res.stderr
