"""Throughput of pdfusion's batched PDF simulator vs debyecalculator on the same seed structures (CPU), and the
time and peak memory of one 5,000-atom structure.

    python benchmarks/bench_pdf_throughput.py --n 256 --threads 1 --out results/pdf_throughput.json

Both codes get the same thread count; debyecalculator runs one structure per call (its API), ours one padded,
size-sorted batch per ``--batch-size`` structures. The passes are interleaved (ours, theirs, ours, ...) and the
best of ``--repeats`` is kept, because the machine is shared and its load changes from second to second. Peak
memory is the growth of the resident set of a fresh child process (sampled every 2 ms) over its level right
before the call, after imports and a warm-up call.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SEED = Path(os.environ.get("PDFUSION_SHARED", ROOT.parent / "shared")) / "data" / "seed-oxides" / "graphs_h5"
DTYPES = {"float32": torch.float32, "float64": torch.float64}


def _load(seed_dir: Path, n: int):
    from pdfusion.structures.io import read_seed_h5

    files = sorted(seed_dir.glob("*.h5"))
    if not files:
        raise SystemExit(f"no .h5 files in {seed_dir}")
    pick = np.sort(np.random.default_rng(0).choice(len(files), min(n, len(files)), replace=False))
    return [read_seed_h5(files[i]).particle for i in pick]


def _padded(parts, batch_size: int, dtype):
    order = np.argsort([len(p) for p in parts], kind="stable")
    out = []
    for k in range(0, len(order), batch_size):
        sel = [parts[i] for i in order[k:k + batch_size]]
        n = max(len(p) for p in sel)
        pos = torch.zeros(len(sel), n, 3, dtype=dtype)
        num = torch.zeros(len(sel), n, dtype=torch.long)
        mask = torch.zeros(len(sel), n, dtype=torch.bool)
        for b, p in enumerate(sel):
            pos[b, : len(p)], num[b, : len(p)], mask[b, : len(p)] = (torch.as_tensor(p.positions, dtype=dtype),
                                                                       torch.as_tensor(p.numbers), True)
        out.append((pos, num, mask))
    return out


def _ours_pass(parts, batch_size: int, dtype):
    """A callable that simulates every structure once (padded, size-sorted batches); warmed up."""
    from pdfusion.config import PDFConfig
    from pdfusion.pdf import simulate_pdf

    cfg = PDFConfig()
    batches = _padded(parts, batch_size, dtype)

    def run():
        with torch.no_grad():
            for pos, num, mask in batches:
                simulate_pdf(pos, num, mask, cfg)

    run()  # warm-up: caches grids, matrices and pair lists
    return run


def _dc_pass(parts, dtype, threads: int, pair_sum: str = "grid"):
    """A callable that runs debyecalculator's G(r) on every structure once (one call each: its API); warmed up."""
    from debyecalculator import DebyeCalculator
    from pymatgen.core import Element

    from pdfusion.config import PDFConfig

    cfg = PDFConfig()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dc = DebyeCalculator(qmin=cfg.qmin, qmax=cfg.qmax, qdamp=cfg.qdamp, rmin=cfg.rmin, rmax=cfg.rmax,
                             rstep=cfg.rstep, biso=cfg.biso, device="cpu", dtype=dtype, num_threads=threads,
                             pair_sum=pair_sum)
    inputs = [([Element.from_Z(int(z)).symbol for z in p.numbers], torch.as_tensor(p.positions)) for p in parts]

    def run():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for item in inputs:
                dc.gr(item)

    run() if len(inputs) <= 64 else dc.gr(inputs[0])
    return run


def _best_interleaved(runs: dict, repeats: int) -> dict:
    """Best wall time of each callable over ``repeats`` rounds, alternating them so that a burst of load on a
    shared machine hits all of them alike."""
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(repeats):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def big_cluster(n_target: int = 5000, a: float = 4.2):
    """A spherical rock-salt MgO cluster: the smallest sphere (centred on an atom) with >= ``n_target`` atoms."""
    m = int(np.ceil((n_target / (8 / a**3) * 3 / (4 * np.pi)) ** (1 / 3) / a)) + 2
    r = np.arange(-2 * m, 2 * m + 1)
    grid = np.stack(np.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3)
    pos = grid * (a / 2)
    dist = np.linalg.norm(pos, axis=1)
    radius = np.sort(dist)[n_target - 1]
    keep = dist <= radius + 1e-9
    numbers = np.where(grid[keep].sum(1) % 2 == 0, 12, 8)
    return pos[keep], numbers


def _rss_mib() -> float:
    """Current resident set size of this process (Linux /proc), MiB."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class _PeakRSS:
    """Samples the resident set every 2 ms in a thread (torch ops release the GIL) and keeps the maximum."""

    def __enter__(self):
        import threading

        self.base = self.peak = _rss_mib()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_mib())
            self._stop.wait(0.002)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_mib())


def _big_child(dtype_name: str, threads: int, grad: bool, queue) -> None:
    torch.set_num_threads(threads)
    from pdfusion.config import PDFConfig
    from pdfusion.pdf import simulate_pdf

    dtype = DTYPES[dtype_name]
    pos_np, z_np = big_cluster()
    pos = torch.as_tensor(pos_np, dtype=dtype)
    z = torch.as_tensor(z_np)
    cfg = PDFConfig()
    simulate_pdf(pos[:50], z[:50], cfg=cfg)  # warm-up (allocator, cached matrices)
    with _PeakRSS() as mem:
        t0 = time.perf_counter()
        if grad:
            p = pos.clone().requires_grad_(True)
            simulate_pdf(p, z, cfg=cfg).sum().backward()
            ok = bool(torch.isfinite(p.grad).all())
        else:
            with torch.no_grad():
                ok = bool(torch.isfinite(simulate_pdf(pos, z, cfg=cfg)).all())
        dt = time.perf_counter() - t0
    queue.put({"atoms": int(len(z)), "dtype": dtype_name, "grad": grad, "seconds": dt,
               "peak_rss_growth_mib": mem.peak - mem.base, "finite": ok,
               "peak_ru_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})


def _big(dtype_name: str, threads: int, grad: bool) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    proc = ctx.Process(target=_big_child, args=(dtype_name, threads, grad, q))
    proc.start()
    res = q.get()
    proc.join()
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed-dir", type=Path, default=DEFAULT_SEED)
    ap.add_argument("--n", type=int, default=256, help="seed structures timed")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3, help="best of this many interleaved timed passes")
    ap.add_argument("--skip-big", action="store_true", help="skip the 5,000-atom measurement")
    ap.add_argument("--out", type=Path, default=None, help="optional JSON file for the results")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    parts = _load(args.seed_dir, args.n)
    n = len(parts)
    print(f"{n} seed structures, {min(len(p) for p in parts)}..{max(len(p) for p in parts)} atoms "
          f"(median {int(np.median([len(p) for p in parts]))}), {args.threads} thread(s), best of {args.repeats}")
    res: dict = {"structures": n, "threads": args.threads, "batch_size": args.batch_size}
    runs = {}
    for name, dtype in DTYPES.items():
        runs[f"ours_{name}"] = _ours_pass(parts, args.batch_size, dtype)
        runs[f"dc_{name}"] = _dc_pass(parts, dtype, args.threads)
    best = _best_interleaved(runs, args.repeats)
    for name in DTYPES:
        t_us, t_dc = best[f"ours_{name}"], best[f"dc_{name}"]
        res[name] = {"ours_structures_per_s": n / t_us, "debyecalculator_structures_per_s": n / t_dc,
                     "ratio": t_dc / t_us}
        print(f"{name}: ours {n / t_us:8.1f} structures/s | debyecalculator {n / t_dc:8.1f} structures/s | "
              f"ratio {t_dc / t_us:.2f}x")
    print(f"ours float32 vs debyecalculator's default (float32, pair_sum='grid'): {res['float32']['ratio']:.2f}x")
    t_direct = _best_interleaved({"d": _dc_pass(parts, torch.float32, args.threads, "direct")}, 1)["d"]
    res["debyecalculator_direct_float32_structures_per_s"] = n / t_direct
    print(f"debyecalculator float32 pair_sum='direct' (its 1.0.x algorithm): {n / t_direct:.1f} structures/s -> "
          f"ours float32 is {res['float32']['ours_structures_per_s'] * t_direct / n:.2f}x faster")
    if not args.skip_big:
        res["big"] = []
        for dtype_name, grad in (("float32", False), ("float64", False), ("float32", True)):
            b = _big(dtype_name, args.threads, grad)
            res["big"].append(b)
            print(f"{b['atoms']} atoms, {dtype_name}, {'forward+backward' if grad else 'forward'}: "
                  f"{b['seconds']:.2f} s, peak RSS growth {b['peak_rss_growth_mib']:.0f} MiB, finite={b['finite']}")
    if args.out is not None:
        from pdfusion.io_utils import atomic_write

        atomic_write(args.out, json.dumps(res, indent=2))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
