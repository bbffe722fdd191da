"""`jobs/train_egnn.py` submitted with the Ray Jobs SDK to a real `ray start --head` cluster.

The head runs in its own temp dir on free ports. Teardown kills exactly the processes of this head (found
by its unique temp dir), never `ray stop`, which would stop every Ray instance on a shared machine.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pdfusion_testdata import start_head, stop_head

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def _write_dataset(folder: Path) -> Path:
    """12 rock-salt spheres of 4 metals in seed-oxides format, PDFs simulated by pdfusion."""
    from pdfusion.config import PDFConfig
    from pdfusion.pdf.debye import simulate_pdf
    from pdfusion.structures.io import SeedRecord, write_seed_h5
    from pdfusion.structures.particle import Particle

    rng = np.random.default_rng(1)
    grid = np.stack(np.meshgrid(*[np.arange(-3, 4)] * 3, indexing="ij"), -1).reshape(-1, 3)
    for sym, z in {"Ti": 22, "Mn": 25, "Ni": 28, "Zn": 30}.items():
        for radius in (3.0, 3.6, 4.2):
            pts = grid[np.linalg.norm(grid * 2.1, axis=1) <= radius]
            numbers = np.where(pts.sum(1) % 2 == 0, z, 8)
            pos = pts * 2.1 + rng.normal(0, 0.05, size=pts.shape)
            pos -= pos.mean(0)
            g = simulate_pdf(torch.as_tensor(pos)[None], torch.as_tensor(numbers)[None], None, PDFConfig())[0]
            na = np.zeros((len(pos), 7))
            na[:, 0], na[:, 4:7] = numbers, pos
            rec = SeedRecord(Particle(numbers, pos), na, np.round(np.arange(3000) * 0.01, 2), g.numpy(),
                             np.zeros((2, 0), np.int64), np.zeros(0))
            write_seed_h5(rec, folder / f"graph_NaCl_{sym}O_r{radius}.h5")
    return folder


def test_train_job_submitted_to_ray_head(tmp_path):
    from mlflow import MlflowClient
    from ray.job_submission import JobStatus, JobSubmissionClient

    data = _write_dataset(tmp_path / "data")
    temp_dir = tempfile.mkdtemp(prefix="pdf_rt_", dir="/tmp")  # short: Ray's unix socket paths are limited
    gcs, dash, agent_http, agent_grpc, metrics, rt_agent, client_port = _free_ports(7)
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1"}
    env.pop("RAY_ADDRESS", None)
    start = [
        "ray", "start", "--head", f"--port={gcs}", "--num-cpus=2", "--include-dashboard=true",
        f"--dashboard-port={dash}", "--dashboard-host=127.0.0.1", f"--temp-dir={temp_dir}",
        f"--dashboard-agent-listen-port={agent_http}", f"--dashboard-agent-grpc-port={agent_grpc}",
        f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={rt_agent}",
        f"--ray-client-server-port={client_port}", "--disable-usage-stats",
    ]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    try:
        proc = start_head(start, temp_dir, env, cwd=tmp_path)
        assert proc.returncode == 0, f"ray start failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
        client = None
        deadline = time.monotonic() + 120
        while client is None:
            try:
                client = JobSubmissionClient(f"http://127.0.0.1:{dash}")
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(2)
        entrypoint = (
            f"{sys.executable} jobs/train_egnn.py --preset tiny --data {data} --max-steps 3 --batch-size 2 "
            f"--set val_pdfs=1 --set val_samples=2 --set val_steps=2 --set data.split_by=metal "
            f"--name jobtest --storage-path {tmp_path / 'ray_results'} --register-as pdfusion-egnn-jobtest"
        )
        job_id = client.submit_job(
            entrypoint=entrypoint,
            runtime_env={
                "working_dir": str(ROOT),
                "excludes": ["mlartifacts", "ray_results", ".git", "runs", "outputs", "data_out"],
                "env_vars": {"MLFLOW_TRACKING_URI": uri, "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1",
                             "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"},
            },
        )
        deadline = time.monotonic() + 600
        status = client.get_job_status(job_id)
        while status not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
            assert time.monotonic() < deadline, f"job {job_id} still {status} after 600 s"
            time.sleep(2)
            status = client.get_job_status(job_id)
        logs = client.get_job_logs(job_id)
        assert status == JobStatus.SUCCEEDED, logs[-4000:]
        line = next(ln for ln in logs.splitlines() if ln.startswith("PDFUSION_TRAINING_RESULT "))
        summary = json.loads(line.split(" ", 1)[1])
        assert summary["final_step"] == 3 and summary["model_version"] == 1
        run = MlflowClient(uri).get_run(summary["mlflow_run_id"])
        assert run.info.status == "FINISHED" and "val_rwp_best_median" in run.data.metrics
        assert MlflowClient(uri).get_model_version("pdfusion-egnn-jobtest", "1").run_id == run.info.run_id
    finally:
        stop_head(temp_dir, timeout=10)
        shutil.rmtree(temp_dir, ignore_errors=True)
