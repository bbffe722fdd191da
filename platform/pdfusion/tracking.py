"""MLflow helpers: where runs go, rank-0-only logging, and the model registry.

Why a module of its own: every training worker runs the same code, but only rank 0 may write to the
tracking store (one run per training, no duplicate metrics), and serving must turn a registry URI
(`models:/pdfusion-egnn/3`, `models:/pdfusion-egnn@prod`, `runs:/<id>/model`) back into a local
checkpoint file without knowing MLflow. The default store is SQLite (MLflow's file store errors in
this version) in the project directory, with artifacts next to it; `MLFLOW_TRACKING_URI` overrides
both, and is what `ray job submit` users should set, because a submitted job runs from a temporary
copy of the working directory.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "pdfusion"
DEFAULT_MODEL_NAME = "pdfusion-egnn"
MODEL_ARTIFACT_DIR = "model"  # run artifact folder that a registered model version points at
CHECKPOINT_FILE = "checkpoint.pt"
CONFIG_FILE = "config.json"
_MAX_PARAM_LEN = 6000  # MLflow's param value limit


def project_dir() -> Path:
    """The pdfusion project directory, independent of the current working directory.

    Order: `PDFUSION_PROJECT_DIR`; the checkout the package is imported from (editable install, also
    under `ray job submit`, whose cwd is a temporary copy); the first parent of the cwd holding a
    pyproject.toml; the cwd.
    """
    env = os.environ.get("PDFUSION_PROJECT_DIR")
    if env:
        return Path(env).expanduser().resolve()
    pkg_root = Path(__file__).resolve().parents[2]  # <root>/platform/pdfusion/tracking.py
    if (pkg_root / "pyproject.toml").is_file() and (pkg_root / "platform" / "pdfusion").is_dir():
        return pkg_root
    cwd = Path.cwd().resolve()
    for p in (cwd, *cwd.parents):
        if (p / "pyproject.toml").is_file():
            return p
    return cwd


def default_tracking_uri() -> str:
    """`MLFLOW_TRACKING_URI` when set, else `sqlite:///<project dir>/mlflow.db`."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{project_dir() / 'mlflow.db'}"


def artifact_root(tracking_uri: str) -> str | None:
    """Artifact location for new experiments: `<dir of the sqlite db>/mlartifacts` for SQLite stores
    (MLflow would otherwise use `./mlruns` relative to the cwd), the server's default otherwise."""
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri[len("sqlite:///"):])
        return (db.parent / "mlartifacts").resolve().as_uri()
    return None


def _client(tracking_uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def flatten_params(cfg: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config dict → flat `{"model.hidden": "64", ...}` of strings within MLflow's length limit."""
    out: dict[str, str] = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten_params(value, prefix=f"{name}."))
        else:
            text = json.dumps(value) if isinstance(value, list | tuple) else str(value)
            out[name] = text[:_MAX_PARAM_LEN]
    return out


def get_or_create_experiment(tracking_uri: str, name: str = DEFAULT_EXPERIMENT) -> str:
    client = _client(tracking_uri)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    root = artifact_root(tracking_uri)
    location = f"{root}/{name}" if root else None
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:  # created concurrently by another process
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def start_run(
    tracking_uri: str,
    *,
    experiment: str = DEFAULT_EXPERIMENT,
    run_name: str | None = None,
    params: Mapping[str, Any] | None = None,
    run_id: str | None = None,
    tags: Mapping[str, str] | None = None,
) -> str:
    """Create a run (or reopen `run_id`, e.g. when a training resumes) and log `params` flattened.

    The run is left open (status RUNNING); `finish_run` closes it. Returns the run id.
    """
    client = _client(tracking_uri)
    if run_id is not None:
        try:
            client.get_run(run_id)
            client.update_run(run_id, status="RUNNING")
            return run_id
        except Exception as err:  # noqa: BLE001 — a deleted/unknown run: start a fresh one
            log.warning("MLflow run %s cannot be reopened (%s); starting a new run", run_id, err)
    exp_id = get_or_create_experiment(tracking_uri, experiment)
    run = client.create_run(exp_id, run_name=run_name, tags=dict(tags or {}))
    if params:
        _log_params(client, run.info.run_id, flatten_params(params))
    return run.info.run_id


def _log_params(client, run_id: str, flat: Mapping[str, str]) -> None:
    from mlflow.entities import Param

    items = [Param(k, v) for k, v in flat.items()]
    for i in range(0, len(items), 100):  # MLflow's batch limit
        client.log_batch(run_id, params=items[i : i + 100])


def finish_run(tracking_uri: str, run_id: str, status: str = "FINISHED") -> None:
    _client(tracking_uri).set_terminated(run_id, status=status)


class RunLogger:
    """Logs to one MLflow run from rank 0 only; every other rank (or `run_id=None`) is a no-op.

    Safe to call unconditionally from every worker. Non-finite metric values are an error naming the
    metric: a NaN loss must stop training loudly, not be logged as a gap.
    """

    def __init__(self, tracking_uri: str | None, run_id: str | None, rank: int = 0):
        self.tracking_uri = tracking_uri
        self.run_id = run_id
        self.rank = rank
        self.active = bool(tracking_uri) and run_id is not None and rank == 0
        self._client = _client(tracking_uri) if self.active else None

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        if not self.active:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = []
        for key, value in metrics.items():
            v = float(value)
            if not math.isfinite(v):
                raise FloatingPointError(f"metric {key!r} is {v} at step {step}")
            items.append(Metric(key, v, now, int(step)))
        for i in range(0, len(items), 1000):
            self._client.log_batch(self.run_id, metrics=items[i : i + 1000])

    def log_params(self, params: Mapping[str, Any]) -> None:
        if self.active:
            _log_params(self._client, self.run_id, flatten_params(params))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self.active:
            self._client.log_artifact(self.run_id, str(path), artifact_path)

    def log_dict(self, data: Mapping[str, Any], filename: str, artifact_path: str | None = None) -> None:
        if not self.active:
            return
        with tempfile.TemporaryDirectory() as tmp:
            p = Path(tmp) / filename
            p.write_text(json.dumps(data, indent=2, sort_keys=True))
            self._client.log_artifact(self.run_id, str(p), artifact_path)


def register_checkpoint(
    tracking_uri: str,
    run_id: str,
    checkpoint_path: str | Path,
    config: Mapping[str, Any],
    *,
    name: str = DEFAULT_MODEL_NAME,
    alias: str | None = None,
    tags: Mapping[str, str] | None = None,
) -> int:
    """Log `checkpoint_path` + its config JSON under the run's `model/` artifacts (`model-2/`, ... for
    later registrations from the same run) and register them as a new version of registered model
    `name` (created if needed). Returns the version number.

    A version's source is that folder, so `download_checkpoint("models:/<name>/<v>")` works with
    any artifact store.
    """
    client = _client(tracking_uri)
    taken = {f.path for f in client.list_artifacts(run_id)}
    artifact_dir = MODEL_ARTIFACT_DIR
    n = 1
    while artifact_dir in taken:  # a run may register several versions (e.g. best and final)
        n += 1
        artifact_dir = f"{MODEL_ARTIFACT_DIR}-{n}"
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / artifact_dir
        folder.mkdir()
        shutil.copyfile(checkpoint_path, folder / CHECKPOINT_FILE)
        (folder / CONFIG_FILE).write_text(json.dumps(dict(config), indent=2, sort_keys=True))
        client.log_artifacts(run_id, str(folder), artifact_dir)
    try:
        client.get_registered_model(name)
    except Exception:  # noqa: BLE001 — not registered yet
        try:
            client.create_registered_model(name, description="pdfusion EGNN diffusion model (checkpoint + config)")
        except Exception:  # registered concurrently
            client.get_registered_model(name)
    run = client.get_run(run_id)
    source = f"{run.info.artifact_uri}/{artifact_dir}"
    mv = client.create_model_version(name, source=source, run_id=run_id, tags=dict(tags or {}))
    if alias:
        client.set_registered_model_alias(name, alias, mv.version)
    return int(mv.version)


def download_checkpoint(uri: str, *, tracking_uri: str | None = None, dst: str | Path | None = None) -> Path:
    """Resolve an MLflow URI (`models:/name/version`, `models:/name@alias`, `runs:/<id>/model`) or a
    local path to a local checkpoint file.

    A folder (the registered `model/` artifact) resolves to its `checkpoint.pt`.
    """
    local = Path(uri)
    if "://" not in uri and not uri.startswith(("models:/", "runs:/")):
        if local.is_dir():
            local = local / CHECKPOINT_FILE
        if not local.is_file():
            raise FileNotFoundError(f"checkpoint {uri!r}: no such file; give a checkpoint file, its folder or an "
                                    "MLflow URI")
        return local
    import mlflow.artifacts

    tracking_uri = tracking_uri or default_tracking_uri()
    mlflow_set_uris(tracking_uri)
    try:
        path = Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=uri, dst_path=str(dst) if dst is not None else None, tracking_uri=tracking_uri
            )
        )
    except Exception as err:
        raise FileNotFoundError(
            f"checkpoint {uri!r}: cannot be downloaded from MLflow at {tracking_uri} ({err}); "
            "check the model name/version or set MLFLOW_TRACKING_URI"
        ) from err
    if path.is_dir():
        path = path / CHECKPOINT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {uri!r}: artifact has no {CHECKPOINT_FILE} ({path})")
    return path


def mlflow_set_uris(tracking_uri: str) -> None:
    """Point the fluent MLflow API (used by `mlflow.artifacts`) at `tracking_uri` for both stores."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)


def load_config(uri: str, *, tracking_uri: str | None = None) -> dict[str, Any]:
    """The config JSON registered next to a checkpoint (`models:/…` or a local checkpoint folder)."""
    ckpt = download_checkpoint(uri, tracking_uri=tracking_uri)
    cfg = ckpt.parent / CONFIG_FILE
    if not cfg.is_file():
        raise FileNotFoundError(f"{uri!r}: no {CONFIG_FILE} next to {ckpt}")
    return json.loads(cfg.read_text())


DEFAULTS_TAGS = {"guidance": "pdfusion.guidance", "steps": "pdfusion.steps"}


def _model_version(client, uri: str):
    """The ModelVersion behind `models:/name/version` or `models:/name@alias`."""
    if not uri.startswith("models:/"):
        raise ValueError(f"model uri: {uri!r} is not a models:/name/version or models:/name@alias URI")
    ref = uri[len("models:/"):].rstrip("/")
    if "@" in ref:
        name, alias = ref.split("@", 1)
        return client.get_model_version_by_alias(name, alias)
    name, _, version = ref.partition("/")
    if not version:
        raise ValueError(f"model uri: {uri!r} names no version; use models:/{name}/<version> or models:/{name}@<alias>")
    return client.get_model_version(name, version)


def set_model_defaults(uri: str, *, guidance: float, steps: int, tracking_uri: str | None = None) -> None:
    """Record sampling defaults (from a guidance sweep) as tags on a registered model version."""
    client = _client(tracking_uri or default_tracking_uri())
    mv = _model_version(client, uri)
    client.set_model_version_tag(mv.name, mv.version, DEFAULTS_TAGS["guidance"], repr(float(guidance)))
    client.set_model_version_tag(mv.name, mv.version, DEFAULTS_TAGS["steps"], str(int(steps)))


def model_defaults(uri: str, *, tracking_uri: str | None = None) -> dict[str, Any]:
    """Sampling defaults recorded on a registered model version ({} when none were recorded)."""
    client = _client(tracking_uri or default_tracking_uri())
    tags = _model_version(client, uri).tags or {}
    out: dict[str, Any] = {}
    if DEFAULTS_TAGS["guidance"] in tags:
        out["guidance"] = float(tags[DEFAULTS_TAGS["guidance"]])
    if DEFAULTS_TAGS["steps"] in tags:
        out["steps"] = int(tags[DEFAULTS_TAGS["steps"]])
    return out
