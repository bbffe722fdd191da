"""Centring on the zero centre-of-mass subspace: the diffusion's translation invariance, and the frame every
sampled or refined structure is reported in."""

from __future__ import annotations

import torch


def remove_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Project (B,N,3) onto the zero centre-of-mass subspace over real nodes; padding set to 0."""
    m = mask.unsqueeze(-1).to(x.dtype)
    n = m.sum(1, keepdim=True).clamp(min=1.0)
    mean = (x * m).sum(1, keepdim=True) / n
    return (x - mean) * m
