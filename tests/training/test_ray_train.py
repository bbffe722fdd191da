"""Ray Train V2 training loop: DDP correctness, fault tolerance, relaunch-resume, MLflow tracking.

All on a tiny rock-salt dataset the test generates (PDFs simulated by pdfusion.pdf), one Ray session
for the module. Reference trajectories are computed in-process with the plain `Trainer` on the
sampler's batches, so the distributed loop is checked against an independent, undistributed run.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from pdfusion.config import DataConfig, TrainConfig, preset
from pdfusion.training import ray_train

pytestmark = pytest.mark.ray

METALS = {"Ti": 22, "Mn": 25, "Co": 27, "Ni": 28, "Zn": 30, "Mg": 12}
RADII = (3.0, 3.6, 4.2, 4.6)


def _simulate(pos, numbers):
    try:
        from pdfusion.pdf import simulate_pdf
    except ImportError:
        from pdfusion.pdf.debye import simulate_pdf
    from pdfusion.config import PDFConfig

    g = simulate_pdf(torch.as_tensor(pos, dtype=torch.float64)[None], torch.as_tensor(numbers)[None], None, PDFConfig())
    return g[0].numpy()


def write_rocksalt_dataset(folder: Path, seed: int = 0) -> Path:
    """24 seed-oxides-format files: rock-salt spheres (19-57 atoms) of 6 metals, jittered, PDFs simulated."""
    from pdfusion.structures.io import SeedRecord, write_seed_h5
    from pdfusion.structures.particle import Particle

    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(-3, 4)] * 3, indexing="ij"), -1).reshape(-1, 3)
    r_axis = np.round(np.arange(3000) * 0.01, 2)
    for sym, z in METALS.items():
        a = 4.0 + 0.1 * (z % 5)
        for radius in RADII:
            pts = grid[np.linalg.norm(grid * a / 2, axis=1) <= radius]
            numbers = np.where(pts.sum(1) % 2 == 0, z, 8)
            pos = pts * a / 2 + rng.normal(0, 0.05, size=pts.shape)
            pos -= pos.mean(0)
            na = np.zeros((len(pos), 7))
            na[:, 0], na[:, 4:7] = numbers, pos
            rec = SeedRecord(Particle(numbers, pos), na, r_axis, _simulate(pos, numbers),
                             np.zeros((2, 0), np.int64), np.zeros(0))
            write_seed_h5(rec, folder / f"graph_NaCl_{sym}O_r{radius}.h5")
    return folder


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return write_rocksalt_dataset(tmp_path_factory.mktemp("rocksalt"))


@pytest.fixture(scope="module")
def ray_session():
    import ray

    if ray.is_initialized():  # a previous module may have left its session running
        ray.shutdown()

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)  # never join a shared head
    yield
    ray.shutdown()


def tiny_cfg(data: Path, **over) -> TrainConfig:
    base = preset("tiny")
    cfg = dataclasses.replace(
        base,
        data=DataConfig(path=str(data), batch_size=2, split_by="metal", val_fraction=0.2, max_atoms=512),
        epochs=1, val_pdfs=1, val_samples=2, val_steps=3, checkpoint_every_steps=2,
    )
    return dataclasses.replace(cfg, **over)


# --------------------------------------------------------------------------------------------------
# independent references
# --------------------------------------------------------------------------------------------------
def reference_run(cfg: TrainConfig, world: int, steps: int):
    """What `world` DDP ranks compute, done in one process: the same per-rank batches and noise
    streams, gradient = mean of the per-rank gradients (= gradient of the mean loss)."""
    from pdfusion.data.batching import BucketBatchSampler, collate
    from pdfusion.training.trainer import Trainer

    class PairTrainer(Trainer):
        def _batch_to(self, batch):
            if isinstance(batch, list):
                return [Trainer._batch_to(self, b) for b in batch]
            return Trainer._batch_to(self, batch)

        def _loss(self, model, batch, generator):
            if not isinstance(batch, list):
                return Trainer._loss(self, model, batch, generator)
            parts = [Trainer._loss(self, model, b, g) for b, g in zip(batch, self.gens, strict=True)]
            return sum(loss for loss, _ in parts) / len(parts), parts[-1][1]

    train, _ = ray_train.load_split(cfg)
    sizes = [int(d.num_nodes) for d in train]
    samplers = [BucketBatchSampler(sizes, cfg.data.batch_size, shuffle=True, seed=cfg.seed, num_replicas=world,
                                   rank=r, drop_last=True) for r in range(world)]
    per_epoch = len(samplers[0])
    planned = min(cfg.epochs * per_epoch, cfg.max_steps or 10**9)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a worker with one CPU: same reduction order
    tr = PairTrainer(cfg, total_steps=planned)
    tr.gens = [torch.Generator().manual_seed(cfg.seed + r * ray_train._RNG_STRIDE) for r in range(world)]
    epoch = 0
    while tr.step < steps:
        per_rank = [s.rank_batches(epoch) for s in samplers]
        for i in range(per_epoch):
            tr.train_step([collate([train[j] for j in per_rank[r][i]]) for r in range(world)])
            if tr.step >= steps:
                break
        epoch += 1
    torch.set_num_threads(threads)
    return tr


def _load(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _assert_close(a: dict, b: dict, atol: float, rtol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=rtol, msg=lambda m, k=k: f"{k}: {m}")


# --------------------------------------------------------------------------------------------------
# tests
# --------------------------------------------------------------------------------------------------
def test_ddp_two_workers_match_one_process_over_both_batches(ray_session, tiny_data, tmp_path):
    """2 workers x batch b (gloo DDP) == 1 process over the same 2b structures and noise."""
    cfg = tiny_cfg(tiny_data, max_steps=4)
    out = ray_train.run_training(cfg, num_workers=2, name="ddp", storage_path=str(tmp_path), mlflow=False)
    assert out.final_step == 4
    ckpt_dir = Path(out.checkpoint_path).parent
    s0, s1 = _load(ckpt_dir / "rank0.pt"), _load(ckpt_dir / "rank1.pt")
    _assert_close(s0["model"], s1["model"], atol=0)  # replicas stay identical
    assert not torch.equal(s0["rng"]["generator"], s1["rng"]["generator"])  # but draw different noise
    ref = reference_run(cfg, world=2, steps=4)
    _assert_close(s0["model"], ref.module.state_dict(), atol=2e-5, rtol=1e-4)
    _assert_close(s0["ema"], ref.ema.state_dict(), atol=2e-5, rtol=1e-4)
    # and it actually trained: the weights moved away from the initial ones
    init = reference_run(cfg, world=2, steps=0).module.state_dict()
    assert any(not torch.allclose(s0["model"][k], init[k]) for k in init)


def test_relaunch_resume_and_fault_tolerance(ray_session, tiny_data, tmp_path):
    """Run to step 3; relaunch the same name to step 6, with a worker crash injected at step 5
    (checkpoints every 2 steps): it resumes from step 3, then from step 4 after the crash, and ends
    where an uninterrupted single-process run ends."""
    from mlflow import MlflowClient

    from pdfusion import tracking
    from pdfusion.training.trainer import Trainer

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    storage = str(tmp_path / "ray")
    cfg = tiny_cfg(tiny_data, max_steps=6)
    marker = tmp_path / "failed_once"
    first = ray_train.run_training(dataclasses.replace(cfg, max_steps=3), name="relaunch", storage_path=storage,
                                   tracking_uri=uri, register_as="pdfusion-egnn-test", experiment="t",
                                   log_every_steps=1)
    assert first.final_step == 3 and first.model_version == 1
    second = ray_train.run_training(cfg, name="relaunch", storage_path=storage, tracking_uri=uri,
                                    register_as="pdfusion-egnn-test", experiment="t",
                                    max_failures=1, fail_at_step=5, fail_marker=str(marker), log_every_steps=1)
    assert marker.read_text() == "5", "the injected failure did not fire"
    assert second.final_step == 6 and second.mlflow_run_id == first.mlflow_run_id and second.model_version == 2

    b = _load(second.checkpoint_path)
    ref = reference_run(cfg, world=1, steps=6)
    _assert_close(b["model"], ref.module.state_dict(), atol=2e-6, rtol=1e-5)
    _assert_close(b["ema"], ref.ema.state_dict(), atol=2e-6, rtol=1e-5)
    assert torch.equal(b["rng"]["generator"], ref.gens[0].get_state())

    # MLflow: one run across both launches, params, metrics, artifacts, registered versions
    client = MlflowClient(uri)
    run = client.get_run(first.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["model.hidden"] == str(cfg.model.hidden) and run.data.params["data.batch_size"] == "2"
    for key in ("loss", "graphs_per_s", "padding_efficiency", "val_rwp_best_median", "val_loss", "lr"):
        assert key in run.data.metrics, key
    # every step logged exactly once: the relaunch did not redo steps 1-3, the restart not step 5
    loss_steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "loss"))
    assert loss_steps == [1, 2, 3, 4, 5, 6]
    hist = client.get_metric_history(run.info.run_id, "val_rwp_best_median")
    rwp = [m.value for m in hist]
    assert len(rwp) >= 2 and all(np.isfinite(rwp)) and all(v >= 0 for v in rwp)
    # the curve starts with the untrained model (step 0), once: the relaunch did not re-validate at its start
    assert sorted(m.step for m in hist)[0] == 0 and sum(m.step == 0 for m in hist) == 1
    names = {f.path for f in client.list_artifacts(run.info.run_id)}
    assert {"config.json", "checkpoint", "model", "samples", "plots"} <= names
    assert any(f.path.endswith(".xyz") for f in client.list_artifacts(run.info.run_id, "samples"))
    assert any(f.path.endswith(".png") for f in client.list_artifacts(run.info.run_id, "plots"))
    path = tracking.download_checkpoint("models:/pdfusion-egnn-test/2", tracking_uri=uri)
    served = Trainer.from_checkpoint(path)
    assert served.step == 6
    _assert_close(served.ema.state_dict(), b["ema"], atol=0)
    assert tracking.load_config("models:/pdfusion-egnn-test/2", tracking_uri=uri)["data"]["batch_size"] == 2


def test_extra_train_joins_training_only_without_held_out_groups(tiny_data, tmp_path):
    """Extra data (e.g. generated off-library particles) are added to the training split, except those of a
    metal the main split holds out, so the held-out evaluation stays held out."""
    from pdfusion.config import ConfigError
    from pdfusion.data.dataset import open_dataset
    from pdfusion.data.splits import split_indices

    extra_dir = write_rocksalt_dataset(tmp_path / "extra", seed=1)
    cfg = tiny_cfg(tiny_data)
    base_train, base_val = ray_train.load_split(cfg)
    train, val = ray_train.load_split(dataclasses.replace(
        cfg, data=dataclasses.replace(cfg.data, extra_train=(str(extra_dir),))))
    assert len(val) == len(base_val)
    ds = open_dataset(tiny_data)
    held = {ds.groups("metal")[i] for i in split_indices(ds, cfg.data)[1]}
    extra = open_dataset(extra_dir)
    allowed = [m for m in extra.groups("metal") if m not in held]
    assert held and 0 < len(allowed) < len(extra)
    assert len(train) == len(base_train) + len(allowed)
    val_metals = {int(d.metal) for d in base_val}
    assert all(int(d.metal) not in val_metals for d in train)
    with pytest.raises(ConfigError, match="data.extra_train"):
        ray_train.load_split(dataclasses.replace(
            cfg, data=dataclasses.replace(cfg.data, extra_train=(str(tmp_path / "nowhere"),))))


def test_bad_inputs_fail_clearly(tiny_data, tmp_path):
    from pdfusion.config import ConfigError

    with pytest.raises(ConfigError, match="data.path"):
        ray_train.load_split(tiny_cfg(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match="fail_marker"):
        ray_train.run_training(tiny_cfg(tiny_data), fail_at_step=3)
    with pytest.raises(ConfigError, match="num_workers"):
        ray_train.run_training(tiny_cfg(tiny_data), num_workers=0)
