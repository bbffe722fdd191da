"""CI-sized Tune sweeps on a synthetic store: Optuna + ASHA around Ray Train, resume, nested MLflow runs,
and a guidance sweep recorded on a registered model."""

import os

import pytest

from pdfusion.config import to_dict
from pdfusion.tuning.sweeps import apply_overrides

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def ray_session(tmp_path_factory):
    import ray

    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"
    if ray.is_initialized():  # a previous module may have left its session running
        ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
    os.environ.pop("MLFLOW_TRACKING_URI", None)


def test_apply_overrides_changes_only_the_sampled_fields(synthetic_store):
    from pdfusion_testdata import tiny_config

    base = tiny_config(*synthetic_store)
    cfg = apply_overrides(base, {"schedule": "cosine", "timesteps": 50, "lr": 1e-3, "hidden": 8, "p_uncond": 0.3})
    assert cfg.diffusion.schedule.name == "cosine" and cfg.diffusion.schedule.timesteps == 50
    assert cfg.lr == 1e-3 and cfg.model.hidden == 8 and cfg.diffusion.p_uncond == 0.3
    assert cfg.model.layers == base.model.layers and cfg.data == base.data


def test_guidance_sweep_records_best_on_registered_model(synthetic_store, ray_session, tmp_path):
    from mlflow import MlflowClient

    from pdfusion.data.dataset import open_dataset
    from pdfusion.training import tracking
    from pdfusion.training.bundle import load_bundle
    from pdfusion.training.trainer import Trainer
    from pdfusion.tuning.sweeps import run_guidance_sweep
    from pdfusion_testdata import tiny_config

    store, pdf_cfg = synthetic_store
    cfg = tiny_config(store, pdf_cfg)
    ds = open_dataset(store)
    trainer = Trainer(cfg)
    trainer.fit([ds[i] for i in range(len(ds))], epochs=1, progress=False)
    ckpt = tmp_path / "ckpt" / "checkpoint.pt"
    ckpt.parent.mkdir()
    trainer.save_checkpoint(ckpt)
    uri = os.environ["MLFLOW_TRACKING_URI"]
    run_id = tracking.start_run(uri, experiment="ci-guidance", run_name="tiny")
    version = tracking.register_checkpoint(uri, run_id, str(ckpt), to_dict(cfg), name="ci-tiny")
    tracking.finish_run(uri, run_id)
    model_uri = f"models:/ci-tiny/{version}"

    space = {"guidance": {"grid": [0.0, 1.0, 2.0]}, "steps": {"grid": [3]}}
    out = run_guidance_sweep(model_uri, str(store), space, name="ci-guidance", storage_path=str(tmp_path / "tune"),
                             k=2, max_pdfs=2)
    assert len(out["rows"]) == 3 and all(r["status"] == "COMPLETED" for r in out["rows"])
    best = out["best"]
    mv = MlflowClient(tracking_uri=uri).get_model_version("ci-tiny", str(version))
    assert float(mv.tags["pdfusion.guidance"]) == best["guidance"] and int(mv.tags["pdfusion.steps"]) == 3
    assert load_bundle(model_uri).defaults == {"guidance": best["guidance"], "steps": 3}
