"""MLflow helpers against a real SQLite tracking store in a temp dir."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pdfusion import tracking


@pytest.fixture()
def uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_flatten_params_nested_and_lists():
    flat = tracking.flatten_params({"model": {"hidden": 64, "cutoff": None}, "radii": (5.0, 6.0), "lr": 1e-3})
    assert flat == {"model.hidden": "64", "model.cutoff": "None", "radii": "[5.0, 6.0]", "lr": "0.001"}


def test_default_uri_prefers_env(monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    assert tracking.default_tracking_uri() == "http://tracking.example:5000"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.setenv("PDFUSION_PROJECT_DIR", str(tmp_path))
    assert tracking.default_tracking_uri() == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    assert tracking.artifact_root(tracking.default_tracking_uri()) == (tmp_path / "mlartifacts").resolve().as_uri()


def test_project_dir_independent_of_cwd(tmp_path):
    """Under `ray job submit` the cwd is a temp copy; the project dir must still be the checkout."""
    code = "from pdfusion.tracking import project_dir; print(project_dir())"
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("PDFUSION_PROJECT_DIR",)}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         check=True)
    root = Path(out.stdout.strip())
    assert (root / "pyproject.toml").is_file() and (root / "platform" / "pdfusion" / "config.py").is_file()


def test_run_logger_rank0_only_and_rejects_nan(uri):
    from mlflow import MlflowClient

    run_id = tracking.start_run(uri, experiment="t", run_name="r", params={"model": {"hidden": 8}})
    tracking.RunLogger(uri, run_id, rank=1).log_metrics({"loss": 9.0}, step=1)  # ignored
    tracking.RunLogger(None, None, rank=0).log_metrics({"loss": 9.0}, step=1)  # no-op, no error
    rl = tracking.RunLogger(uri, run_id, rank=0)
    rl.log_metrics({"loss": 0.5}, step=1)
    rl.log_metrics({"loss": 0.25}, step=2)
    with pytest.raises(FloatingPointError, match="'loss'.*step 3"):
        rl.log_metrics({"loss": float("nan")}, step=3)
    client = MlflowClient(uri)
    hist = client.get_metric_history(run_id, "loss")
    assert [(m.step, m.value) for m in hist] == [(1, 0.5), (2, 0.25)]
    assert client.get_run(run_id).data.params["model.hidden"] == "8"
    # artifacts land under <db dir>/mlartifacts, not the cwd
    assert client.get_run(run_id).info.artifact_uri.startswith(tracking.artifact_root(uri))
    # reopening a run keeps its id (a resumed training continues the same run)
    assert tracking.start_run(uri, experiment="t", run_id=run_id) == run_id


def test_register_and_download_checkpoint(uri, tmp_path):
    ckpt = tmp_path / "ckpt.pt"
    state = {"config": {"lr": 0.1}, "ema": {"w": torch.arange(5.0)}}
    torch.save(state, ckpt)
    run_id = tracking.start_run(uri, experiment="t")
    v1 = tracking.register_checkpoint(uri, run_id, ckpt, {"lr": 0.1}, name="m-test", alias="best")
    v2 = tracking.register_checkpoint(uri, run_id, ckpt, {"lr": 0.2}, name="m-test")
    assert (v1, v2) == (1, 2)
    for u in ("models:/m-test/1", "models:/m-test@best", f"runs:/{run_id}/model"):
        path = tracking.download_checkpoint(u, tracking_uri=uri)
        loaded = torch.load(path, weights_only=True)
        assert torch.equal(loaded["ema"]["w"], state["ema"]["w"])
    assert json.loads((tracking.download_checkpoint("models:/m-test/2", tracking_uri=uri).parent
                       / "config.json").read_text()) == {"lr": 0.2}
    assert tracking.load_config("models:/m-test/1", tracking_uri=uri) == {"lr": 0.1}
    with pytest.raises(FileNotFoundError, match="m-test/9"):
        tracking.download_checkpoint("models:/m-test/9", tracking_uri=uri)
    # local paths pass through; a folder resolves to its checkpoint.pt
    assert tracking.download_checkpoint(str(ckpt)) == ckpt
    with pytest.raises(FileNotFoundError, match="no such file"):
        tracking.download_checkpoint(str(tmp_path / "missing.pt"))
