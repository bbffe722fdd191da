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


def align_noise(noise: torch.Tensor, x0: torch.Tensor, types: torch.Tensor, mask: torch.Tensor,
                iters: int = 2) -> torch.Tensor:
    """Equivariant optimal-transport coupling (Klein et al. 2023): per structure, rotate and permute (within each
    atom type) the prior draw `noise` onto `x0`, alternating Hungarian assignment and Kabsch. A rotated and permuted
    isotropic Gaussian is still that Gaussian, so the prior is unchanged; the pairing removes most of the
    orientation and assignment averaging a denoiser otherwise learns. Zero-CoM in, zero-CoM out; padding 0."""
    # imported here: scipy's optimize/spatial cost ~0.25 s at import, and only an OT-trained run needs them
    from pdfusion.structures.alignment import assign_within_types, kabsch

    out = noise.detach().clone()
    for b in range(noise.shape[0]):
        m = mask[b].bool()
        e = noise[b][m].double().cpu().numpy()
        x = x0[b][m].double().cpu().numpy()
        ty = types[b][m].cpu().numpy()
        for _ in range(iters):
            e = e[assign_within_types(x, e, ty, ty)]  # noise j -> atom i, within each type
            e = e @ kabsch(e, x)
        out[b][m] = torch.as_tensor(e, dtype=noise.dtype, device=noise.device)
    return remove_mean(out, mask.bool())
