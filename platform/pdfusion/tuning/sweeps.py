"""Ray Tune sweeps: training choices (noise schedule, T, lr, p_uncond, width/depth) and sampling choices
(guidance γ, sampler steps).

Schedule sweep: the pattern Ray documents for Tune around Train V2 — each trial is a Tune *function*
that launches a `TorchTrainer` (through `pdfusion.training.ray_train.run_training`) with Tune's
`TuneReportCallback`, so every report of the training workers reaches Tune and ASHA can stop a trial
early. OptunaSearch proposes configurations. Rerunning with the same experiment name restores the sweep
(`Tuner.restore`) instead of restarting it. Trial drivers reserve no CPU (see `_driver_resources`), and
`pdfusion.tuning.trial_cleanup` releases the Train placement group of a trial ASHA stops mid-run (without
it the next trial's worker group waits forever for the CPUs the dead trial still holds).

Guidance sweep: sampling only. Each trial loads the trained model and scores median best-of-K R_wp on
validation PDFs for one (γ, steps); the best pair is written to the registered model (MLflow tags) so
that serving uses it by default.

MLflow: one parent run per sweep; every trial is a nested run (tag `mlflow.parentRunId`); the parent holds
the results table (CSV) and a plot.
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from pdfusion import tracking
from pdfusion.config import ConfigError, SampleConfig, TrainConfig, from_dict, load, to_dict
from pdfusion.data.dataset import open_dataset
from pdfusion.data.splits import split_indices
from pdfusion.diffusion import NonFiniteError
from pdfusion.evaluation.metrics import BEST_OF_K_METRIC, VAL_BEST_OF_K_METRIC, best_of_k
from pdfusion.inference.bundle import load_bundle
from pdfusion.inference.candidates import generate_candidates
from pdfusion.io_utils import atomic_write
from pdfusion.training.ray_train import run_training
from pdfusion.tuning.space import GUIDANCE_KEYS, SCHEDULE_KEYS, to_tune, validate_space
from pdfusion.tuning.trial_cleanup import RegisterWithReaper, start_reaper

SCHEDULE_METRIC = VAL_BEST_OF_K_METRIC
GUIDANCE_METRIC = BEST_OF_K_METRIC


# a trial parameter -> the TrainConfig field it sets
TRIAL_FIELDS = {"schedule": "diffusion.schedule.name", "timesteps": "diffusion.schedule.timesteps",
                "p_uncond": "diffusion.p_uncond", "hidden": "model.hidden", "layers": "model.layers",
                "batch_size": "data.batch_size", "lr": "lr", "ema_decay": "ema_decay"}


def apply_overrides(base: TrainConfig, params: dict[str, Any]) -> TrainConfig:
    """A TrainConfig with one trial's sampled values substituted (`config.load`, validated once)."""
    unknown = set(params) - set(SCHEDULE_KEYS)
    if unknown:
        raise ConfigError(f"trial parameters: unknown {sorted(unknown)}")
    cast = {"int": int, "float": float, "str": str}
    values = {TRIAL_FIELDS[k]: cast[SCHEDULE_KEYS[k]](v) for k, v in params.items()}
    return load(TrainConfig, base=base, values=values, what="trial")


# --------------------------------------------------------------------------------------------------
# trial functions (run inside Tune trial actors)
# --------------------------------------------------------------------------------------------------
def schedule_trial(config: dict[str, Any]) -> None:
    """One training trial: launch a Ray Train run whose reports flow to Tune."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    meta = config["_pdfusion"]
    params = {k: v for k, v in config.items() if k != "_pdfusion"}
    cfg = apply_overrides(from_dict(TrainConfig, meta["base"]), params)
    trial_id = ray.tune.get_context().get_trial_id()
    tags = ({"mlflow.parentRunId": meta["parent_run_id"], "pdfusion.trial_id": trial_id}
            if meta.get("parent_run_id") else None)
    # RegisterWithReaper: if Tune stops this trial mid-run, its Train placement group is removed
    callbacks = [TuneReportCallback(), RegisterWithReaper()]
    run_training(
        cfg, num_workers=meta["num_workers"], cpus_per_worker=meta["cpus_per_worker"], use_gpu=meta["use_gpu"],
        name=f"{meta['experiment']}-{trial_id}", storage_path=meta["storage_path"], max_failures=0,
        mlflow=meta.get("parent_run_id") is not None, tracking_uri=meta.get("tracking_uri"),
        experiment=meta.get("mlflow_experiment", "pdfusion-tune"), register_as=None, final_artifacts=False,
        callbacks=callbacks, run_tags=tags,
    )


def score_guidance(bundle, pdfs: np.ndarray, metals: list[int], guidance: float, steps: int, k: int,
                   seed: int = 0) -> dict[str, float]:
    """Median (and mean) best-of-K R_wp of `bundle` on `pdfs` for one (γ, steps)."""
    cfg = SampleConfig(guidance=float(guidance), steps=int(steps), n_samples=int(k), seed=seed)
    best, nan = [], 0
    for i in range(len(pdfs)):
        try:
            cands = generate_candidates(bundle, pdfs[i : i + 1], [metals[i]], cfg)[0]
        except NonFiniteError:
            nan += 1
            continue
        if cands:
            best.append(cands[0].rwp)
    return {**best_of_k(best), "nan_pdfs": nan}


def guidance_trial(config: dict[str, Any]) -> None:
    import ray.tune
    import torch

    torch.set_num_threads(1)
    meta = config["_pdfusion"]
    bundle = load_bundle(meta["model"])
    data = np.load(meta["val_file"])
    result = score_guidance(bundle, data["pdfs"], data["metals"].tolist(), config["guidance"], config["steps"],
                            meta["k"], meta["seed"])
    ray.tune.report(result)


# --------------------------------------------------------------------------------------------------
# drivers
# --------------------------------------------------------------------------------------------------
def _tuner(trainable, param_space, tune_config, name: str, storage_path: str, resources: dict[str, float],
           callbacks: list | None = None):
    from ray import tune

    path = str(Path(storage_path) / name)
    wrapped = tune.with_resources(trainable, resources)
    if tune.Tuner.can_restore(path):
        return tune.Tuner.restore(path, trainable=wrapped, resume_errored=True, restart_errored=False,
                                  param_space=param_space), True
    return tune.Tuner(wrapped, param_space=param_space, tune_config=tune_config,
                      run_config=tune.RunConfig(name=name, storage_path=storage_path, callbacks=callbacks)), False


def _driver_resources() -> dict[str, float]:
    """What one schedule-trial driver reserves: a sliver of the head node's marker resource and no CPU.

    The driver only launches and watches a TorchTrainer; Ray's Tune+Train guide puts such drivers on a
    safe node with a resource the Train workers never ask for, and bounds the number of in-flight
    Train runs with `max_concurrent_trials`. With no CPU held by drivers, `CPUs // CPUs per trial`
    Train runs fit exactly (0.1 CPU per driver made two 1-CPU trials not fit on 2 CPUs)."""
    from ray._common.constants import HEAD_NODE_RESOURCE_NAME

    return {HEAD_NODE_RESOURCE_NAME: 0.001}


def concurrent_trials(cluster: dict[str, float], num_workers: int, cpus_per_worker: float, use_gpu: bool = False,
                      gpus_per_worker: float = 1.0) -> int:
    """How many Train runs of `num_workers` workers fit in `cluster` (ray.cluster_resources()) at once."""
    fits = int(cluster.get("CPU", 0) // (num_workers * cpus_per_worker)) if cpus_per_worker > 0 else 10**6
    if use_gpu:
        fits = min(fits, int(cluster.get("GPU", 0) // (num_workers * gpus_per_worker)))
    if fits < 1:
        need = f"{num_workers} x {cpus_per_worker} CPU" + (f" + {num_workers} x {gpus_per_worker} GPU"
                                                           if use_gpu else "")
        raise ConfigError(f"num_workers/cpus_per_worker: one trial needs {need}, the Ray cluster has {cluster}")
    return fits


def _parent_run(tracking_uri: str | None, experiment: str, name: str, params: dict[str, Any],
                storage_path: str) -> tuple[str, str]:
    """(tracking uri, parent run id) — reused when the sweep is resumed."""
    uri = tracking_uri or tracking.default_tracking_uri()
    id_file = Path(storage_path) / name / "mlflow_parent_run_id"
    previous = id_file.read_text().strip() if id_file.is_file() else None
    run_id = tracking.start_run(uri, experiment=experiment, run_name=name, run_id=previous, params=params,
                                tags={"pdfusion.sweep": name})
    if run_id != previous:
        atomic_write(id_file, run_id)
    return uri, run_id


def _finish(results, metric: str, keys: list[str], out_dir: Path, uri: str, run_id: str, plot,
            max_t: int | None = None) -> dict[str, Any]:
    from mlflow import MlflowClient

    rows = []
    for r in results:
        cfg = {k: v for k, v in (r.config or {}).items() if k != "_pdfusion"}
        m = r.metrics or {}
        if r.error:
            status = "ERROR"
        elif max_t is not None and not m.get("final") and int(m.get("epoch", 0)) < max_t:
            status = "STOPPED_EARLY"  # ASHA cut it at a rung
        else:
            status = "COMPLETED"
        extra = {k: m[k] for k in ("rwp_best_mean", "nan_pdfs") if k in m}  # guidance-trial metrics
        rows.append({"trial_id": m.get("trial_id", ""), **{k: cfg.get(k) for k in keys},
                     metric: float(m.get(metric, math.nan)), **extra, "epoch": m.get("epoch"),
                     "training_iteration": m.get("training_iteration", 0), "status": status})
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)) or ["trial_id"])
        w.writeheader()
        w.writerows(rows)
    finite = [r for r in rows if isinstance(r[metric], float) and math.isfinite(r[metric])]
    best = min(finite, key=lambda r: r[metric]) if finite else None
    plot(rows, out_dir / "sweep.png")
    (out_dir / "best.json").write_text(json.dumps(best, indent=2, default=str))
    client = MlflowClient(tracking_uri=uri)
    client.log_artifacts(run_id, str(out_dir))
    if best:
        client.log_metric(run_id, f"best_{metric}", float(best[metric]))
        for k in keys:
            client.set_tag(run_id, f"best.{k}", str(best[k]))
    tracking.finish_run(uri, run_id)
    return {"rows": rows, "best": best, "mlflow_run_id": run_id}


def _mark_stopped_runs(rows: list[dict], uri: str, parent_run_id: str) -> None:
    """The nested MLflow run of a trial ASHA stopped ends as KILLED, tagged `pdfusion.stopped_by=asha`.

    Done after `fit()` returns: when Tune stops a trial, its `run_training` sees the Train controller die
    and closes the run as FAILED; only the sweep knows the scheduler stopped it on purpose."""
    from mlflow import MlflowClient

    stopped = {r["trial_id"]: r for r in rows if r["status"] == "STOPPED_EARLY"}
    if not stopped:
        return
    client = MlflowClient(tracking_uri=uri)
    parent = client.get_run(parent_run_id)
    for run in client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'"):
        row = stopped.get(run.data.tags.get("pdfusion.trial_id"))
        if row is not None:
            client.set_tag(run.info.run_id, "pdfusion.stopped_by", "asha")
            client.set_tag(run.info.run_id, "pdfusion.stopped_at_epoch", str(row["epoch"]))
            client.set_terminated(run.info.run_id, status="KILLED")


def _log_trial_runs(rows: list[dict], keys: list[str], metric: str, uri: str, parent_run_id: str) -> None:
    """One nested MLflow run per trial of a sweep whose trials do not log themselves (the guidance sweep):
    params, metrics and status, tagged with the trial id; trials already logged (a resumed sweep) are skipped."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    parent = client.get_run(parent_run_id)
    experiment = client.get_experiment(parent.info.experiment_id).name
    logged = {r.data.tags.get("pdfusion.trial_id") for r in client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'")}
    for row in rows:
        if row["trial_id"] in logged:
            continue
        run_id = tracking.start_run(uri, experiment=experiment, run_name=f"{parent.info.run_name}-{row['trial_id']}",
                                    params={k: row[k] for k in keys},
                                    tags={"mlflow.parentRunId": parent_run_id, "pdfusion.trial_id": row["trial_id"]})
        for k in (metric, "rwp_best_mean", "nan_pdfs"):
            if isinstance(row.get(k), (int, float)) and math.isfinite(row[k]):
                client.log_metric(run_id, k, float(row[k]))
        tracking.finish_run(uri, run_id, status="FAILED" if row["status"] == "ERROR" else "FINISHED")


def _plot_by(rows: list[dict], key: str, metric: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    vals = [r for r in rows if isinstance(r[metric], float) and math.isfinite(r[metric])]
    if key == "guidance":
        for steps in sorted({r.get("steps") for r in vals}, key=str):
            pts = sorted((r["guidance"], r[metric]) for r in vals if r.get("steps") == steps)
            if pts:
                ax.plot(*zip(*pts, strict=True), "o-", label=f"steps={steps}")
        ax.set_xlabel("guidance weight γ  (ε̃ = (1−γ)·ε_uncond + γ·ε_cond)")
    else:
        cats = sorted({str(r.get(key)) for r in vals})
        for i, c in enumerate(cats):
            ys = [r[metric] for r in vals if str(r.get(key)) == c]
            ax.scatter([i] * len(ys), ys)
        ax.set_xticks(range(len(cats)), cats)
        ax.set_xlabel(key)
    ax.set_ylabel(metric)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _check_points(points: list[dict[str, Any]], space: dict[str, Any]) -> list[dict[str, Any]]:
    """Each point names exactly the space's keys with valid values (errors name the point and key)."""
    out = []
    for i, point in enumerate(points):
        if set(point) != set(space):
            raise ConfigError(f"points_to_evaluate[{i}]: keys {sorted(point)} must be the space keys {sorted(space)}")
        validate_space({k: {"choice": [v]} for k, v in point.items()}, SCHEDULE_KEYS)
        out.append(dict(point))
    return out


def run_schedule_sweep(base: TrainConfig, space: dict[str, Any], *, name: str, storage_path: str, num_samples: int,
                       num_workers: int = 1, cpus_per_worker: float = 1.0, use_gpu: bool = False,
                       grace_period: int = 1, reduction_factor: int = 2, max_concurrent: int | None = None,
                       tracking_uri: str | None = None, mlflow_experiment: str = "pdfusion-tune",
                       seed: int = 0, out_dir: str | None = None, metric: str = SCHEDULE_METRIC,
                       points_to_evaluate: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Optuna + ASHA over training choices; resumable by `name`. Returns rows, best and the parent run id.

    `metric` (minimised): the validation best-of-K R_wp by default; `val_loss` is cheaper and less noisy
    for very short trials. `points_to_evaluate`: configurations (one value per space key) Optuna runs
    first, in order, e.g. the preset's own values as a baseline."""
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    space = validate_space(space, SCHEDULE_KEYS)
    if num_samples < 1:
        raise ConfigError(f"num_samples: must be >= 1, got {num_samples}")
    points = _check_points(points_to_evaluate or [], space)
    storage_path = str(Path(storage_path).expanduser().resolve())
    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS"), include_dashboard=False)
    if max_concurrent is None:
        max_concurrent = concurrent_trials(ray.cluster_resources(), num_workers, cpus_per_worker, use_gpu)
    # removes the Train placement group of every trial Tune stops mid-run; a named actor lives only
    # while a handle does, so this one is held until the sweep returns
    reaper = start_reaper()
    reaped_before = set(ray.get(reaper.reaped.remote()))
    registered_before = set(ray.get(reaper.registered.remote()))
    uri, parent = _parent_run(tracking_uri, mlflow_experiment, name,
                              {"space": space, "num_samples": num_samples, "base": to_dict(base)}, storage_path)
    meta = {"base": to_dict(base), "num_workers": num_workers, "cpus_per_worker": cpus_per_worker, "use_gpu": use_gpu,
            "experiment": name, "storage_path": str(Path(storage_path) / f"{name}-trials"), "parent_run_id": parent,
            "tracking_uri": uri, "mlflow_experiment": mlflow_experiment}
    param_space = {**to_tune(space), "_pdfusion": meta}
    tune_config = tune.TuneConfig(
        metric=metric, mode="min", num_samples=num_samples, max_concurrent_trials=max_concurrent,
        reuse_actors=False,  # a stopped trial's fit() cannot be interrupted: its actor must exit, not be reused
        search_alg=OptunaSearch(seed=seed, points_to_evaluate=points or None),
        # stop_last_trials=False: a trial reaching max_t ends by itself (final validation, MLflow run
        # closed); only ASHA's rung decisions stop trials from outside
        scheduler=ASHAScheduler(time_attr="epoch", max_t=max(base.epochs, grace_period), grace_period=grace_period,
                                reduction_factor=reduction_factor, stop_last_trials=False),
    )
    tuner, resumed = _tuner(schedule_trial, param_space, tune_config, name, storage_path, _driver_resources())
    results = tuner.fit()
    keys = list(space)
    out = _finish(results, metric, keys, Path(out_dir or Path(storage_path) / name / "report"), uri, parent,
                  lambda rows, p: _plot_by(rows, "schedule" if "schedule" in keys else keys[0], metric, p),
                  max_t=base.epochs)
    _mark_stopped_runs(out["rows"], uri, parent)
    out["resumed"] = resumed
    # every trial's Train placement group, and those of them the reaper (not Train) had to remove
    out["registered_placement_groups"] = [pg for pg in ray.get(reaper.registered.remote())
                                          if pg not in registered_before]
    out["reaped_placement_groups"] = [pg for pg in ray.get(reaper.reaped.remote()) if pg not in reaped_before]
    return out


def run_guidance_sweep(model: str, data: str, space: dict[str, Any], *, name: str, storage_path: str, k: int = 8,
                       max_pdfs: int = 16, num_samples: int = 1, search: str = "grid", seed: int = 0,
                       tracking_uri: str | None = None, mlflow_experiment: str = "pdfusion-tune",
                       record: bool = True, out_dir: str | None = None) -> dict[str, Any]:
    """Sweep γ and steps for a trained model (no retraining); record the best on the registered model."""
    import ray
    from ray import tune

    space = validate_space(space, GUIDANCE_KEYS)
    if search not in ("grid", "optuna"):
        raise ConfigError(f"search: must be 'grid' or 'optuna', got {search!r}")
    if search == "optuna" and any("grid" in spec for spec in space.values()):
        raise ConfigError("search: optuna cannot sample a {grid: [...]} entry; use choice/uniform or --search grid")
    if search == "grid":
        space = {k_: ({"grid": next(iter(s.values()))} if "choice" in s or "grid" in s else s)
                 for k_, s in space.items()}
        if any(("uniform" in s or "loguniform" in s or "randint" in s) for s in space.values()):
            raise ConfigError("search: grid search needs list values (choice/grid) for every key")
    storage_path = str(Path(storage_path).expanduser().resolve())
    bundle = load_bundle(model)
    ds = open_dataset(data, max_structures=bundle.config.data.max_structures)
    _, val_idx = split_indices(ds, replace(bundle.config.data, path=data), max_atoms=bundle.config.model.max_atoms)
    val_idx = val_idx[np.linspace(0, len(val_idx) - 1, min(max_pdfs, len(val_idx))).round().astype(int)]
    pdfs = np.stack([ds.record(int(i)).pdf for i in val_idx]).astype(np.float32)
    metals = [ds[int(i)].metal.item() for i in val_idx]
    val_file = Path(storage_path) / name / "val_pdfs.npz"
    val_file.parent.mkdir(parents=True, exist_ok=True)
    np.savez(val_file, pdfs=pdfs, metals=np.asarray(metals))
    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS"), include_dashboard=False)
    uri, parent = _parent_run(tracking_uri, mlflow_experiment, name,
                              {"model": model, "space": space, "k": k, "pdfs": len(val_idx)}, storage_path)
    meta = {"model": model, "val_file": str(val_file), "k": k, "seed": seed}
    param_space = {**to_tune(space), "_pdfusion": meta}
    search_alg = None
    if search == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        search_alg = OptunaSearch(seed=seed)
    tune_config = tune.TuneConfig(metric=GUIDANCE_METRIC, mode="min", num_samples=num_samples, search_alg=search_alg,
                                  max_concurrent_trials=max(1, int(ray.cluster_resources().get("CPU", 1))))
    tuner, resumed = _tuner(guidance_trial, param_space, tune_config, name, storage_path, {"cpu": 1})
    results = tuner.fit()
    out = _finish(results, GUIDANCE_METRIC, list(space), Path(out_dir or Path(storage_path) / name / "report"), uri,
                  parent, lambda rows, p: _plot_by(rows, "guidance", GUIDANCE_METRIC, p))
    _log_trial_runs(out["rows"], list(space), GUIDANCE_METRIC, uri, parent)
    out["resumed"] = resumed
    best = out["best"]
    if record and best and model.startswith("models:/"):
        tracking.set_model_defaults(model, guidance=float(best["guidance"]), steps=int(best["steps"]), tracking_uri=uri)
    return out

