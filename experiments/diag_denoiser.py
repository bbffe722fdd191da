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

import numpy as np
import torch


def oracle_x0(y: np.ndarray, z: np.ndarray, template: np.ndarray, s: float, starts: int = 48, iters: int = 15,
              seed: int = 0) -> np.ndarray:
    """(Nearly) the ideal x̂0 for a model that has memorised one structure, given y = x_t/√ᾱ (Å, centred)
    with noise std s = σ_t/√ᾱ_t (Å): the posterior over the structure's orientations (rotations and
    reflections: the EGNN is E(3)-equivariant) and atom orderings within each element (`orientation_posterior`;
    element one-hots scaled by 1e3 forbid cross-element assignments and add nothing otherwise). Tight where
    the posterior is concentrated (low and mid t); at high t it averages over too few orientations, so its
    error there is an upper bound on the ideal one."""
    from diag_oracle_sampler import orientation_posterior

    onehot = (z[:, None] == np.unique(z)[None, :]) * 1e3
    return orientation_posterior(y, template, s, onehot, onehot, starts=starts, iters=iters, tol=1e-3, seed=seed)[0]


def x0_errors(trainer, data, ts=(1, 5, 10, 25, 50, 100, 200, 300, 400, 500, 1000), copies: int = 32,
              seed: int = 0, oracle: int = 0, uncond: bool = False) -> list[dict]:
    """Per noise level t: mean noise per atom (Å), ε-loss, and mean ‖x̂0 − x0‖ per atom (Å), EMA model;
    with `oracle` > 0, also the ideal denoiser's error (`oracle_x0`) on the first `oracle` noise draws;
    `uncond` drops the condition (the null embedding, γ = 0): how much the PDF tells the model. A
    self-conditioned model is scored after its second pass."""
    from pdfusion.training.trainer import Trainer

    d, model, scale = trainer.diffusion, trainer.ema.eval(), trainer.cfg.model.position_scale
    batch = Trainer.collate([data] * copies)
    x0, h0 = d.encode(batch)
    mask = batch.mask.bool()
    gen = torch.Generator().manual_seed(seed)
    keep = torch.full((copies,), not uncond, dtype=torch.bool)
    rows = []
    with torch.no_grad():
        for t in sorted({int(t) for t in ts if int(t) <= d.T} | {d.T}):
            tt = torch.full((copies,), t)
            ex, eh = d.position_noise(mask, gen), d.type_noise(mask, gen)
            xt, ht = d.q_sample(x0, tt, ex), d.q_sample(h0, tt, eh)
            extra = {}
            if d.model_cfg.self_condition:  # as in training: the model's own first estimate at the same t
                extra["self_cond"] = d.first_estimate(model, xt, ht, mask, tt, batch.pdf, batch.metal, keep)
            px, _ = model(xt, ht, mask, tt.float() / d.T, batch.pdf, batch.metal, keep, **extra)
            loss = float(((px - ex) ** 2).sum() / (mask.sum() * 3))
            err = float((d.predict_x0(xt, tt, px) - x0).norm(dim=-1)[mask].mean() * scale)
            sigma = float(d.schedule.gather("sqrt_one_minus_alphas_cumprod", tt[:1], x0[:1]).flatten()[0])
            noise = float((ex * sigma).norm(dim=-1)[mask].mean() * scale)
            row = {"t": t, "sigma": sigma, "noise_A": noise, "loss_x": loss, "x0_error_A": err}
            if oracle:
                abar = float(d.schedule.alphas_cumprod[t])
                tmpl = (x0[0][mask[0]] * scale).double().numpy()
                z = batch.z[0][mask[0]].numpy()
                errs = []
                for c in range(min(oracle, copies)):
                    y = (xt[c][mask[c]] * scale).double().numpy() / abar ** 0.5
                    est = oracle_x0(y, z, tmpl, sigma / abar ** 0.5 * scale, seed=c)
                    errs.append(np.linalg.norm(est - tmpl, axis=1).mean())
                row["oracle_x0_error_A"] = float(np.mean(errs))
            rows.append(row)
    return rows


def print_table(rows: list[dict]) -> None:
    oracle = "oracle_x0_error_A" in rows[0]
    print(f"{'t':>5} {'noise/atom (A)':>15} {'loss_x':>8} {'x0 error/atom (A)':>18}" + ("  ideal x0 error (A)" if oracle else ""))
    for r in rows:
        extra = f"  {r['oracle_x0_error_A']:18.3f}" if oracle else ""
        print(f"{r['t']:5d} {r['noise_A']:15.3f} {r['loss_x']:8.4f} {r['x0_error_A']:18.3f}{extra}   (sigma_t {r['sigma']:.4f})")


def main() -> None:
    from exp_overfit_one import DEFAULT_FILE, load_one
    from pdfusion.training.trainer import Trainer

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--file", default=str(DEFAULT_FILE))
    ap.add_argument("--copies", type=int, default=32, help="noise draws per t")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--oracle", type=int, default=0,
                    help="also compute the ideal (memorising) denoiser's x̂0 error on this many noise draws per t")
    ap.add_argument("--uncond", action="store_true", help="drop the PDF condition (γ = 0) to see how much it helps")
    args = ap.parse_args()
    torch.set_num_threads(1)
    data, _ = load_one(Path(args.file))
    print_table(x0_errors(Trainer.from_checkpoint(args.checkpoint), data, copies=args.copies, seed=args.seed,
                          oracle=args.oracle, uncond=args.uncond))


if __name__ == "__main__":
    main()
