"""Distributed training on Ray Train V2: a `TorchTrainer` whose workers each run a `Trainer` under DDP.

Why this shape:
- The per-worker engine is `pdfusion.training.trainer.Trainer` (EMA, clipping, LR schedule, exact
  state); this module only adds what distribution needs: the sharded size-bucketed sampler (every
  rank takes the same number of steps, so DDP collectives and `ray.train.report` barriers line up),
  checkpoints through `ray.train.report`, restore through `ray.train.get_checkpoint()`, and rank-0
  MLflow logging.
- Every rank writes its own `rank<r>.pt` into the reported checkpoint (Ray merges the workers'
  folders): weights are identical across ranks, but each rank's noise RNG and sampler position are
  not, and a bit-exact resume needs all of them.
- Fault tolerance is Ray's: `FailureConfig(max_failures)` restarts the worker group from the latest
  checkpoint, and launching again with the same (storage_path, name) restores the run from its
  snapshot. The MLflow run id is kept next to the Ray run so a relaunch continues the same MLflow run.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pdfusion import storage, tracking
from pdfusion.config import ConfigError, SampleConfig, TrainConfig, from_dict, to_dict
from pdfusion.data.batching import BucketBatchSampler
from pdfusion.data.dataset import open_dataset
from pdfusion.data.splits import extra_train_indices, split_indices
from pdfusion.diffusion.guards import NonFiniteError
from pdfusion.evaluation import plots
from pdfusion.evaluation.metrics import VAL_BEST_OF_K_METRIC
from pdfusion.inference.candidates import sample_and_score
from pdfusion.inference.checkpoint import load_checkpoint
from pdfusion.pdf import r_grid
from pdfusion.training.trainer import Trainer, autocast_for

SCORE_METRIC = VAL_BEST_OF_K_METRIC
# Score of checkpoints taken before the first validation: worse than any real R_wp, and finite because
# Ray's run snapshot stores metrics as JSON, where inf does not survive a restore.
UNVALIDATED_SCORE = 1e6
_RNG_STRIDE = 1_000_003  # rank r's noise generator is seeded with seed + r * stride


class InjectedFailure(RuntimeError):
    """Raised once by the training loop at `fail_at_step` to exercise fault tolerance."""


@dataclass
class TrainingOutcome:
    """What `run_training` returns."""

    name: str
    storage_path: str
    final_step: int
    final_epoch: int
    metrics: dict[str, Any]
    checkpoint_path: str | None  # rank-0 state file of the latest checkpoint
    best_checkpoint_path: str | None
    mlflow_run_id: str | None
    tracking_uri: str | None
    model_name: str | None
    model_version: int | None
    result: Any = field(default=None, repr=False)  # the ray.train.Result


# --------------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------------
def load_split(cfg: TrainConfig) -> tuple[list, list]:
    """(train, val) lists of PyG `Data` from `cfg.data.path`, split by group, capped at `max_atoms`."""
    if not cfg.data.path:
        raise ConfigError("data.path: no training data given; pass --data <store dir or seed-oxides folder>")
    if not Path(cfg.data.path).exists():
        raise ConfigError(f"data.path: {cfg.data.path!r} does not exist")
    ds = open_dataset(cfg.data.path, max_structures=cfg.data.max_structures)
    n = len(ds)
    keep, keep_val = (idx.tolist() for idx in split_indices(ds, cfg.data, max_atoms=cfg.model.max_atoms))
    if not keep:
        raise ConfigError(
            f"data: no training structures with <= {cfg.data.max_atoms} atoms in {cfg.data.path!r} "
            f"({n} structures); raise data.max_atoms or add data"
        )
    if not keep_val:
        raise ConfigError(f"data: the validation split of {cfg.data.path!r} is empty; raise data.val_fraction")
    train = [ds[i] for i in keep]
    for extra_path in cfg.data.extra_train:
        if not Path(extra_path).exists():
            raise ConfigError(f"data.extra_train: {extra_path!r} does not exist")
        extra = open_dataset(extra_path)
        if extra.r_grid.shape != ds.r_grid.shape or not np.allclose(extra.r_grid, ds.r_grid):
            raise ConfigError(f"data.extra_train: {extra_path!r} has another r grid ({extra.r_grid.shape[0]} points, "
                              f"{extra.r_grid[0]:g}-{extra.r_grid[-1]:g} A) than {cfg.data.path!r} "
                              f"({ds.r_grid.shape[0]} points); simulate it with the same pdf config")
        train += [extra[i] for i in extra_train_indices(ds, extra, cfg.data, max_atoms=cfg.model.max_atoms)]
    return train, [ds[i] for i in keep_val]


def _padding_efficiency(batch) -> float:
    """Real atoms / padded slots of one dense batch."""
    mask = batch.mask
    return float(mask.float().mean())


# --------------------------------------------------------------------------------------------------
# the per-worker loop
# --------------------------------------------------------------------------------------------------
def _state_file(rank: int) -> str:
    return f"rank{rank}.pt"


def _restore(trainer, sampler, ckpt, rank: int, seed: int) -> bool:
    """Load this rank's state from a Ray checkpoint (falls back to rank 0's when the world grew).

    Returns whether the sampler position was restored (then the current epoch continues mid-way)."""
    with ckpt.as_directory() as d:
        own = Path(d) / _state_file(rank)
        path = own if own.is_file() else Path(d) / _state_file(0)
        state = load_checkpoint(path)
    trainer.load_state_dict(state)
    if path != own:  # a rank that did not exist before: fresh, distinct noise stream
        trainer.generator.manual_seed(seed + rank * _RNG_STRIDE + trainer.step)
    if state.get("sampler") is not None and path == own:
        sampler.load_state_dict(state["sampler"])
        return True
    return False


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train worker: build data, model and sampler; restore; train; report checkpoints."""
    import numpy as np
    import ray.train
    import ray.train.torch
    import torch

    cfg: TrainConfig = from_dict(TrainConfig, config["train_config"])
    opts: dict[str, Any] = config["options"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(max(1, int(opts.get("cpus_per_worker", 1))))
    device = ray.train.torch.get_device()
    use_cuda = device.type == "cuda"
    logger = tracking.RunLogger(opts.get("tracking_uri"), opts.get("mlflow_run_id"), rank)

    train_data, val_data = load_split(cfg)
    val_data = val_data[: max(cfg.val_pdfs, int(opts.get("val_max_structures", 64)))]
    sizes = [int(d.num_nodes) for d in train_data]
    sampler = BucketBatchSampler(
        sizes, cfg.data.batch_size, shuffle=True, seed=cfg.seed, num_replicas=world, rank=rank, drop_last=True
    ) if cfg.data.bucket else _random_sampler(sizes, cfg, world, rank)
    steps_per_epoch = len(sampler)
    if steps_per_epoch == 0:
        raise ConfigError(
            f"data.batch_size: {cfg.data.batch_size} x {world} workers leaves no full batch for "
            f"{len(train_data)} training structures; lower the batch size or the number of workers"
        )
    planned = cfg.epochs * steps_per_epoch
    if cfg.max_steps is not None:
        planned = min(planned, cfg.max_steps)

    def wrap(module):
        if world == 1:
            return module
        return ray.train.torch.prepare_model(module, move_to_device=False, parallel_strategy_kwargs={
            "find_unused_parameters": bool(opts.get("find_unused_parameters", False))})

    trainer = Trainer(cfg, device=device, wrap_model=wrap, total_steps=planned)
    trainer.generator.manual_seed(cfg.seed + rank * _RNG_STRIDE)
    ckpt = ray.train.get_checkpoint()
    mid_epoch = _restore(trainer, sampler, ckpt, rank, cfg.seed) if ckpt is not None else False
    trainer.total_steps = planned  # a relaunch may extend the run: the LR schedule follows the new plan
    if rank == 0:
        print(f"[pdfusion] rank 0/{world}: {len(train_data)} train / {len(val_data)} val structures, "
              f"{steps_per_epoch} steps/epoch, {planned} planned steps, resume step {trainer.step}", flush=True)

    fail_at = opts.get("fail_at_step")
    fail_marker = opts.get("fail_marker")
    every = max(1, int(cfg.checkpoint_every_steps))
    log_every = max(1, int(opts.get("log_every_steps", 10)))
    last_val: dict[str, float] = (_read_last_val(ckpt) or {}) if ckpt is not None else {}
    # throughput counts only data + step time (not validation or checkpoint I/O), all ranks together
    window: list[dict[str, float]] = []
    t_window = graphs_window = 0.0
    t_total = graphs_total = 0.0

    def report(extra: dict[str, float], *, checkpoint: bool, tag: str = "") -> None:
        metrics = {"step": trainer.step, "epoch": trainer.epoch, **extra}
        if t_total > 0:
            metrics["train_graphs_per_s"] = graphs_total * world / t_total
        metrics[SCORE_METRIC] = last_val.get(SCORE_METRIC, UNVALIDATED_SCORE)
        if not checkpoint:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as tmp:
            trainer.save_checkpoint(Path(tmp) / _state_file(rank), sampler_state=sampler.state_dict())
            if rank == 0:
                (Path(tmp) / "metrics.json").write_text(json.dumps({"last_val": last_val, **_plain(metrics)}))
                (Path(tmp) / "config.json").write_text(json.dumps(to_dict(cfg), indent=2, sort_keys=True))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                             checkpoint_dir_name=f"checkpoint_e{trainer.epoch:05d}_s{trainer.step:08d}{tag}")

    val_step = -1
    if trainer.step == 0 and cfg.val_every_epochs and rank == 0:
        # the untrained model's score, so every validation curve in MLflow starts from its own baseline
        # (logged only: checkpoints are ranked by scores measured on their own weights)
        logger.log_metrics(_validate(trainer, val_data), step=0)
    last_end = time.perf_counter()

    def on_step(out: dict[str, float], batch, indices) -> None:
        nonlocal window, t_window, graphs_window, t_total, graphs_total, last_end
        dt_step = time.perf_counter() - last_end  # data + step since the previous hook returned
        t_window += dt_step
        t_total += dt_step
        graphs_total += len(indices)
        if fail_at is not None and trainer.step == int(fail_at) and rank == 0 and fail_marker:
            marker = Path(fail_marker)
            if not marker.exists():
                marker.parent.mkdir(parents=True, exist_ok=True)
                marker.write_text(str(trainer.step))
                raise InjectedFailure(f"injected failure at step {trainer.step} (marker {marker})")
        out["padding_efficiency"] = _padding_efficiency(batch)
        window.append(out)
        graphs_window += len(indices)
        if trainer.step % log_every == 0:
            agg = {k: float(np.mean([w[k] for w in window])) for k in window[0] if k != "step"}
            agg["graphs_per_s"] = graphs_window * world / max(t_window, 1e-9)
            agg["epoch"] = trainer.epoch
            if use_cuda:
                agg["gpu_mem_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
            logger.log_metrics(agg, step=trainer.step)
            window, t_window, graphs_window = [], 0.0, 0.0
        if trainer.step % every == 0 and trainer.step < planned and sampler.state_dict()["position"] < len(sampler):
            report({"loss": out["loss"]}, checkpoint=True)
        last_end = time.perf_counter()

    def on_epoch_end(step_out: dict[str, float]) -> None:
        nonlocal last_val, val_step, last_end
        extra = {"loss": float(step_out["loss"])}
        if cfg.val_every_epochs and trainer.epoch % cfg.val_every_epochs == 0:
            if rank == 0:
                last_val = {**last_val, **_validate(trainer, val_data)}
                logger.log_metrics(last_val, step=trainer.step)
            val_step = trainer.step
            extra.update(last_val)
        report(extra, checkpoint=True)
        last_end = time.perf_counter()

    out = trainer.train_loop(train_data, sampler, max_steps=planned, resumed=mid_epoch,
                             autocast=autocast_for(device, bool(opts.get("bf16", True))), on_step=on_step,
                             on_epoch_end=on_epoch_end)

    # the final state, validated, is always the latest checkpoint
    if rank == 0:
        if val_step != trainer.step:
            last_val = {**last_val, **_validate(trainer, val_data)}
            logger.log_metrics(last_val, step=trainer.step)
        if opts.get("final_artifacts", True) and logger.active:
            _log_samples(trainer, val_data, cfg, logger, int(opts.get("artifact_pdfs", 2)))
    final = {"final": 1, **last_val}
    if "loss" in out:
        final["loss"] = float(out["loss"])
    report(final, checkpoint=True, tag="_final")


def _validate(trainer, val_data) -> dict[str, float]:
    """`Trainer.validate`; if sampling produced structures whose PDF cannot be scored (e.g. an early
    model placing every atom beyond rmax), keep the validation loss and say why R_wp is missing."""
    try:
        out = trainer.validate(val_data)
    except NonFiniteError:
        raise
    except ValueError as err:
        print(f"[pdfusion] step {trainer.step}: validation R_wp skipped: {err}", flush=True)
        out = trainer.validate(val_data, n_pdfs=0)
    return {k: float(v) for k, v in out.items()}


def _plain(d: dict) -> dict:
    return {k: (float(v) if isinstance(v, int | float) else v) for k, v in d.items()}


def _read_last_val(ckpt) -> dict[str, float] | None:
    with ckpt.as_directory() as d:
        p = Path(d) / "metrics.json"
        if p.is_file():
            return json.loads(p.read_text()).get("last_val")
    return None


def _random_sampler(sizes, cfg: TrainConfig, world: int, rank: int):
    """Random batches (for comparison): pools of one batch, so sorting inside a pool changes nothing."""
    return BucketBatchSampler(sizes, cfg.data.batch_size, shuffle=True, seed=cfg.seed, num_replicas=world,
                              rank=rank, drop_last=True, pool_batches=1)


def _log_samples(trainer, val_data, cfg: TrainConfig, logger: tracking.RunLogger, n_pdfs: int) -> None:
    """Artifacts for a human: best-of-K candidates as XYZ and target-vs-candidate G(r) overlays (the sampled
    curve is each candidate's `g_sim`, drawn by evaluation.plots.candidate_overlay)."""
    import numpy as np
    import torch

    chosen = val_data[:n_pdfs]
    if not chosen:
        return
    pdfs = torch.cat([d.y.reshape(1, -1) for d in chosen]).float()
    metals = [int(d.metal.reshape(-1)[0]) for d in chosen]
    scfg = SampleConfig(steps=cfg.val_steps, n_samples=cfg.val_samples, seed=cfg.seed)
    ranked = sample_and_score(trainer.ema, trainer.diffusion, pdfs, metals, scfg, cfg.pdf, device=trainer.device)
    r = np.asarray(torch.as_tensor(r_grid(cfg.pdf)).cpu())
    with tempfile.TemporaryDirectory() as tmp:
        for i, (data, cands) in enumerate(zip(chosen, ranked, strict=True)):
            best = cands[0]
            tag = f"val{i}_{getattr(data, 'formula', 'x')}"
            xyz = Path(tmp) / f"{tag}_best.xyz"
            xyz.write_text(best.to_xyz(f"best-of-{len(cands)} Rwp={best.rwp:.4f} target {getattr(data, 'source', '')}"))
            logger.log_artifact(xyz, "samples")
            png = plots.candidate_overlay(r, data.y.reshape(-1).cpu().numpy(), cands, f"{tag}: best of {len(cands)}",
                                    Path(tmp) / f"{tag}_pdf.png")
            logger.log_artifact(png, "plots")


# --------------------------------------------------------------------------------------------------
# the driver
# --------------------------------------------------------------------------------------------------
def default_storage_path() -> str:
    """Ray's own default (~/ray_results), outside the project so `--working-dir .` never uploads it."""
    return str(Path.home() / "ray_results")


def _run_id_file(storage_path: str, name: str) -> str:
    return storage.join(storage_path, name, "mlflow_run_id.txt")


def run_training(
    cfg: TrainConfig,
    *,
    num_workers: int = 1,
    use_gpu: bool = False,
    cpus_per_worker: float = 1,
    gpus_per_worker: float | None = None,
    name: str = "pdfusion-egnn",
    storage_path: str | None = None,
    max_failures: int = 0,
    num_to_keep: int | None = 3,
    tracking_uri: str | None = None,
    experiment: str = tracking.DEFAULT_EXPERIMENT,
    register_as: str | None = tracking.DEFAULT_MODEL_NAME,
    alias: str | None = None,
    mlflow: bool = True,
    fail_at_step: int | None = None,
    fail_marker: str | None = None,
    log_every_steps: int = 10,
    final_artifacts: bool = True,
    bf16: bool = True,
    callbacks: list | None = None,
    run_tags: dict[str, str] | None = None,
) -> TrainingOutcome:
    """Train `cfg` on `num_workers` Ray Train workers (DDP; gloo on CPU, NCCL on GPU).

    Relaunching with the same `name` and `storage_path` resumes from the latest checkpoint (and the
    same MLflow run). With `mlflow`, one run holds params, metrics and artifacts, and the final
    checkpoint is registered as a new version of `register_as` (skip with None). `fail_at_step` +
    `fail_marker` make rank 0 raise once at that step (testing fault tolerance). `callbacks` go to Ray
    Train's RunConfig (Tune passes its TuneReportCallback); `run_tags` are added to the MLflow run (Tune
    nests trial runs under a sweep's parent run with `mlflow.parentRunId`).
    """
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    if num_workers < 1:
        raise ConfigError(f"num_workers: must be >= 1, got {num_workers}")
    if max_failures < -1:
        raise ConfigError(f"max_failures: must be >= -1 (-1 = retry forever), got {max_failures}")
    if fail_at_step is not None and not fail_marker:
        raise ConfigError("fail_marker: fail_at_step needs a marker file so the failure fires only once")
    if use_gpu:
        os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    storage_path = storage.normalize_storage_path(storage_path or default_storage_path())
    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=True)

    run_id = uri = None
    if mlflow:
        uri = tracking_uri or tracking.default_tracking_uri()
        id_file = _run_id_file(storage_path, name)
        previous = (storage.read_text(id_file) or "").strip() or None
        run_id = tracking.start_run(
            uri, experiment=experiment, run_name=name, run_id=previous,
            params={**to_dict(cfg), "run": {"num_workers": num_workers, "use_gpu": use_gpu,
                                            "cpus_per_worker": cpus_per_worker, "name": name}},
            tags={"pdfusion.ray_run_name": name, "pdfusion.storage_path": storage_path, **(run_tags or {})},
        )
        if run_id != previous:
            storage.write_text(id_file, run_id)
            tracking.RunLogger(uri, run_id, 0).log_dict(to_dict(cfg), "config.json")

    resources: dict[str, float] = {"CPU": float(cpus_per_worker)}
    if use_gpu:
        resources["GPU"] = float(gpus_per_worker if gpus_per_worker is not None else 1)
    options = {
        "cpus_per_worker": cpus_per_worker, "tracking_uri": uri, "mlflow_run_id": run_id,
        "fail_at_step": fail_at_step, "fail_marker": fail_marker, "log_every_steps": log_every_steps,
        "final_artifacts": final_artifacts, "bf16": bf16,
    }
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"train_config": to_dict(cfg), "options": options},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu, resources_per_worker=resources),
        run_config=RunConfig(
            name=name,
            storage_path=storage_path,
            failure_config=FailureConfig(max_failures=max_failures),
            callbacks=list(callbacks or []),
            checkpoint_config=CheckpointConfig(
                num_to_keep=num_to_keep, checkpoint_score_attribute=SCORE_METRIC, checkpoint_score_order="min"
            ),
        ),
    )
    try:
        result = trainer.fit()
    except BaseException:
        if run_id:
            tracking.finish_run(uri, run_id, status="FAILED")
        raise
    if result.error is not None:
        if run_id:
            tracking.finish_run(uri, run_id, status="FAILED")
        raise result.error

    ckpt_path = _local_state(result.checkpoint)
    best = result.get_best_checkpoint(SCORE_METRIC, "min") if result.best_checkpoints else None
    best_path = _local_state(best)
    metrics = dict(result.metrics or {})
    version = None
    if run_id and ckpt_path:
        logger = tracking.RunLogger(uri, run_id, 0)
        logger.log_artifact(ckpt_path, "checkpoint")
        if register_as:
            score = metrics.get(SCORE_METRIC)
            version = tracking.register_checkpoint(
                uri, run_id, ckpt_path, to_dict(cfg), name=register_as, alias=alias,
                tags={"step": str(metrics.get("step")), SCORE_METRIC: str(score)},
            )
        tracking.finish_run(uri, run_id)
    return TrainingOutcome(
        name=name, storage_path=storage_path, final_step=int(metrics.get("step", 0)),
        final_epoch=int(metrics.get("epoch", 0)), metrics=metrics, checkpoint_path=ckpt_path,
        best_checkpoint_path=best_path, mlflow_run_id=run_id, tracking_uri=uri,
        model_name=register_as if version else None, model_version=version, result=result,
    )


def _local_state(ckpt) -> str | None:
    """Path of the rank-0 state file inside a (local-filesystem) Ray checkpoint."""
    if ckpt is None:
        return None
    path = Path(ckpt.path) / _state_file(0)
    if path.is_file():
        return str(path)
    # remote storage: materialise locally
    local = Path(ckpt.to_directory()) / _state_file(0)
    return str(local) if local.is_file() else None
