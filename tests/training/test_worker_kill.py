"""Issue 22 (c): a Ray Train worker process killed (SIGKILL, by its PID) mid-epoch on a real `ray start` head
resumes from the last checkpoint and ends where an uninterrupted run ends -- nothing lost, nothing done twice.
(test_ray_train.py injects an in-process exception; here the worker's process dies.)

The head has its own temp dir and ports, and only its own processes are stopped afterwards (never `ray stop`,
which would stop every Ray instance on the machine)."""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]

sys.path.insert(0, str(Path(__file__).parent))
from test_ray_train import _assert_close, _load, reference_run, tiny_cfg, write_rocksalt_dataset  # noqa: E402

from pdfusion_testdata import head_processes, start_head, stop_head  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_workers(marker: str):
    out = []
    for p in head_processes(marker):
        try:
            if "RayTrainWorker" in " ".join(p.cmdline()):
                out.append(p)
        except Exception:  # noqa: BLE001 - the process may be gone
            pass
    return out


@pytest.fixture(scope="module")
def head():
    """`ray start --head` with its own temp dir and ports; yields the GCS address; stops only its processes."""

    tmp = Path(tempfile.mkdtemp(prefix="r22c_", dir="/tmp"))
    ports = {name: _free_port() for name in ("port", "metrics-export-port", "runtime-env-agent-port")}
    cmd = [shutil.which("ray") or "ray", "start", "--head", f"--temp-dir={tmp}", "--num-cpus=2",
           "--include-dashboard=false", "--disable-usage-stats", *[f"--{k}={v}" for k, v in ports.items()]]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    done = start_head(cmd, str(tmp), env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    try:
        yield f"127.0.0.1:{ports['port']}", str(tmp)
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        stop_head(str(tmp))
        shutil.rmtree(tmp, ignore_errors=True)


def test_killed_train_worker_resumes_from_last_checkpoint(head, tmp_path):
    import ray

    from pdfusion.training import ray_train

    address, marker = head
    data = write_rocksalt_dataset(tmp_path / "data")
    cfg = dataclasses.replace(tiny_cfg(data), epochs=4, checkpoint_every_steps=2)
    storage = tmp_path / "ray"
    ray.init(address=address, log_to_driver=False)
    killed: list[int] = []

    def killer() -> None:  # once checkpoints exist, kill the worker's process mid-epoch
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and not killed:
            # two checkpoints on disk: the first one has surely been reported (registered) by then
            if len([p for p in storage.rglob("checkpoint_*") if p.is_dir()]) >= 2:
                workers = _train_workers(marker)
                if workers:
                    killed.append(workers[0].pid)
                    os.kill(workers[0].pid, signal.SIGKILL)
                    return
            time.sleep(0.05)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    out = ray_train.run_training(cfg, name="killed", storage_path=str(storage), max_failures=2, mlflow=False,
                                 log_every_steps=1, final_artifacts=False)
    t.join(10)
    assert killed, "no Train worker process was found to kill"
    ckpts = sorted(p.name for p in storage.rglob("checkpoint_*") if p.is_dir())
    assert ckpts, "no checkpoint written"
    planned = out.final_step
    ref = reference_run(cfg, world=1, steps=planned)
    b = _load(out.checkpoint_path)
    # the resumed run ends exactly where an uninterrupted one does: no step lost, none applied twice
    _assert_close(b["model"], ref.module.state_dict(), atol=2e-6, rtol=1e-5)
    _assert_close(b["ema"], ref.ema.state_dict(), atol=2e-6, rtol=1e-5)
    assert b["step"] == planned == ref.step
    # the restarted worker group resumed from a checkpoint (not from step 0): the loop's start line says so
    import re

    time.sleep(2)  # worker stdout reaches the session's log files
    starts = []
    for f in Path(marker).rglob("worker-*.out"):
        for m in re.finditer(r"\[pdfusion\] rank 0/1: .*?(\d+) steps/epoch, (\d+) planned steps, resume step (\d+)",
                             f.read_text(errors="replace")):
            starts.append(tuple(int(x) for x in m.groups()))
    resumes = sorted(s[2] for s in starts)
    assert resumes[0] == 0 and len(resumes) >= 2, starts
    per_epoch = starts[0][0]
    resumed = resumes[1]
    assert 2 <= resumed < planned and resumed % cfg.checkpoint_every_steps == 0, starts
    print(f"killed Train worker pid {killed[0]}; starts (steps/epoch, planned, resume step): {starts}; "
          f"resumed at step {resumed} = epoch {resumed // per_epoch} + {resumed % per_epoch} steps; "
          f"checkpoints {ckpts}")
