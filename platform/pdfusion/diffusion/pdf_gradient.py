"""Learned guidance: each atom's direction of steepest descent of the misfit between the noisy structure's
G(r) and the target, as an equivariant per-atom input of the denoiser (`model.pdf_gradient`).

Why: classifier-free and PDF guidance act from outside the network; here the network itself sees, at every
step, which way each atom should move for the structure to fit the PDF, and learns how far to trust it at
each noise level. The clean-structure guess is x_t/√ᾱ_t, whose pair distances are spread by √2·σ with
σ = √(1−ᾱ)/√ᾱ, so it is compared with the target broadened by that width. The misfit is R_wp after the best
scale, 1 − (g·t)²/(|g|²|t|²), so the normalisation of either curve does not matter. The gradient of an
invariant is equivariant, and it is normalised per structure to unit RMS; its size joins the node features.
Cost: one Debye simulation on the grid and one backward per step, small next to a training step (docs/training.md,
"Conditioning levers, equal-CPU A/B").
"""

from __future__ import annotations

import torch

from pdfusion.config import ModelConfig, PDFConfig
from pdfusion.diffusion.edge_pdf import angstrom_scale, gaussian_blur_rows
from pdfusion.diffusion.gaussian import types_to_numbers
from pdfusion.diffusion.guards import check_finite
from pdfusion.pdf.fitting import simulate_safe

__all__ = ["pdf_gradient"]


def _condition_pdf_config(cfg: ModelConfig) -> PDFConfig:
    """The conditioning grid r = k · pdf_rstep (k < pdf_points) with the seed-oxides simulation parameters."""
    return PDFConfig(rmin=0.0, rmax=cfg.pdf_points * cfg.pdf_rstep, rstep=cfg.pdf_rstep)


def pdf_gradient(cfg: ModelConfig, x: torch.Tensor, h: torch.Tensor, mask: torch.Tensor, pdf: torch.Tensor,
                 metal: torch.Tensor, keep: torch.Tensor, abar: torch.Tensor, scale: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(unit-RMS descent direction (B,N,3), its per-atom size (B,N,1)); zeros where `keep` is False.

    x (B,N,3) model units at noise ᾱ (B,); h noisy type features (argmax decides metal / oxygen); scale:
    `edge_pdf.angstrom_scale(cfg, pdf)` when the caller already has it."""
    m = mask.bool()
    pdf = pdf.float()
    scale = angstrom_scale(cfg, pdf) if scale is None else scale
    shrink = abar.float().clamp_min(1e-8).sqrt()
    spread = (1 - abar.float()).clamp_min(0).sqrt() / shrink * scale  # Å per coordinate of x_t / √ᾱ
    target = gaussian_blur_rows(pdf, (2 ** 0.5 * spread).clamp(max=2.0), cfg.pdf_rstep)
    numbers = types_to_numbers(h.argmax(-1), metal.long()) * m
    with torch.enable_grad():
        pos = (x.detach().float() / shrink[:, None, None] * scale[:, None, None]).requires_grad_(True)
        g = simulate_safe(pos, numbers, m, _condition_pdf_config(cfg))
        num = (g * target).sum(-1) ** 2
        den = (g * g).sum(-1) * (target * target).sum(-1)
        misfit = 1 - num / den.clamp_min(1e-12)
        (grad,) = torch.autograd.grad(misfit.sum(), pos)
    grad = -grad * m.unsqueeze(-1) * keep.float()[:, None, None]
    n = m.sum(1).clamp(min=1).float()
    rms = (grad.pow(2).sum((1, 2)) / n).sqrt()[:, None, None]
    unit = torch.where(rms > 0, grad / rms.clamp_min(1e-12), torch.zeros_like(grad))
    check_finite("pdf_gradient", unit)
    return unit.to(x.dtype), unit.norm(dim=-1, keepdim=True).to(x.dtype)
