"""CI-sized Tune sweeps on a synthetic store: Optuna + ASHA around Ray Train, resume, nested MLflow runs,
and a guidance sweep recorded on a registered model."""

import os
from dataclasses import replace

import pytest

from pdfusion.config import to_dict
from pdfusion.tuning.sweeps import apply_overrides

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def ray_session(tmp_path_factory):
    import ray

    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
    os.environ.pop("MLFLOW_TRACKING_URI", None)


def test_apply_overrides_changes_only_the_sampled_fields(synthetic_store):
    from conftest import tiny_config

    base = tiny_config(*synthetic_store)
    cfg = apply_overrides(base, {"schedule": "cosine", "timesteps": 50, "lr": 1e-3, "hidden": 8, "p_uncond": 0.3})
    assert cfg.diffusion.schedule.name == "cosine" and cfg.diffusion.schedule.timesteps == 50
    assert cfg.lr == 1e-3 and cfg.model.hidden == 8 and cfg.diffusion.p_uncond == 0.3
    assert cfg.model.layers == base.model.layers and cfg.data == base.data


def test_schedule_sweep_asha_stops_a_trial_and_resume_reruns_nothing(synthetic_store, ray_session, tmp_path):
    from mlflow import MlflowClient

    from conftest import tiny_config
    from pdfusion.tuning.sweeps import run_schedule_sweep

    base = replace(tiny_config(*synthetic_store), epochs=3, val_pdfs=1, val_samples=1, val_steps=2,
                   checkpoint_every_steps=1000)
    # one learning rate trains, the other cannot: ASHA must cut the hopeless trials at the first rung
    space = {"lr": {"choice": [3e-3, 1e-9]}, "schedule": {"choice": ["linear", "cosine"]}}
    kwargs = dict(name="ci-sweep", storage_path=str(tmp_path / "tune"), num_samples=4, grace_period=1,
                  reduction_factor=2, max_concurrent=1, metric="val_loss", seed=3)
    out = run_schedule_sweep(base, space, **kwargs)
    rows = out["rows"]
    assert len(rows) == 4 and not out["resumed"]
    assert all(r["status"] != "ERROR" for r in rows), rows
    assert any(r["status"] == "STOPPED_EARLY" for r in rows), rows
    assert any(r["status"] == "COMPLETED" for r in rows), rows
    assert out["best"]["lr"] == 3e-3
    report = tmp_path / "tune" / "ci-sweep" / "report"
    assert (report / "results.csv").is_file() and (report / "sweep.png").stat().st_size > 1000

    client = MlflowClient(tracking_uri=os.environ["MLFLOW_TRACKING_URI"])
    parent = client.get_run(out["mlflow_run_id"])
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(children) == 4

    again = run_schedule_sweep(base, space, **kwargs)
    assert again["resumed"]
    assert sorted(r["trial_id"] for r in again["rows"]) == sorted(r["trial_id"] for r in rows)
    children2 = client.search_runs([parent.info.experiment_id],
                                   filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(children2) == 4  # nothing re-ran
    assert again["mlflow_run_id"] == out["mlflow_run_id"]


def test_guidance_sweep_records_best_on_registered_model(synthetic_store, ray_session, tmp_path):
    from mlflow import MlflowClient

    from conftest import tiny_config
    from pdfusion.data.dataset import open_dataset
    from pdfusion.training import tracking
    from pdfusion.training.bundle import load_bundle
    from pdfusion.training.trainer import Trainer
    from pdfusion.tuning.sweeps import run_guidance_sweep

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
