"""Helpers shared by the serving tests: rock-salt clusters and their PDFs (built by the test itself),
cheap served limits, a free port, waiting for HTTP."""

from __future__ import annotations

import math
import socket
import time
from pathlib import Path

import numpy as np
import torch

from pdfusion.config import PDFConfig, ServeConfig

MAX_ATOMS = 40


def rocksalt_cluster(radius: float, metal: int = 22, a: float = 4.2, shift=(0.0, 0.0, 0.0)):
    """Rock-salt lattice sites (spacing a/2; metal where i+j+k is even) within `radius` of `shift`."""
    n = int(math.ceil(2 * radius / a)) + 2
    idx = np.stack(np.meshgrid(*[np.arange(-n, n + 1)] * 3, indexing="ij"), -1).reshape(-1, 3)
    pos = idx * a / 2 - np.asarray(shift)
    keep = np.linalg.norm(pos, axis=1) <= radius
    return np.where(idx.sum(1) % 2 == 0, metal, 8)[keep], pos[keep] - pos[keep].mean(0)


# Unnormalised PDFs: a model trained for 4 steps samples scattered atoms whose G(r) is ~0, which the
# simulator refuses to scale to max 1; the service's normalisation path is unit-tested separately.
PDF = PDFConfig(normalize=False)


def simulate(numbers: np.ndarray, pos: np.ndarray, cfg: PDFConfig = PDF) -> np.ndarray:
    from pdfusion.pdf import simulate_pdf

    g = simulate_pdf(torch.tensor(pos)[None], torch.tensor(numbers)[None],
                     torch.ones(1, len(numbers), dtype=torch.bool), cfg)
    return g[0].numpy()


def make_data(n: int, seed: int = 0):
    from torch_geometric.data import Data

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        metal = [22, 30][i % 2]
        numbers, pos = rocksalt_cluster(rng.uniform(2.6, 3.4), metal, shift=rng.uniform(-0.5, 0.5, 3))
        g = simulate(numbers, pos)
        out.append(Data(pos=torch.tensor(pos, dtype=torch.float32), z=torch.tensor(numbers),
                        x=torch.zeros(len(numbers), 7), y=torch.tensor(g, dtype=torch.float32).reshape(1, -1),
                        metal=torch.tensor([metal]), num_nodes=len(numbers)))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_cfg(checkpoint: Path, **over) -> ServeConfig:
    """Limits that keep sampling cheap on 2 shared cores: few samples, steps and atoms."""
    from pdfusion.config import ServeLimits

    # request_timeout_s: generous, so a loaded CI machine cannot turn a correct answer into a 504 (a solve that
    # takes 2 s in-process once hit 60 s there, behind a fresh replica's imports); timeouts have their own test
    limits = dict(max_samples=3, max_atoms=24, max_steps=4, max_body_bytes=1_000_000, request_timeout_s=300.0)
    limits.update(over.pop("limits", {}))
    base = dict(model=str(checkpoint), default_samples=2, min_replicas=1, max_replicas=1, num_cpus=0.5,
                max_batch_size=8, max_ongoing_requests=16, batch_wait_timeout_s=0.02, refine_steps=2,
                limits=ServeLimits(**limits))
    base.update(over)
    return ServeConfig(**base)


def wait_http(url: str, timeout: float = 120.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer 200 within {timeout} s")
        time.sleep(0.25)


def start_ray_serve(port: int) -> None:
    """One Ray + Serve session (2 CPUs, no dashboard) with HTTP on 127.0.0.1:`port`. Ray's node
    registration wait is a fixed 30 s, which a saturated shared machine can exceed: retry."""
    import ray
    from ray import serve

    for attempt in range(4):
        try:
            ray.init(address="local", num_cpus=2, include_dashboard=False)
            break
        except Exception as exc:  # noqa: BLE001 - only Ray's startup timeout is retried
            ray.shutdown()
            if "timed out during startup" not in str(exc) or attempt == 3:
                raise
            time.sleep(5)
    serve.start(http_options={"host": "127.0.0.1", "port": port})


def stop_ray_serve() -> None:
    import ray
    from ray import serve

    if ray.is_initialized():
        serve.shutdown()
        ray.shutdown()


def deploy(cfg: ServeConfig, port: int, name: str) -> str:
    """Deploy the pdfusion app for `cfg` at /`name` on the running Serve; returns its base URL."""
    from ray import serve

    from pdfusion.serving.deployments import build_app

    serve.run(build_app(cfg), name=name, route_prefix=f"/{name}")
    base = f"http://127.0.0.1:{port}/{name}"
    wait_http(base + "/v1/health")
    return base
