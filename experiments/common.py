"""What the experiment scripts share: the seed-oxides data folder, one seed particle as a training example,
the random-particle control, and the denoiser's x̂0 error by noise level (with the ideal denoiser's for
comparison). Used by exp_overfit_one, exp_pdf_guidance, exp_seed135, exp_seed_variable, diag_denoiser,
diag_oracle_sampler and ab_seed135, as `experiments.common` (see experiments/__init__.py). Heavy imports
(torch, scipy) happen inside the functions, so importing this module stays cheap.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[1].parent / "shared/data/seed-oxides"
DEFAULT_FILE = SHARED / "graphs_h5/graph_CdI2_SrO2_r5.h5"  # the overfit-one particle (31 atoms)


def load_one(path: Path):
    """One seed-oxides .h5 file as a training example (torch_geometric Data, positions centred) and its record."""
    import torch
    from torch_geometric.data import Data

    from pdfusion.structures.io import read_seed_h5

    rec = read_seed_h5(path)
    p = rec.particle
    pos = torch.tensor(p.positions - p.positions.mean(0), dtype=torch.float32)
    data = Data(pos=pos, z=torch.tensor(p.numbers), x=torch.tensor(rec.node_attributes, dtype=torch.float32),
                y=torch.tensor(rec.pdf, dtype=torch.float32).reshape(1, -1), metal=torch.tensor([p.metal]),
                num_nodes=len(p))
    return data, rec


def random_control(particle, target, pdf_cfg, k: int, steps: int, seed: int) -> dict[str, float]:
    """K random particles (true atoms, true radius) refined exactly like the model's candidates."""
    from pdfusion.evaluation.baselines import particle_radius, random_particle
    from pdfusion.inference.refine import refine

    rng = np.random.default_rng(seed)
    radius = particle_radius(particle.positions - particle.positions.mean(0))
    parts = [random_particle(particle.numbers, radius, rng) for _ in range(k)]
    res = refine(np.stack([p.positions for p in parts]), np.stack([p.numbers for p in parts]), target, pdf_cfg,
                 steps=steps)
    return {"best": float(res.rwp_after.min()), "median": float(np.median(res.rwp_after))}


def orientation_posterior(y: np.ndarray, x0: np.ndarray, s: float, fy: np.ndarray | None = None,
                          f0: np.ndarray | None = None, *, starts: int, iters: int, tol: float, seed: int = 0
                          ) -> tuple[np.ndarray, np.ndarray | None]:
    """Posterior mean of one template x0 (N,3) given its noisy copy y (N,3, centred) with noise std s, over
    orientations (rotations and reflections) and atom orderings: the local optima that multi-start ICP
    finds (one Hungarian assignment on positions + optional per-atom features fy/f0 per iteration),
    de-duplicated to `tol`, weighted by exp(−cost/2s²). Returns (mean positions, mean features or None)."""
    from scipy.optimize import linear_sum_assignment
    from scipy.spatial.distance import cdist

    from pdfusion.evaluation.metrics import _random_rotations, kabsch

    feat_cost = 0.0 if fy is None else cdist(fy, f0, "sqeuclidean")
    sols: list[tuple[float, np.ndarray, np.ndarray | None]] = []
    for r in (rot * sign for rot in _random_rotations(starts, seed) for sign in (1.0, -1.0)):
        for _ in range(iters):
            _, perm = linear_sum_assignment(cdist(y @ r, x0, "sqeuclidean") + feat_cost)
            r = kabsch(y, x0[perm], allow_reflection=True)
        _, perm = linear_sum_assignment(cdist(y @ r, x0, "sqeuclidean") + feat_cost)
        est = x0[perm] @ r.T  # the template placed in y's frame, atoms in y's order
        est_f = None if fy is None else f0[perm]
        cost = float(((y - est) ** 2).sum()) + (0.0 if fy is None else float(((fy - est_f) ** 2).sum()))
        if not any(np.abs(est - e).max() < tol for _, e, _ in sols):
            sols.append((cost, est, est_f))
    costs = np.array([c for c, _, _ in sols])
    w = np.exp(-(costs - costs.min()) / (2 * s * s))
    w /= w.sum()
    mean = sum(wi * e for wi, (_, e, _) in zip(w, sols, strict=True))
    mean_f = None if fy is None else sum(wi * f for wi, (_, _, f) in zip(w, sols, strict=True))
    return mean, mean_f


def oracle_x0(y: np.ndarray, z: np.ndarray, template: np.ndarray, s: float, starts: int = 48, iters: int = 15,
              seed: int = 0) -> np.ndarray:
    """(Nearly) the ideal x̂0 for a model that has memorised one structure, given y = x_t/√ᾱ (Å, centred)
    with noise std s = σ_t/√ᾱ_t (Å): the posterior over the structure's orientations (rotations and
    reflections: the EGNN is E(3)-equivariant) and atom orderings within each element (`orientation_posterior`;
    element one-hots scaled by 1e3 forbid cross-element assignments and add nothing otherwise). Tight where
    the posterior is concentrated (low and mid t); at high t it averages over too few orientations, so its
    error there is an upper bound on the ideal one."""
    onehot = (z[:, None] == np.unique(z)[None, :]) * 1e3
    return orientation_posterior(y, template, s, onehot, onehot, starts=starts, iters=iters, tol=1e-3, seed=seed)[0]


def x0_errors(trainer, data, ts=(1, 5, 10, 25, 50, 100, 200, 300, 400, 500, 1000), copies: int = 32,
              seed: int = 0, oracle: int = 0, uncond: bool = False) -> list[dict]:
    """Per noise level t: mean noise per atom (Å), ε-loss, and mean ‖x̂0 − x0‖ per atom (Å), EMA model;
    with `oracle` > 0, also the ideal denoiser's error (`oracle_x0`) on the first `oracle` noise draws;
    `uncond` drops the condition (the null embedding, γ = 0): how much the PDF tells the model. A
    self-conditioned model is scored after its second pass."""
    import torch

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
            ex, eh = d.training_noise(x0, batch, gen), d.type_noise(mask, gen)  # the training coupling
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
    print(f"{'t':>5} {'noise/atom (A)':>15} {'loss_x':>8} {'x0 error/atom (A)':>18}"
          + ("  ideal x0 error (A)" if oracle else ""))
    for r in rows:
        extra = f"  {r['oracle_x0_error_A']:18.3f}" if oracle else ""
        print(f"{r['t']:5d} {r['noise_A']:15.3f} {r['loss_x']:8.4f} {r['x0_error_A']:18.3f}{extra}"
              f"   (sigma_t {r['sigma']:.4f})")
