"""jobs/generate_dataset.py: runs through Ray, and an interrupted run (killed with SIGKILL) resumed by a
rerun loses and duplicates nothing compared with an uninterrupted run."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pdfusion.data.generate import generate
from pdfusion.data.store import Manifest, StoreReader, recover

ROOT = Path(__file__).resolve().parents[2]
JOB = ROOT / "jobs" / "generate_dataset.py"
GRID = ["--types", "NaCl", "Rutile", "CdI2", "--metals", "Ti", "Zn", "--radii", "5", "6", "--variants", "2",
        "--shard-size", "2", "--rmax", "12", "--seed", "3"]  # 24 structures, 12 shards


def _job():
    spec = importlib.util.spec_from_file_location("generate_dataset_job", JOB)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def ray_session():
    ray = pytest.importorskip("ray")
    if ray.is_initialized():  # a previous module may have left its session running
        ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def _contents(root) -> dict[str, tuple]:
    with StoreReader(root) as reader:
        ids = reader.ids()
        assert len(ids) == len(set(ids)), "duplicate structures in the store"
        return {reader[i].id: (reader[i].numbers, reader[i].positions, reader[i].pdf) for i in range(len(reader))}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted result, generated in-process by the library."""
    job = _job()
    out = tmp_path_factory.mktemp("ref") / "store"
    cfg = job.config_from_args(job.build_parser().parse_args([*GRID, "--out", str(out)]))
    generate(cfg)
    return _contents(out)


@pytest.mark.ray
def test_job_runs_on_ray(ray_session, tmp_path, reference):
    job = _job()
    out = tmp_path / "store"
    cfg = job.config_from_args(job.build_parser().parse_args([*GRID, "--out", str(out)]))
    res = job.run(cfg)
    assert res["written"] == 24 and res["shards"] == 12
    summary = json.loads((out / "summary.json").read_text())
    assert summary["per_type"] == {"cdi2": 8, "rocksalt": 8, "rutile": 8}
    assert (out / "atom_counts.png").is_file()
    got = _contents(out)
    assert got.keys() == reference.keys()
    for k, (z, pos, pdf) in reference.items():
        assert np.array_equal(got[k][0], z) and np.array_equal(got[k][1], pos) and np.array_equal(got[k][2], pdf)


@pytest.mark.ray
def test_killed_run_is_completed_by_rerun_without_loss_or_duplicates(ray_session, tmp_path, reference):
    out = tmp_path / "store"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(JOB), *GRID, "--out", str(out), "--local"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            if (out / "manifest.json").is_file() and len(Manifest.load(out).shards) >= 3:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "job finished before it could be killed; enlarge the grid"
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    # a shard renamed into place just before the kill but not yet listed is adopted (checksummed) by the
    # store's recovery, as the rerun would do; count it as finished
    recover(out)
    partial = len(Manifest.load(out).shards)
    assert 3 <= partial < 12
    # a corrupted finished shard must be detected by its checksum and redone
    victim = out / Manifest.load(out).shards[0].name
    victim.write_bytes(victim.read_bytes()[:-100] + b"\0" * 100)
    job = _job()
    cfg = job.config_from_args(job.build_parser().parse_args([*GRID, "--out", str(out)]))
    res = job.run(cfg)  # the rerun goes through Ray
    assert res["shards"] == 12 - partial + 1
    got = _contents(out)
    assert got.keys() == reference.keys()
    for k, (z, pos, pdf) in reference.items():
        assert np.array_equal(got[k][0], z) and np.array_equal(got[k][1], pos) and np.array_equal(got[k][2], pdf)
    assert not list(out.glob("*.tmp.*"))
