"""Where does a trained denoiser fail? ε-loss and the error of its clean-structure estimate x̂0, by noise level.

For a structure the model was trained on (or any seed-oxides .h5 file), noise it to fixed t, predict ε with
the EMA model (conditioned on the structure's own PDF), and report ‖x̂0 − x0‖ per atom in Å next to the
noise's own size. A denoiser that can sample fitting structures must make x̂0 errors far below the ~0.1 Å
peak width of the seed PDFs at small t, and well below a bond length (~2 Å) at mid t.

    python jobs/diag_denoiser.py runs/exp_overfit_one_v2/checkpoint.pt \
        --file ../shared/data/seed-oxides/graphs_h5/graph_CdI2_SrO2_r5.h5
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch


def x0_errors(trainer, data, ts=(1, 5, 10, 25, 50, 100, 200, 300, 400, 500, 1000), copies: int = 32,
              seed: int = 0) -> list[dict]:
    """Per noise level t: mean noise per atom (Å), ε-loss, and mean ‖x̂0 − x0‖ per atom (Å), EMA model."""
    from pdfusion.training.trainer import Trainer

    d, model, scale = trainer.diffusion, trainer.ema.eval(), trainer.cfg.model.position_scale
    batch = Trainer.collate([data] * copies)
    x0, h0 = d.encode(batch)
    mask = batch.mask.bool()
    gen = torch.Generator().manual_seed(seed)
    keep = torch.ones(copies, dtype=torch.bool)
    rows = []
    with torch.no_grad():
        for t in sorted({int(t) for t in ts if int(t) <= d.T} | {d.T}):
            tt = torch.full((copies,), t)
            ex, eh = d.position_noise(mask, gen), d.type_noise(mask, gen)
            xt, ht = d.q_sample(x0, tt, ex), d.q_sample(h0, tt, eh)
            px, _ = model(xt, ht, mask, tt.float() / d.T, batch.pdf, batch.metal, keep)
            loss = float(((px - ex) ** 2).sum() / (mask.sum() * 3))
            err = float((d.predict_x0(xt, tt, px) - x0).norm(dim=-1)[mask].mean() * scale)
            sigma = float(d.schedule.gather("sqrt_one_minus_alphas_cumprod", tt[:1], x0[:1]).flatten()[0])
            noise = float((ex * sigma).norm(dim=-1)[mask].mean() * scale)
            rows.append({"t": t, "sigma": sigma, "noise_A": noise, "loss_x": loss, "x0_error_A": err})
    return rows


def print_table(rows: list[dict]) -> None:
    print(f"{'t':>5} {'noise/atom (A)':>15} {'loss_x':>8} {'x0 error/atom (A)':>18}")
    for r in rows:
        print(f"{r['t']:5d} {r['noise_A']:15.3f} {r['loss_x']:8.4f} {r['x0_error_A']:18.3f}   (sigma_t {r['sigma']:.4f})")


def main() -> None:
    from exp_overfit_one import DEFAULT_FILE, load_one
    from pdfusion.training.trainer import Trainer

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--file", default=str(DEFAULT_FILE))
    ap.add_argument("--copies", type=int, default=32, help="noise draws per t")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    data, _ = load_one(Path(args.file))
    print_table(x0_errors(Trainer.from_checkpoint(args.checkpoint), data, copies=args.copies, seed=args.seed))


if __name__ == "__main__":
    main()
