"""Cost of the EGNN denoiser on the largest seed-oxides particles: batch of B × 511 atoms, fully connected
vs radius cutoff, forward(+backward). Each case runs in its own subprocess so peak memory (max RSS above the
post-setup baseline) is measured per case; the ratios are printed side by side.

    nice -n 10 python benchmarks/bench_egnn.py --batch 16 --atoms 511 --hidden 64 --layers 4 --cutoff 6.0

Measured (2026-11-21, 1 thread, shared 2-core box at load ~20, so compare CPU seconds, not wall):
    cutoff fwd+bwd                   edges 514528   cpu 12.99 s  peak  4925 MiB
    cutoff fwd+bwd, grad_checkpoint  edges 514528   cpu 19.96 s  peak  1455 MiB
    cutoff fwd                       edges 514528   cpu  6.51 s  peak   573 MiB
    full fwd (B=4, x4)               edges 4169760  cpu 51.70 s  peak  4607 MiB
    full fwd+bwd (B=1, x16)          edges 4169760  cpu 98.72 s  peak 39858 MiB
    grad_checkpoint: memory 0.30x, cpu time 1.54x of plain cutoff fwd+bwd
    full/cutoff: edges 8.1x, forward cpu 7.9x, fwd+bwd cpu 7.6x, fwd+bwd memory 8.1x

Fully connected forward+backward at 16 × 511 needs far more memory than a 24 GiB shared CPU box allows
(4.2 M directed edges per layer, each holding several hidden-width activations for backward), so the script
measures it at `--fc-batch` (and the forward at `--fc-fwd-batch`) particles and scales linearly in the batch
(edges, and memory, are linear in B).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def _particle(n: int, spacing: float = 2.1):
    """A rock-salt-like sphere of n atoms (seed-oxides density, the densest graph a cutoff sees)."""
    import torch

    side = int(round(n ** (1 / 3))) + 3
    grid = torch.stack(torch.meshgrid(*[torch.arange(side)] * 3, indexing="ij"), -1).reshape(-1, 3).float()
    grid = grid - grid.mean(0)
    cell = grid[grid.norm(dim=1).argsort()[:n]]
    z = torch.where(cell.sum(1).long() % 2 == 0, torch.tensor(22), torch.tensor(8))
    return cell * spacing, z


def run_case(args: argparse.Namespace) -> dict:
    import torch

    from pdfusion.config import ModelConfig
    from pdfusion.data.batching import DenseBatch
    from pdfusion.diffusion import GaussianDiffusion, PDFusionDenoiser, build_edges

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = ModelConfig(hidden=args.hidden, layers=args.layers, pdf_embed=64, cutoff=args.case_cutoff,
                      grad_checkpoint=args.case_ckpt)
    model = PDFusionDenoiser(cfg)
    diffusion = GaussianDiffusion(None, cfg, None)
    pos, z = _particle(args.atoms)
    b = args.case_batch
    mask = torch.ones(b, args.atoms, dtype=torch.bool)
    batch = DenseBatch(pos=pos.expand(b, -1, -1).clone(), z=z.expand(b, -1).clone(), mask=mask,
                       pdf=torch.randn(b, cfg.pdf_points), metal=torch.full((b,), 22), n_atoms=mask.sum(1))
    x, h = diffusion.encode(batch)
    t = torch.full((b,), 0.01)
    row, _ = build_edges(x, mask, None if cfg.cutoff is None else cfg.cutoff / cfg.position_scale)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times, cpu = [], []
    for _ in range(args.repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        if args.backward:
            ex, eh = model(x, h, mask, t, batch.pdf, batch.metal)
            (ex.square().mean() + eh.square().mean()).backward()
            model.zero_grad(set_to_none=True)
        else:
            with torch.no_grad():
                model(x, h, mask, t, batch.pdf, batch.metal)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"edges": int(row.numel()), "seconds": min(times), "cpu_seconds": min(cpu),
            "peak_mib_above_setup": (peak - base) / 1024}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--atoms", type=int, default=511)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--cutoff", type=float, default=6.0)
    p.add_argument("--fc-batch", type=int, default=1, help="batch for fully connected forward+backward")
    p.add_argument("--fc-fwd-batch", type=int, default=4, help="batch for fully connected forward")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--_case", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args._case:
        args.case_batch, cut, args.backward, args.case_ckpt = json.loads(args._case)
        args.case_cutoff = cut
        print(json.dumps(run_case(args)))
        return
    cases = [
        ("cutoff fwd+bwd", args.batch, args.cutoff, True, 1),
        ("cutoff fwd+bwd, grad_checkpoint", args.batch, args.cutoff, True, 1, True),
        ("cutoff fwd", args.batch, args.cutoff, False, 1),
        (f"full fwd (B={args.fc_fwd_batch}, x{args.batch / args.fc_fwd_batch:g})", args.fc_fwd_batch, None, False,
         args.batch / args.fc_fwd_batch),
        (f"full fwd+bwd (B={args.fc_batch}, x{args.batch / args.fc_batch:g})", args.fc_batch, None, True,
         args.batch / args.fc_batch),
    ]
    results = {}
    for name, b, cut, bwd, scale, *ckpt in cases:
        cmd = [sys.executable, __file__, "--atoms", str(args.atoms), "--hidden", str(args.hidden), "--layers",
               str(args.layers), "--repeats", str(args.repeats), "--threads", str(args.threads),
               "--_case", json.dumps([b, cut, bwd, bool(ckpt)])]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            print(f"{name}: failed (rc {out.returncode}): {out.stderr.strip().splitlines()[-1:]}")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        r = {k: v * scale for k, v in r.items()}  # edges, time and memory are linear in the batch
        results[name] = r
        print(f"{name:38s} edges {r['edges']:>10.0f}  wall {r['seconds']:7.2f} s  cpu {r['cpu_seconds']:7.2f} s  "
              f"peak {r['peak_mib_above_setup']:8.0f} MiB  (B={args.batch} equivalent)", flush=True)
    keys = list(results)
    if len(keys) == 5:
        cb, ck, cf, ff, fb = (results[k] for k in keys)
        print(f"grad_checkpoint: memory {ck['peak_mib_above_setup'] / cb['peak_mib_above_setup']:.2f}x, "
              f"cpu time {ck['cpu_seconds'] / cb['cpu_seconds']:.2f}x of plain cutoff fwd+bwd")
        print(f"ratios full/cutoff: edges {ff['edges'] / cf['edges']:.1f}x, "
              f"forward cpu time {ff['cpu_seconds'] / cf['cpu_seconds']:.1f}x, "
              f"fwd+bwd cpu time {fb['cpu_seconds'] / cb['cpu_seconds']:.1f}x, fwd+bwd memory "
              f"{fb['peak_mib_above_setup'] / cb['peak_mib_above_setup']:.1f}x")


if __name__ == "__main__":
    main()
