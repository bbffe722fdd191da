"""CI-sized Tune sweeps on a synthetic store: Optuna + ASHA around Ray Train, resume, nested MLflow runs,
the placement-group reaper that keeps an ASHA-stopped trial from starving the next one, and a guidance
sweep recorded on a registered model."""

import csv
import os
import time
from dataclasses import replace

import pytest

from pdfusion.config import ConfigError, to_dict
from pdfusion.tuning.sweeps import _check_points, apply_overrides, concurrent_trials

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def ray_session(tmp_path_factory):
    import ray

    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"
    # one actor process fewer per trial on 2 shared cores (a local cluster has no preemption to watch)
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    if ray.is_initialized():  # a previous module may have left its session running
        ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.environ.pop("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", None)


def test_apply_overrides_changes_only_the_sampled_fields(synthetic_store):
    from pdfusion_testdata import tiny_config

    base = tiny_config(*synthetic_store)
    cfg = apply_overrides(base, {"schedule": "cosine", "timesteps": 50, "lr": 1e-3, "hidden": 8, "p_uncond": 0.3})
    assert cfg.diffusion.schedule.name == "cosine" and cfg.diffusion.schedule.timesteps == 50
    assert cfg.lr == 1e-3 and cfg.model.hidden == 8 and cfg.diffusion.p_uncond == 0.3
    assert cfg.model.layers == base.model.layers and cfg.data == base.data


def test_concurrent_trials_counts_train_runs_that_fit():
    assert concurrent_trials({"CPU": 2.0}, 1, 1.0) == 2  # the trial drivers hold no CPU
    assert concurrent_trials({"CPU": 8.0}, 2, 1.5) == 2
    assert concurrent_trials({"CPU": 16.0, "GPU": 2.0}, 1, 1.0, use_gpu=True) == 2
    with pytest.raises(ConfigError, match="num_workers"):
        concurrent_trials({"CPU": 2.0}, 3, 1.0)


def test_points_to_evaluate_must_name_the_space_keys():
    space = {"lr": {"choice": [1e-3, 1e-2]}, "schedule": {"choice": ["linear", "cosine"]}}
    assert _check_points([{"lr": 1e-3, "schedule": "cosine"}], space) == [{"lr": 1e-3, "schedule": "cosine"}]
    with pytest.raises(ConfigError, match=r"points_to_evaluate\[0\]"):
        _check_points([{"lr": 1e-3}], space)
    with pytest.raises(ConfigError, match="schedule"):
        _check_points([{"lr": 1e-3, "schedule": "quadratic"}], space)


def _pg_state(pg_id: str) -> str:
    from ray.util import placement_group_table

    return placement_group_table()[pg_id]["state"] if pg_id in placement_group_table() else "UNKNOWN"


def _wait_for(predicate, what: str, limit_s: float = 60.0):
    deadline = time.monotonic() + limit_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.2)


def test_reaper_removes_the_placement_group_of_a_dead_creator(ray_session):
    """The root cause in miniature: a placement group made by an actor outlives the actor (it is
    job-scoped), so a killed Train controller leaves its CPUs reserved; the reaper releases them."""
    import ray
    from ray.util import placement_group, remove_placement_group

    from pdfusion.tuning.trial_cleanup import REAPER_NAME, start_reaper

    reaper = start_reaper()

    @ray.remote(num_cpus=0)
    class Creator:  # stands in for a Ray Train controller
        def make(self, register: bool):
            pg = placement_group([{"CPU": 1}])
            ray.get(pg.ready(), timeout=60)
            if register:
                me = ray.get_runtime_context().current_actor
                ray.get(ray.get_actor(REAPER_NAME).watch.remote(me, pg))
            return pg

    unwatched, watched = Creator.remote(), Creator.remote()
    leaked_pg = ray.get(unwatched.make.remote(False))
    leaked, reaped = leaked_pg.id.hex(), ray.get(watched.make.remote(True)).id.hex()
    assert ray.get(reaper.watched.remote()) == [reaped]
    ray.kill(unwatched)
    ray.kill(watched)
    _wait_for(lambda: _pg_state(reaped) == "REMOVED", "the reaper to remove the watched group")
    assert ray.get(reaper.reaped.remote()) == [reaped]
    _wait_for(lambda: ray.get(reaper.watched.remote()) == [], "the reaper to stop watching the removed group")
    assert ray.get(reaper.registered.remote()) == [reaped]  # the history keeps it
    assert _pg_state(leaked) == "CREATED"  # nobody else frees it: this is what starved trial 2
    remove_placement_group(leaked_pg)
    _wait_for(lambda: _pg_state(leaked) == "REMOVED", "the manual removal")


@pytest.fixture(scope="module")
def schedule_sweep(synthetic_store, ray_session, tmp_path_factory):
    """One CI-sized schedule sweep, run once for the tests below: three sequential trials whose
    validation loss after epoch 1 differs by construction (lr 1e-2 trains; lr 1e-9 cannot)."""
    from pdfusion.tuning.sweeps import run_schedule_sweep
    from pdfusion_testdata import tiny_config

    base = replace(tiny_config(*synthetic_store), epochs=3, val_pdfs=0, warmup_steps=0, ema_decay=0.0,
                   checkpoint_every_steps=1000)
    space = {"lr": {"choice": [1e-2, 1e-9]}, "schedule": {"choice": ["linear", "cosine"]}}
    # in this order: a good trial sets rung 1; both hopeless ones fall below its cutoff at epoch 1, and
    # the third must still get its CPU after the second was stopped mid-run
    points = [{"lr": 1e-2, "schedule": "linear"}, {"lr": 1e-9, "schedule": "cosine"},
              {"lr": 1e-9, "schedule": "linear"}]
    kwargs = dict(name="ci-sweep", storage_path=str(tmp_path_factory.mktemp("tune")), num_samples=3,
                  grace_period=1, reduction_factor=2, max_concurrent=1, metric="val_loss", seed=0,
                  points_to_evaluate=points)
    return run_schedule_sweep(base, space, **kwargs), base, space, kwargs


def _children(parent_run_id: str):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=os.environ["MLFLOW_TRACKING_URI"])
    parent = client.get_run(parent_run_id)
    return client.search_runs([parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'")


def test_schedule_sweep_runs_every_trial_with_nested_runs_and_artifacts(schedule_sweep):
    out, _, _, kwargs = schedule_sweep
    rows = out["rows"]
    assert len(rows) == 3 and not out["resumed"]
    assert all(r["status"] != "ERROR" for r in rows), rows
    assert out["best"]["lr"] == 1e-2 and out["best"]["schedule"] == "linear"

    report = os.path.join(kwargs["storage_path"], "ci-sweep", "report")
    with open(os.path.join(report, "results.csv")) as f:
        table = list(csv.DictReader(f))
    assert sorted(r["trial_id"] for r in table) == sorted(r["trial_id"] for r in rows)
    assert os.path.getsize(os.path.join(report, "sweep.png")) > 1000

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=os.environ["MLFLOW_TRACKING_URI"])
    artifacts = {a.path for a in client.list_artifacts(out["mlflow_run_id"])}
    assert {"results.csv", "sweep.png", "best.json"} <= artifacts
    children = _children(out["mlflow_run_id"])
    assert sorted(c.data.tags["pdfusion.trial_id"] for c in children) == sorted(r["trial_id"] for r in rows)
    assert all(c.info.status != "RUNNING" for c in children)  # stopped trials are closed, not left open
    assert client.get_run(out["mlflow_run_id"]).data.tags["best.lr"] == "0.01"


def test_asha_stops_the_hopeless_trials_at_the_first_rung(schedule_sweep):
    import ray

    out = schedule_sweep[0]
    by_lr = {}
    for r in out["rows"]:
        by_lr.setdefault(r["lr"], []).append(r)
    (good,) = by_lr[1e-2]
    assert good["status"] == "COMPLETED" and good["epoch"] == 3
    assert [r["status"] for r in by_lr[1e-9]] == ["STOPPED_EARLY"] * 2
    assert all(r["epoch"] == 1 for r in by_lr[1e-9])
    stopped = {c.data.tags["pdfusion.trial_id"]: c for c in _children(out["mlflow_run_id"])}
    for r in by_lr[1e-9]:
        assert stopped[r["trial_id"]].info.status == "KILLED"
        assert stopped[r["trial_id"]].data.tags["pdfusion.stopped_by"] == "asha"
    # every trial's Train run handed its placement group to the reaper, and every one of them ends
    # released: none is left holding CPUs. Who removes a stopped trial's group varies from run to run
    # (Train itself or, when its controller died first, the reaper; measured: 0, 1 or 2 of the 2), so the
    # reaper's removals are counted only as a subset here; that it does remove a dead creator's group,
    # which nothing else frees, is pinned by test_reaper_removes_the_placement_group_of_a_dead_creator.
    registered = out["registered_placement_groups"]
    assert len(registered) == 3 and len(set(registered)) == 3
    assert set(out["reaped_placement_groups"]) <= set(registered[1:])  # the completed trial's is Train's
    _wait_for(lambda: all(_pg_state(pg) == "REMOVED" for pg in registered), "every trial's group to be removed")
    _wait_for(lambda: ray.available_resources().get("CPU", 0) == ray.cluster_resources()["CPU"],
              "every CPU to be free again")
    _wait_for(lambda: not [pg for pg, info in ray.util.placement_group_table().items()
                           if info["state"] in ("CREATED", "PENDING", "RESCHEDULING")],
              "no placement group left reserved")


def test_rerunning_the_same_sweep_reruns_no_finished_trial(schedule_sweep):
    from pdfusion.tuning.sweeps import run_schedule_sweep

    out, base, space, kwargs = schedule_sweep
    trial_runs = os.path.join(kwargs["storage_path"], "ci-sweep-trials")
    before = sorted(os.listdir(trial_runs))
    again = run_schedule_sweep(base, space, **kwargs)
    assert again["resumed"] and again["mlflow_run_id"] == out["mlflow_run_id"]
    assert sorted((r["trial_id"], r["status"]) for r in again["rows"]) == \
        sorted((r["trial_id"], r["status"]) for r in out["rows"])
    assert sorted(os.listdir(trial_runs)) == before  # no Ray Train run started
    assert len(_children(out["mlflow_run_id"])) == 3  # and no MLflow child run


def test_guidance_sweep_records_best_on_registered_model(synthetic_store, ray_session, tmp_path):
    from mlflow import MlflowClient

    from pdfusion import tracking
    from pdfusion.data.dataset import open_dataset
    from pdfusion.inference.bundle import load_bundle
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
    assert load_bundle(model_uri).defaults == {"guidance": best["guidance"], "steps": 3, "pdf_guidance": 0.0,
                                               "pdf_guidance_iters": 1, "pdf_guidance_cohesion": 0.0,
                                               "pdf_guidance_window": [0.0, 1.0], "resample_at": [],
                                               "resample_keep": 0.5, "prune_fragments": False,
                                               "restarts": 0, "restart_t": 100, "count_temperature": 1.0,
                                               "sizing": "head", "size_scale": 1.0}
    # one nested run per γ, carrying the trial's score
    children = _children(out["mlflow_run_id"])
    assert sorted(float(c.data.params["guidance"]) for c in children) == [0.0, 1.0, 2.0]
    by_g = {r["guidance"]: r for r in out["rows"]}
    for c in children:
        assert c.info.status == "FINISHED"
        assert c.data.metrics["rwp_best_median"] == pytest.approx(
            by_g[float(c.data.params["guidance"])]["rwp_best_median"])
