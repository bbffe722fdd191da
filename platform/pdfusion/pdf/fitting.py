"""What fitting a structure to a G(r) needs besides the simulator: a simulation that tolerates exploded
candidates, a Gaussian blur for coarse-to-fine fits, a short-distance and a stray-atom penalty. Shared by post-hoc
refinement (`inference.refine`) and PDF guidance inside the sampler (`diffusion.pdf_guidance`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from pdfusion.config import PDFConfig
from pdfusion.pdf.debye import simulate_pdf
from pdfusion.pdf.metrics import rwp
from pdfusion.structures.fragments import BOND_CUTOFF

__all__ = ["MIN_DISTANCE", "Expansion", "blur", "cohesion_penalty", "fit_expansion",
           "min_pair_distance", "pair_penalty", "simulate_safe"]

MIN_DISTANCE = 1.5  # Å; shortest metal–oxygen bonds are ~1.6–1.7 Å, so closer pairs are unphysical


def simulate_safe(positions: torch.Tensor, numbers: torch.Tensor, mask: torch.Tensor, cfg: PDFConfig) -> torch.Tensor:
    """simulate_pdf with `cfg`, except that a structure whose G(r) has no positive maximum (atoms flung
    apart beyond rmax) gets G = 0 on the grid, i.e. R_wp = 1 (fits nothing), instead of aborting the batch."""
    if not cfg.normalize:
        return simulate_pdf(positions, numbers, mask, cfg)
    raw = simulate_pdf(positions, numbers, mask, replace(cfg, normalize=False))
    peak = raw.amax(dim=-1, keepdim=True)
    ok = peak > 0
    return torch.where(ok, raw / torch.where(ok, peak, torch.ones_like(peak)), torch.zeros_like(raw))


def blur(g: torch.Tensor, sigma: float, dr: float) -> torch.Tensor:
    """(B, n_r) curves convolved with a normalised Gaussian of width `sigma` Å cut at ±3σ (edges
    reflected); returned unchanged when sigma ≤ dr. Via FFT: the kernel is hundreds of points wide, too wide
    for a direct conv1d (docs/pdf.md)."""
    if sigma <= dr:
        return g
    n = g.shape[-1]
    half = min(round(3 * sigma / dr), n - 1)
    k = torch.arange(-half, half + 1, dtype=g.dtype, device=g.device) * dr
    k = torch.exp(-0.5 * (k / sigma) ** 2)
    k = k / k.sum()
    padded = torch.nn.functional.pad(g.reshape(-1, 1, n), (half, half), mode="reflect").reshape(-1, n + 2 * half)
    size = n + 4 * half  # linear (not circular) convolution
    out = torch.fft.irfft(torch.fft.rfft(padded, size) * torch.fft.rfft(k, size), size)
    return out[:, 2 * half : 2 * half + n].reshape(g.shape)


def _pair_distances(pos: torch.Tensor, mask: torch.Tensor, others: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,N,N) distances from each atom of `pos` to each of `others` (default: pos itself), differentiable
    everywhere (also at 0), and the mask of distinct real pairs."""
    others = pos if others is None else others
    diff = pos[:, :, None, :] - others[:, None, :, :]
    d = torch.sqrt((diff * diff).sum(-1) + 1e-12)
    pair = mask[:, :, None] & mask[:, None, :]
    return d, pair & ~torch.eye(pos.shape[1], dtype=torch.bool, device=pos.device)[None]


def pair_penalty(pos: torch.Tensor, mask: torch.Tensor, min_distance: float) -> torch.Tensor:
    """Σ over real pairs of relu(min_distance − d)², per structure (B,)."""
    d, pair = _pair_distances(pos, mask)
    return (torch.relu(min_distance - d) ** 2 * pair).sum((1, 2)) / 2


def cohesion_penalty(pos: torch.Tensor, mask: torch.Tensor, max_distance: float = BOND_CUTOFF) -> torch.Tensor:
    """Σ over real atoms of relu(d_nn − max_distance)², per structure (B,), d_nn the atom's nearest-neighbour
    distance. Why: a stray atom's pairs all sit at long r, where R_wp barely feels them, so a fit alone leaves
    it floating. The gradient moves only the stray, toward its nearest neighbour (the neighbours' positions
    are constants here): otherwise the neighbour is pulled out of the particle as much as the stray is pulled
    in (measured on a 13-atom cluster: its R_wp rose 0.04 → 0.16). 0 for a structure of one atom."""
    d, pair = _pair_distances(pos, mask, pos.detach())
    nn = d.masked_fill(~pair, float("inf")).amin(-1)  # (B,N); inf where an atom has no partner
    has = pair.any(-1)
    excess = torch.relu(torch.where(has, nn, torch.zeros_like(nn)) - max_distance)
    return (excess * excess).sum(-1)


def min_pair_distance(pos: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Shortest distance between two real atoms, per structure (B,); inf for fewer than two atoms."""
    d = torch.cdist(pos, pos)
    pair = mask[:, :, None] & mask[:, None, :]
    pair = pair & ~torch.eye(pos.shape[1], dtype=torch.bool, device=pos.device)[None]
    return torch.where(pair, d, torch.full_like(d, float("inf"))).amin((1, 2))


@dataclass
class Expansion:
    factor: torch.Tensor  # (B,) isotropic scale applied to each structure
    positions: torch.Tensor  # (B, N, 3) scaled positions (padding stays 0)
    rwp: torch.Tensor  # (B,) R_wp of the scaled structure against its target
    g_sim: torch.Tensor  # (B, n_r) its simulated G(r)


@torch.no_grad()
def fit_expansion(positions: torch.Tensor, numbers: torch.Tensor, mask: torch.Tensor, target: torch.Tensor,
                  cfg: PDFConfig, lo: float = 0.75, hi: float = 1.35, coarse: int = 31, fine: int = 21,
                  smooth: float = 0.3, chunk: int = 256) -> Expansion:
    """Best isotropic expansion of each structure (centred positions (B,N,3)) against its target G(r) (B,n_r),
    by grid search: the lattice-parameter step of every PDF refinement, for models that generate shapes in a
    fixed bond-length frame (`ModelConfig.bond_length`). Coarse grid on curves blurred by `smooth` Å (peaks
    ~0.09 Å wide at r ~ 15 Å move by more than their width between neighbouring factors), then two finer grids,
    each spanning ± one step of the one before; the last, on the sharp curves, decides."""
    if not 0 < lo < 1 < hi:
        raise ValueError(f"fit_expansion: need 0 < lo < 1 < hi, got lo={lo}, hi={hi}")
    pos, num, msk = positions.double(), numbers.long(), mask.bool()
    tgt = target.double().reshape(pos.shape[0], -1)
    b = pos.shape[0]
    dr = float(cfg.rstep)

    def score(factors: torch.Tensor, width: float) -> tuple[torch.Tensor, torch.Tensor]:  # factors (B, J)
        j = factors.shape[1]
        flat_pos = (pos[:, None] * factors[..., None, None]).reshape(b * j, *pos.shape[1:])
        flat_num = num[:, None].expand(b, j, -1).reshape(b * j, -1)
        flat_msk = msk[:, None].expand(b, j, -1).reshape(b * j, -1)
        gs = torch.cat([simulate_safe(flat_pos[s:s + chunk], flat_num[s:s + chunk], flat_msk[s:s + chunk], cfg)
                        for s in range(0, b * j, chunk)])
        t = blur(tgt, width, dr)[:, None].expand(b, j, -1).reshape(b * j, -1)  # each target blurred once
        r = rwp(blur(gs, width, dr), t)  # blur returns the curves unchanged for width <= dr
        return r.reshape(b, j), gs.reshape(b, j, -1)

    grid = torch.linspace(lo, hi, coarse, dtype=torch.float64).expand(b, -1)
    r, g = score(grid, smooth)
    # each stage spans ± one step of the previous grid; R_wp is sharp in the factor (docs/pdf.md), hence two
    # fine stages
    for width in (smooth / 6, 0.0):
        step = grid[:, 1:2] - grid[:, 0:1]
        best = grid.gather(1, r.argmin(1, keepdim=True))
        grid = (best + step * torch.linspace(-1.0, 1.0, fine, dtype=torch.float64)[None]).clamp(lo, hi)
        r, g = score(grid, width)
    k = r.argmin(1)
    idx = torch.arange(b)
    factor = grid[idx, k]
    return Expansion(factor, pos * factor[:, None, None], r[idx, k], g[idx, k])
