"""Benchmark the HTTP sampling service on loopback: latency p50/p95/p99 and throughput at several
client concurrencies with dynamic batching on (max_batch_size=16) and off (1), measured side by side
in one run on one sampler replica (cells interleaved), with the mean batch size each cell saw, then the sampler's
replica count over time while autoscaling (short delays) goes 1 -> 2 under load and back to 1 when idle. Bounded:
every cell stops after --duration seconds or --max-requests requests; the whole run stops by itself.

    nice -n 10 python benchmarks/bench_serve.py                       # trains a tiny model for a few steps
    python benchmarks/bench_serve.py --checkpoint runs/x/model.pt --n-samples 4 --steps 100
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import socket
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("RAY_raylet_start_wait_time_s", "180")


def tiny_checkpoint(folder: Path, steps: int) -> Path:
    """A preset('tiny') model trained `steps` steps on rock-salt clusters simulated here (no data needed)."""
    import math

    import torch
    from torch_geometric.data import Data

    from pdfusion.config import DataConfig, PDFConfig, preset
    from pdfusion.pdf import simulate_pdf
    from pdfusion.training.trainer import Trainer

    pdf = PDFConfig(normalize=False)
    rng = np.random.default_rng(0)
    data = []
    for i in range(8):
        radius, a, metal = rng.uniform(2.6, 3.4), 4.2, (22, 30)[i % 2]
        n = int(math.ceil(2 * radius / a)) + 2
        idx = np.stack(np.meshgrid(*[np.arange(-n, n + 1)] * 3, indexing="ij"), -1).reshape(-1, 3)
        pos = idx * a / 2 - rng.uniform(-0.5, 0.5, 3)
        keep = np.linalg.norm(pos, axis=1) <= radius
        z, p = torch.tensor(np.where(idx.sum(1) % 2 == 0, metal, 8)[keep]), torch.tensor(pos[keep] - pos[keep].mean(0))
        g = simulate_pdf(p[None], z[None], torch.ones(1, len(z), dtype=torch.bool), pdf)[0]
        data.append(Data(pos=p.float(), z=z, x=torch.zeros(len(z), 7), y=g.float()[None], metal=torch.tensor([metal]),
                         num_nodes=len(z)))
    base = preset("tiny")
    cfg = dataclasses.replace(base, model=dataclasses.replace(base.model, max_atoms=64), data=DataConfig(batch_size=4),
                              pdf=pdf)
    trainer = Trainer(cfg)
    trainer.fit(data, progress=True, max_steps=steps)
    path = folder / "bench_tiny.pt"
    trainer.save_checkpoint(path, extra={"defaults": {"guidance": 1.0, "steps": 4}, "name": "bench-tiny",
                                         "version": "1"})
    return path


def sampler_only(ckpt: Path, n_samples: int, n_atoms: int, steps: int, batch: int,
                 rounds: int = 4) -> tuple[float, float]:
    """ms per request of `SamplerService.run_batch` in-process (no HTTP, no Ray): `batch` requests one
    call at a time vs all in one call, alternated `rounds` times. Shows the sampler's own batching gain."""
    from pdfusion.config import ServeConfig, ServeLimits
    from pdfusion.serving.service import SampleJob, SamplerService

    svc = SamplerService(ServeConfig(model=str(ckpt), limits=ServeLimits(max_samples=max(8, n_samples)),
                                     default_samples=n_samples))
    grid = np.asarray(svc.bundle.r_grid)
    g = (np.sin(2 * grid) * np.exp(-grid / 8)).astype(np.float32)
    jobs = [SampleJob(pdf=g, metal_z=22, n_samples=n_samples, guidance=1.0, steps=steps, n_atoms=n_atoms)
            for _ in range(batch)]
    svc.run_batch(jobs[:2])  # warm-up
    one, many = 0.0, 0.0
    for _ in range(rounds):
        t0 = time.perf_counter()
        for j in jobs:
            svc.run_batch([j])
        t1 = time.perf_counter()
        svc.run_batch(jobs)
        t2 = time.perf_counter()
        one, many = one + t1 - t0, many + t2 - t1
    return one / rounds / batch * 1e3, many / rounds / batch * 1e3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def load(url: str, payload: dict, concurrency: int, duration: float, max_requests: int) -> dict:
    """`concurrency` closed-loop clients; stops at `duration` s or `max_requests` sent. The body is
    encoded once so the client's own JSON work does not compete with the server for the CPU."""
    import json

    import httpx

    body = json.dumps(payload).encode()
    headers = {"content-type": "application/json"}
    latencies: list[float] = []
    errors = 0
    sent = 0
    stop_at = time.perf_counter() + duration

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal sent, errors
        while time.perf_counter() < stop_at and sent < max_requests:
            sent += 1
            t0 = time.perf_counter()
            resp = await http.post(url, content=body, headers=headers)
            if resp.status_code == 200:
                latencies.append(time.perf_counter() - t0)
            else:
                errors += 1

    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(timeout=120, limits=limits) as http:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    lat = np.asarray(latencies) * 1e3
    pct = np.percentile(lat, [50, 95, 99]) if lat.size else [float("nan")] * 3
    return {"n": int(lat.size), "errors": errors, "p50": pct[0], "p95": pct[1], "p99": pct[2], "rps": lat.size / wall}


def batch_stats(app: str) -> dict[str, int]:
    """The (single) sampler replica's counters: batches, jobs, sampler loops, largest batch."""
    from ray import serve

    from pdfusion.serving.deployments import SAMPLER_NAME

    return serve.get_deployment_handle(SAMPLER_NAME, app_name=app).stats.remote().result()


def replicas(app: str, deployment: str) -> tuple[int, str]:
    """(running replicas, all replica states) of one deployment."""
    from ray import serve

    states = dict(serve.status().applications[app].deployments[deployment].replica_states)
    return int(states.get("RUNNING", 0)), " ".join(f"{k}:{v}" for k, v in sorted(states.items()))


async def autoscale_timeline(url: str, payload: dict, app: str, load_s: float, idle_s: float, clients: int) -> list:
    """Replica count every 0.5 s: `clients` closed-loop clients for `load_s`, then idle up to `idle_s`
    (ends early once back to one replica after having reached two)."""
    from pdfusion.serving.deployments import SAMPLER_NAME

    timeline: list[tuple[float, int, str, str]] = []
    t0 = time.perf_counter()
    task = asyncio.create_task(load(url, payload, clients, load_s, 10**9))
    peak = 1
    while True:
        await asyncio.sleep(0.5)
        now = time.perf_counter() - t0
        n, states = replicas(app, SAMPLER_NAME)
        peak = max(peak, n)
        phase = "load" if not task.done() else "idle"
        timeline.append((now, n, phase, states))
        if task.done() and (now > load_s + idle_s or (peak >= 2 and n == 1)):
            break
    await task
    return timeline


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", help="model checkpoint (default: train a tiny model for --train-steps)")
    ap.add_argument("--train-steps", type=int, default=4)
    ap.add_argument("--concurrency", default="1,4,16")
    ap.add_argument("--duration", type=float, default=12.0, help="seconds per (mode, concurrency) cell")
    ap.add_argument("--max-requests", type=int, default=400, help="requests per cell at most")
    ap.add_argument("--n-samples", type=int, default=2)
    ap.add_argument("--n-atoms", type=int, default=12)
    ap.add_argument("--steps", type=int, default=50, help="sampler steps per request (the demo samples with 50)")
    ap.add_argument("--batch-wait", type=float, default=0.05, help="batch_wait_timeout_s of the batched service")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--autoscale-load-s", type=float, default=60.0,
                    help="long enough for a second replica to start on a loaded machine")
    ap.add_argument("--autoscale-idle-s", type=float, default=30.0)
    ap.add_argument("--cpus", type=int, default=4, help="logical CPUs for the local Ray (replicas take 1 each)")
    ap.add_argument("--address", help="connect to a running Ray cluster (e.g. one from `ray start --head`) instead "
                                      "of starting one; it needs >= 3 CPUs")
    args = ap.parse_args()

    import ray
    import torch
    from ray import serve

    from pdfusion.config import ServeConfig, ServeLimits
    from pdfusion.serving.deployments import build_app

    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="bench_serve_"))
    ckpt = Path(args.checkpoint) if args.checkpoint else tiny_checkpoint(tmp, args.train_steps)
    solo_ms, batch_ms = sampler_only(ckpt, args.n_samples, args.n_atoms, args.steps, args.batch_size)
    for attempt in range(3):  # Ray's fixed 30 s node-registration wait can expire on a saturated machine
        try:
            if args.address:
                ray.init(address=args.address, log_to_driver=False)
            else:
                # log_to_driver off: this process is also the load generator; printing every replica's
                # log lines here would compete with the server for the same 2 cores
                ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
            break
        except Exception as exc:  # noqa: BLE001 - only the startup timeout is retried
            ray.shutdown()
            if "timed out during startup" not in str(exc) or attempt == 2:
                raise
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    limits = ServeLimits(max_samples=max(8, args.n_samples), request_timeout_s=300)
    common = dict(model=str(ckpt.resolve()), limits=limits, default_samples=args.n_samples, torch_threads=1,
                  num_cpus=1, batch_wait_timeout_s=args.batch_wait)

    rows = []
    try:
        import httpx

        modes = (("batched", args.batch_size), ("unbatched", 1))
        for mode, bs in modes:
            cfg = ServeConfig(**common, min_replicas=1, max_replicas=1, max_batch_size=bs,
                              max_ongoing_requests=max(32, bs), max_batch_candidates=max(256, args.n_samples))
            serve.run(build_app(cfg), name=mode, route_prefix=f"/{mode}")
        info = httpx.get(f"http://127.0.0.1:{port}/batched/v1/model", timeout=60).json()
        grid = np.linspace(info["r_min"], info["r_max"], info["n_r"])
        payload = {"r": grid.round(6).tolist(), "g": (np.sin(2 * grid) * np.exp(-grid / 8)).round(6).tolist(),
                   "metal": "Ti", "n_samples": args.n_samples, "n_atoms": args.n_atoms, "steps": args.steps}
        for mode, _ in modes:
            asyncio.run(load(f"http://127.0.0.1:{port}/{mode}/v1/sample", payload, 2, 3.0, 20))  # warm-up
        # Interleaved (batched then unbatched at each concurrency) so drifting load from other work on
        # the machine hits both modes alike.
        for c in (int(x) for x in args.concurrency.split(",")):
            for mode, _ in modes:
                before = batch_stats(mode)
                res = asyncio.run(load(f"http://127.0.0.1:{port}/{mode}/v1/sample", payload, c, args.duration,
                                       args.max_requests))
                after = batch_stats(mode)
                res["batch"] = (after["jobs"] - before["jobs"]) / max(1, after["batches"] - before["batches"])
                rows.append((mode, c, res))
                print(f"  {mode:9s} c={c:<3d} n={res['n']:<4d} p50={res['p50']:.0f} ms  rps={res['rps']:.1f} "
                      f"mean batch {res['batch']:.1f}", flush=True)
        for mode, _ in modes:
            serve.delete(mode)

        print(f"\nmodel {info['name']} v{info['version']}, n_samples={args.n_samples}, n_atoms={args.n_atoms}, "
              f"steps={args.steps}, batch_wait_timeout_s={args.batch_wait}, 1 sampler replica, torch threads 1, "
              f"{os.cpu_count()} cores visible, load average {os.getloadavg()[0]:.1f}")
        print(f"{'mode':10s} {'clients':>7s} {'requests':>8s} {'errors':>6s} {'p50 ms':>8s} {'p95 ms':>8s} "
              f"{'p99 ms':>8s} {'req/s':>7s} {'batch':>6s}")
        for mode, c, r in rows:
            print(f"{mode:10s} {c:7d} {r['n']:8d} {r['errors']:6d} {r['p50']:8.1f} {r['p95']:8.1f} {r['p99']:8.1f} "
                  f"{r['rps']:7.2f} {r['batch']:6.1f}")
        by = {(m, c): r for m, c, r in rows}
        for c in sorted({c for _, c, _ in rows}):
            b, u = by[("batched", c)], by[("unbatched", c)]
            print(f"throughput ratio batched/unbatched at {c:2d} clients: {b['rps'] / max(u['rps'], 1e-9):.2f}x")
        print(f"sampler alone (in-process, no HTTP): {solo_ms:.1f} ms/request one at a time, {batch_ms:.1f} ms/request "
              f"in batches of {args.batch_size}: {solo_ms / batch_ms:.2f}x")

        cfg = ServeConfig(**common, min_replicas=1, max_replicas=2, max_batch_size=args.batch_size,
                          max_ongoing_requests=32, target_ongoing_requests=2, upscale_delay_s=1.0,
                          downscale_delay_s=4.0, look_back_period_s=2.0)
        serve.run(build_app(cfg), name="autoscale", route_prefix="/autoscale")
        timeline = asyncio.run(autoscale_timeline(f"http://127.0.0.1:{port}/autoscale/v1/sample", payload,
                                                  "autoscale", args.autoscale_load_s, args.autoscale_idle_s, 16))
        print("\nautoscaling (16 clients, then idle): t_s running phase replica-states")
        last = None
        for t, n, phase, states in timeline:
            if (states, phase) != last:
                print(f"  {t:6.1f} {n:3d} {phase:4s} {states}")
                last = (states, phase)
        counts = [n for _, n, _, _ in timeline]
        went_up = max(counts) >= 2
        came_down = went_up and counts[-1] == 1 and counts.index(max(counts)) < len(counts) - 1
        print(f"replicas went 1 -> {max(counts)}: {went_up}; back to 1 after load: {came_down}")
    finally:
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()
