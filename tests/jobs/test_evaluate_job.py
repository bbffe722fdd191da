"""jobs/evaluate.py end to end on a store this test builds: a tiny trained model and every baseline,
fanned out over Ray tasks; the held-out metals never appear in the library baseline."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
METALS = {"Ti", "Fe", "Ni", "Zn"}


def _load_job():
    spec = importlib.util.spec_from_file_location("evaluate_job", ROOT / "jobs" / "evaluate.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def store(synthetic_store):
    return synthetic_store[0]


@pytest.fixture(scope="module")
def tiny_model(synthetic_store, tmp_path_factory):
    from pdfusion.data.dataset import open_dataset
    from pdfusion.training.trainer import Trainer
    from pdfusion_testdata import tiny_config

    store, pdf_cfg = synthetic_store
    cfg = tiny_config(store, pdf_cfg)
    ds = open_dataset(store)
    trainer = Trainer(cfg)
    trainer.fit([ds[i] for i in range(len(ds))], epochs=1, progress=False)
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    trainer.save_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def ray_session():
    import ray

    if ray.is_initialized():  # a previous module may have left its session running
        ray.shutdown()

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_evaluate_job_model_and_baselines_over_ray(store, tiny_model, ray_session, tmp_path):
    job = _load_job()
    out = tmp_path / "eval"
    rc = job.main(["--model", str(tiny_model), "--data", str(store), "-k", "2", "--steps", "4", "--num-tasks", "2",
                   "--out", str(out)])
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    held = set(report["split"]["heldout_groups"])
    assert held and held < set(METALS)
    assert set(report["summary"]) == {"model", "unconditional", "library", "random"}
    n_targets = report["split"]["n_targets"]
    for name, rows in report["per_target"].items():
        assert len(rows) == n_targets, name
    # the library baseline only proposes training structures: none of a held-out metal
    for row in report["per_target"]["library"]:
        assert row["composition_match"] == 0.0
    lib, rnd = report["summary"]["library"], report["summary"]["random"]
    assert lib["rwp_best_median"] < rnd["rwp_best_median"]
    assert report["summary"]["model"]["nan_total"] == 0
    for png in ("rwp_histograms.png", "overlay_model.png", "structures_library.png"):
        assert (out / png).stat().st_size > 1000


def test_evaluate_job_rejects_model_methods_without_model(store, capsys):
    job = _load_job()
    assert job.main(["--data", str(store), "--methods", "model"]) == 2
    assert "model" in capsys.readouterr().err
