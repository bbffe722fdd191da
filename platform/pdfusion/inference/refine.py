"""Refine atom positions against a target G(r): small gradient steps on R_wp through the differentiable
Debye simulator, as a crystallographer would refine a proposal, with a short-distance penalty so atoms cannot
collapse onto each other. Works on padded batches of structures of any sizes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from pdfusion.config import PDFConfig
from pdfusion.diffusion.geometry import remove_mean
from pdfusion.diffusion.guards import NonFiniteError
from pdfusion.pdf import rwp
from pdfusion.pdf.fitting import MIN_DISTANCE, blur, min_pair_distance, pair_penalty, simulate_safe
from pdfusion.structures.particle import OXYGEN

# Coarse-to-fine defaults: a wide initial blur and a larger step beat plain Adam (docs/evaluation.md, "Refinement").
REFINE_LR = 0.05
REFINE_SMOOTH = 0.8  # Å, initial Gaussian blur of both G(r) curves (see `refine`)


@dataclass
class Refined:
    positions: np.ndarray  # (B, Nmax, 3) or (N, 3) like the input; zero centroid
    rwp_before: np.ndarray  # (B,)
    rwp_after: np.ndarray  # (B,)
    g_sim: np.ndarray  # (B, n_r) after refinement


def refine(
    positions: np.ndarray | torch.Tensor,
    numbers: np.ndarray | torch.Tensor,
    target_g: np.ndarray | torch.Tensor,
    pdf_cfg: PDFConfig,
    steps: int = 100,
    lr: float = REFINE_LR,
    mask: np.ndarray | torch.Tensor | None = None,
    min_distance: float = MIN_DISTANCE,
    penalty: float = 1.0,
    max_step: float = 0.1,
    smooth: float = REFINE_SMOOTH,
) -> Refined:
    """Gradient descent (Adam) on R_wp through the differentiable simulator, one or B structures at once.

    Positions (N,3) or (B,N,3) Å; the short-distance penalty keeps pairs apart beyond `min_distance`;
    every step is clipped to `max_step` Å per atom and the centroid is kept at zero. The best
    positions seen are returned (no pair closer than 0.9 x min_distance first, then lowest R_wp), so
    refinement never makes a physically sane fit worse.

    Coarse to fine (`smooth` > 0, Å): the seed PDFs' peaks are ~0.09 Å wide, so a candidate whose distances
    are off by more than that sees almost no gradient towards the right peak. Both G(r) curves are first
    blurred by the same Gaussian of width `smooth` (a linear map, so a perfect fit stays perfect), and the
    width shrinks linearly to zero over the first 70% of the steps; the learning rate then decays (cosine).
    Only unblurred R_wp decides which positions are kept."""
    single = torch.as_tensor(positions).ndim == 2
    pos = torch.as_tensor(np.asarray(positions) if not torch.is_tensor(positions) else positions).double()
    num = torch.as_tensor(np.asarray(numbers) if not torch.is_tensor(numbers) else numbers).long()
    if single:
        pos, num = pos[None], num[None]
    msk = torch.ones(num.shape, dtype=torch.bool) if mask is None else torch.as_tensor(mask).bool().reshape(num.shape)
    target = torch.as_tensor(np.asarray(target_g) if not torch.is_tensor(target_g) else target_g).double()
    target = target.reshape(-1, target.shape[-1]).expand(pos.shape[0], -1)
    if not torch.isfinite(pos[msk]).all():
        raise ValueError("refine: positions contain NaN or inf")
    if steps < 0:
        raise ValueError(f"refine: steps must be >= 0, got {steps}")
    pos = remove_mean(pos, msk)
    with torch.no_grad():
        g0 = simulate_safe(pos, num, msk, pdf_cfg)
        r0 = rwp(g0, target)
    best_pos, best_r, best_g = pos.clone(), r0.clone(), g0.clone()
    floor = 0.9 * min_distance
    best_ok = min_pair_distance(pos, msk) >= floor  # a distance-valid structure beats any invalid one
    x = pos.clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, steps)) if smooth > 0 else None
    dr = float(pdf_cfg.rstep)
    for step in range(steps):
        g = simulate_safe(x, num, msk, pdf_cfg)
        r = rwp(g, target)
        width = smooth * max(0.0, 1.0 - step / (0.7 * steps)) if smooth > 0 else 0.0
        fit = rwp(blur(g, width, dr), blur(target, width, dr)) if width > dr else r
        loss = (fit + penalty * pair_penalty(x, msk, min_distance)).sum()
        if not torch.isfinite(loss):
            raise NonFiniteError(f"refine step {step}: loss is {float(loss)}")
        with torch.no_grad():
            ok = min_pair_distance(x, msk) >= floor
            better = ok & (~best_ok | (r < best_r))
            best_ok = best_ok | ok
            best_r = torch.where(better, r.detach(), best_r)
            best_pos[better] = x.detach()[better]
            best_g[better] = g.detach()[better]
        opt.zero_grad()
        loss.backward()
        before = x.detach().clone()
        opt.step()
        if sched is not None:
            sched.step()
        with torch.no_grad():
            delta = (x - before).clamp(-max_step, max_step)
            x.copy_(remove_mean(before + delta, msk))
    with torch.no_grad():
        g = simulate_safe(x, num, msk, pdf_cfg)
        r = rwp(g, target)
        ok = min_pair_distance(x, msk) >= floor
        better = ok & (~best_ok | (r < best_r))
        best_r = torch.where(better, r, best_r)
        best_pos[better] = x.detach()[better]
        best_g[better] = g[better]
    out_pos = best_pos[0] if single else best_pos
    return Refined(out_pos.numpy(), r0.numpy(), best_r.numpy(), best_g.numpy())



def pad_structures(positions: Sequence[np.ndarray], numbers: Sequence[np.ndarray]
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Structures of different sizes -> (positions (B,Nmax,3), numbers (B,Nmax), mask): row i holds
    structure i in its first len(numbers[i]) atoms; padding is at the origin with number 0."""
    n_max = max(len(n) for n in numbers)
    pos = np.zeros((len(numbers), n_max, 3))
    num = np.full((len(numbers), n_max), OXYGEN, dtype=np.int64)
    mask = np.zeros((len(numbers), n_max), dtype=bool)
    for i, (p, n) in enumerate(zip(positions, numbers, strict=True)):
        pos[i, : len(n)], num[i, : len(n)], mask[i, : len(n)] = p, n, True
    return pos, num * mask, mask


def refine_ragged(positions: Sequence[np.ndarray], numbers: Sequence[np.ndarray], target_g: torch.Tensor | np.ndarray,
                  pdf_cfg: PDFConfig, **kwargs) -> Refined:
    """`refine` for structures of different sizes against one target, padded into one batch (`pad_structures`)."""
    pos, num, mask = pad_structures(positions, numbers)
    return refine(pos, num, target_g, pdf_cfg, mask=mask, **kwargs)
