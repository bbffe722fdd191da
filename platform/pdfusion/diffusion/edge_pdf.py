"""The target G(r) read at each edge's distance: the condition routed to where geometry is decided.

Why: a global PDF embedding tells the EGNN *which* structure it denoises, but barely helps it place atoms at
mid noise (docs/training.md has the x̂0 errors with and without the condition). Reading G(r) at every
pair distance of the noisy input tells each edge directly whether the target has a peak there. In a
bond-length frame the model's distances are rescaled shapes, so each row's Å-per-model-unit factor is
estimated from the target itself: the position of its first peak (the shortest metal–oxygen distance) above
1.2 Å, against `model.bond_length`.
"""

from __future__ import annotations

import math

import torch

from pdfusion.config import ModelConfig

__all__ = ["EdgePDF", "STENCIL", "angstrom_scale", "first_peak", "gaussian_blur_rows"]

STENCIL = torch.linspace(-0.6, 0.6, 7)  # Å offsets around each edge's distance
SHARP_BLUR = 0.25  # Å, the blurred half of the stencil


def first_peak(pdf: torch.Tensor, rstep: float, rmin: float = 1.2, rel: float = 0.2) -> torch.Tensor:
    """(B,) r (Å) of the first local maximum above `rmin` that reaches `rel` of the row's largest value;
    rows without one get the position of their largest value above rmin."""
    n = pdf.shape[-1]
    r = torch.arange(n, device=pdf.device, dtype=pdf.dtype) * rstep
    g = pdf
    peak = torch.zeros_like(g, dtype=torch.bool)
    peak[:, 1:-1] = (g[:, 1:-1] > g[:, :-2]) & (g[:, 1:-1] >= g[:, 2:])
    above = r[None] > rmin
    big = g >= rel * torch.where(above, g, torch.full_like(g, -math.inf)).amax(-1, keepdim=True)
    ok = peak & above & big
    first = torch.where(ok.any(-1), ok.float().argmax(-1),
                        torch.where(above, g, torch.full_like(g, -math.inf)).argmax(-1))
    return r[first]


def angstrom_scale(cfg: ModelConfig, pdf: torch.Tensor) -> torch.Tensor:
    """(B,) Å per model unit for each target: `position_scale`, or in a bond-length frame position_scale ×
    (the target's first peak / `bond_length`)."""
    if cfg.bond_length is None:
        return torch.full((pdf.shape[0],), cfg.position_scale, device=pdf.device)
    return cfg.position_scale * first_peak(pdf.float(), cfg.pdf_rstep) / cfg.bond_length


def gaussian_blur_rows(pdf: torch.Tensor, width: torch.Tensor, rstep: float) -> torch.Tensor:
    """Each row convolved with a Gaussian of its own width (B,) Å, via FFT on a zero-padded copy (G(r) of a
    finite particle is ~0 beyond its diameter, so zero padding adds no edge artefact there)."""
    n = pdf.shape[-1]
    size = 2 * n
    freq = torch.fft.rfftfreq(size, d=rstep).to(pdf.device, pdf.dtype)
    kernel = torch.exp(-0.5 * (2 * math.pi * freq[None] * width.to(pdf.dtype)[:, None]) ** 2)
    return torch.fft.irfft(torch.fft.rfft(pdf, size) * kernel, size)[:, :n]


def _read(curves: torch.Tensor, graph: torch.Tensor, r: torch.Tensor, rstep: float) -> torch.Tensor:
    """Linear interpolation of curves (B, n_r) at r (E, S) Å for edge rows `graph` (E,); 0 beyond the grid."""
    n = curves.shape[-1]
    pos = r / rstep
    lo = pos.floor().clamp(0, n - 2)
    frac = (pos - lo).clamp(0, 1)
    flat = curves.reshape(-1)
    idx = graph[:, None] * n + lo.long()  # into the flattened (B·n_r) curves: no (E, n_r) copy
    a, b = flat[idx], flat[idx + 1]
    inside = (pos >= 0) & (pos <= n - 1)
    return torch.where(inside, a + frac * (b - a), torch.zeros_like(a))


class EdgePDF:
    """Per-batch reader: `features(d0, graph)` → (E, 14) for edge distances d0 (model units) of particles
    `graph`. Built once per forward from the target curves, the rows' condition mask and noise levels."""

    def __init__(self, cfg: ModelConfig, pdf: torch.Tensor, cond_mask: torch.Tensor,
                 noise: tuple[torch.Tensor, torch.Tensor] | None = None, scale: torch.Tensor | None = None) -> None:
        """noise: (√ᾱ_t, √(1 − ᾱ_t)) per row, for `edge_pdf="noise_aware"`: x_t = √ᾱ·x0 + √(1−ᾱ)·ε, so an edge of
        x_t is read at d/√ᾱ, and the blurred half is widened by the pair distance's spread √2·σ, σ = √(1−ᾱ)/√ᾱ.
        scale: `angstrom_scale(cfg, pdf)` when the caller already has it."""
        self.rstep = cfg.pdf_rstep
        pdf = pdf.float()
        self.scale = angstrom_scale(cfg, pdf) if scale is None else scale
        width = torch.full((pdf.shape[0],), SHARP_BLUR, device=pdf.device)
        if noise is not None:
            shrink, spread = (v.float().to(pdf.device) for v in noise)
            self.scale = self.scale / shrink
            width = torch.sqrt(width ** 2 + 2 * (spread * self.scale) ** 2)
        self.sharp = pdf
        self.blurred = gaussian_blur_rows(pdf, width, self.rstep)
        self.keep = cond_mask.float()
        self.stencil = STENCIL.to(pdf.device)

    def features(self, d0: torch.Tensor, graph: torch.Tensor, row=None, col=None) -> torch.Tensor:
        """(E, 14) for distances d0 (model units) of particles `graph` (row/col: the EGNN's edge ends, unused)."""
        r = d0.float()[:, None] * self.scale[graph][:, None] + self.stencil[None]
        out = torch.cat([_read(self.sharp, graph, r, self.rstep), _read(self.blurred, graph, r, self.rstep)], -1)
        return (out * self.keep[graph][:, None]).to(d0.dtype)

    @staticmethod
    def dim() -> int:
        return 2 * STENCIL.numel()
