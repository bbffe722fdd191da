"""Bond length of a particle: the scale that `model.bond_length` divides out (one structure type, one shape)."""

from __future__ import annotations

import torch

from pdfusion.structures.particle import OXYGEN


def median_metal_oxygen_bond(pos: torch.Tensor, z: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Median over the metal atoms of each one's distance to its nearest oxygen, per particle.

    pos (B,N,3) or (N,3) Å, z atomic numbers, mask real atoms. The median (not the minimum) so one
    distorted surface atom does not set the scale. Raises when a particle lacks metal or oxygen atoms.
    """
    single = pos.ndim == 2
    if single:
        pos, z = pos[None], z[None]
        mask = None if mask is None else mask[None]
    mask = torch.ones(z.shape, dtype=torch.bool, device=z.device) if mask is None else mask.bool()
    oxy = (z == OXYGEN) & mask
    metal = (z != OXYGEN) & mask
    missing = ~(oxy.any(1) & metal.any(1))
    if bool(missing.any()):
        raise ValueError(f"bond length: particle(s) {missing.nonzero().flatten().tolist()} have no metal or no oxygen "
                         "atom; model.bond_length needs oxides (set model.bond_length=None for other particles)")
    p = pos.double()
    d = torch.cdist(p, p)
    d = d.masked_fill(~oxy[:, None, :], float("inf"))  # columns: oxygen partners only
    nearest = d.min(-1).values  # (B, N): each atom's nearest oxygen (metal rows are what we keep)
    nearest = nearest.masked_fill(~metal, float("nan"))
    out = torch.nanmedian(nearest, dim=1).values.to(pos.dtype)
    return out[0] if single else out
