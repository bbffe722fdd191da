"""What a raw R_wp means: a true seed particle with Gaussian noise of sigma Å on every coordinate, scored
against its own PDF, before and after the same refinement the experiments use.

The seed PDFs' peaks are ~0.09 Å wide (B_iso 0.3 Å²), so R_wp punishes small displacements hard: this
calibrates how close a generated candidate is to the right structure from its R_wp alone.

    python experiments/diag_rwp_sensitivity.py --file ../shared/data/seed-oxides/graphs_fixed_num_135/Spinel_AgAg2O4.h5
"""

from __future__ import annotations

import argparse

import numpy as np
import torch


def main(argv=None) -> None:
    from pdfusion.config import PDFConfig
    from pdfusion.inference.refine import refine
    from pdfusion.pdf import rwp
    from pdfusion.pdf.fitting import simulate_safe
    from pdfusion.structures.io import read_seed_h5

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--file", required=True, help="a seed-oxides .h5 file (its stored G(r) is the target)")
    ap.add_argument("--sigmas", type=float, nargs="+", default=[0.02, 0.05, 0.1, 0.2, 0.3])
    ap.add_argument("--copies", type=int, default=8)
    ap.add_argument("--refine-steps", type=int, default=150)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    rec = read_seed_h5(args.file)
    cfg = PDFConfig()  # the seed-oxides simulation parameters
    pos = torch.as_tensor(rec.particle.positions, dtype=torch.float64)
    pos = pos - pos.mean(0)
    z = torch.as_tensor(rec.particle.numbers, dtype=torch.long)[None].expand(args.copies, -1)
    mask = torch.ones(z.shape, dtype=torch.bool)
    target = torch.as_tensor(rec.pdf, dtype=torch.float64)
    gen = torch.Generator().manual_seed(args.seed)
    print(f"{args.file}: {len(rec.particle)} atoms, {args.copies} noisy copies per sigma")
    print("sigma/coord (A)  raw R_wp median  refined median")
    for s in args.sigmas:
        p = pos[None] + s * torch.randn(args.copies, *pos.shape, generator=gen, dtype=torch.float64)
        raw = rwp(simulate_safe(p, z, mask, cfg), target[None].expand(args.copies, -1))
        ref = refine(p.numpy(), z.numpy(), target, cfg, steps=args.refine_steps)
        print(f"{s:15.3f}  {float(raw.median()):15.3f}  {float(np.median(ref.rwp_after)):14.3f}")


if __name__ == "__main__":
    main()
