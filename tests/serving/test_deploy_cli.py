"""`serve deploy serve/config.yaml` against a real `ray start --head`, through the CLIs a user types:
the application reaches RUNNING in `serve status` and answers HTTP with the configured model.

The head gets its own --temp-dir and ports, so no other Ray user on the machine can join it (a plain
`ray.init()` looks for /tmp/ray/ray_current_cluster), and it is torn down by killing its own
processes: `ray stop` would stop every Ray process on the machine."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import pytest
import yaml

from pdfusion_testdata import start_head, stop_head

pytestmark = [pytest.mark.ray, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


def _ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _run(args: list[str], env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.skipif(shutil.which("ray") is None or shutil.which("serve") is None, reason="ray/serve CLI not installed")
def test_serve_deploy_to_ray_start_head(tiny_checkpoint, tmp_path):
    gcs, dash, agent, agent_grpc, metrics, runtime_env, client, nm, om, http = _ports(10)
    temp_dir = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths live under it
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    config = yaml.safe_load((ROOT / "serve" / "config.yaml").read_text())
    config["http_options"]["port"] = http
    args = config["applications"][0]["args"]
    args.update(model=str(tiny_checkpoint), num_cpus=0.5, max_replicas=1, default_samples=2, refine_steps=2)
    args["limits"].update(max_samples=3, max_atoms=24, max_steps=4)
    cfg_path = tmp_path / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(config))
    address = f"http://127.0.0.1:{dash}"
    try:
        cmd = ["ray", "start", "--head", f"--temp-dir={temp_dir}", "--num-cpus=2", f"--port={gcs}",
               f"--dashboard-port={dash}", "--dashboard-host=127.0.0.1", f"--dashboard-agent-listen-port={agent}",
               f"--dashboard-agent-grpc-port={agent_grpc}", f"--metrics-export-port={metrics}",
               f"--runtime-env-agent-port={runtime_env}", f"--ray-client-server-port={client}",
               f"--node-manager-port={nm}", f"--object-manager-port={om}", "--disable-usage-stats"]
        start = start_head(cmd, temp_dir, env, cwd=ROOT)
        assert start.returncode == 0, start.stderr[-2000:]
        deploy = _run(["serve", "deploy", "-a", address, str(cfg_path)], env)
        assert deploy.returncode == 0, deploy.stderr[-2000:]
        deadline = time.monotonic() + 300
        while True:
            status = _run(["serve", "status", "-a", address], env, timeout=120)
            apps = (yaml.safe_load(status.stdout) or {}).get("applications") or {}
            state = (apps.get("pdfusion") or {}).get("status")
            if state == "RUNNING":
                break
            assert state not in ("DEPLOY_FAILED", "UNHEALTHY"), status.stdout
            assert time.monotonic() < deadline, f"not RUNNING after 300 s:\n{status.stdout}"
            time.sleep(3)
        deps = apps["pdfusion"]["deployments"]
        assert deps["PDFusionSampler"]["replica_states"] == {"RUNNING": 1}
        base = f"http://127.0.0.1:{http}"
        assert httpx.get(base + "/v1/health", timeout=60).json()["model"] == {"name": "tiny", "version": "7"}
        info = httpx.get(base + "/v1/model", timeout=60).json()
        r = [info["r_min"] + i * info["r_step"] for i in range(info["n_r"])]
        resp = httpx.post(base + "/v1/sample", timeout=120,
                          json={"r": r, "g": [1.0 / (1 + x) for x in r], "metal": "Zn", "n_atoms": 6, "steps": 2})
        assert resp.status_code == 200, resp.text
        assert [c["n_atoms"] for c in resp.json()["candidates"]] == [6, 6]
        bad = httpx.post(base + "/v1/sample", timeout=60, json={"r": r, "g": r, "metal": "Zn", "steps": 99})
        assert bad.status_code == 422 and bad.json()["error"]["field"] == "steps"
    finally:
        _run(["serve", "shutdown", "-y", "-a", address], env, timeout=120)
        stop_head(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
