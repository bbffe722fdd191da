"""R_wp, the agreement factor used everywhere a simulated PDF is compared with a target."""

from __future__ import annotations

import torch
from torch import Tensor


def rwp(pred: Tensor, target: Tensor, dim: int = -1) -> Tensor:
    """R_wp = sqrt(Σ(pred − target)² / Σ target²) along ``dim`` (unit weights), batched over the other dims.

    Both tensors must have the same shape (no silent broadcasting: a (B, n) vs (n,) slip would otherwise give
    a plausible-looking number). A target that is identically zero raises instead of returning inf/NaN. The
    gradient is finite everywhere, 0 at a perfect fit.
    """
    pred = torch.as_tensor(pred)
    target = torch.as_tensor(target, dtype=pred.dtype, device=pred.device)
    if pred.shape != target.shape:
        raise ValueError(f"rwp: pred has shape {tuple(pred.shape)} but target has shape {tuple(target.shape)}; "
                         "interpolate both onto the same r grid first")
    if pred.numel() == 0:
        raise ValueError("rwp: empty input")
    den = (target**2).sum(dim)
    if bool((den <= 0).any()):
        raise ValueError("rwp: target is identically zero along the reduced dimension")
    q = ((pred - target) ** 2).sum(dim) / den
    # sqrt's gradient is infinite at 0: a perfect fit would send NaN into a refinement; there it is 0 instead
    return torch.where(q == 0, torch.zeros_like(q), torch.sqrt(q.clamp_min(torch.finfo(q.dtype).tiny)))
