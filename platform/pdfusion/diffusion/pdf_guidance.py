"""PDF guidance: steer every predicted clean structure x̂0 toward the target G(r) while sampling.

Why: a denoiser trained on CPU budgets misplaces atoms at mid noise (experiments/diag_denoiser.py), and
post-hoc refinement of the finished sample then sticks in the nearest local minimum of R_wp. Here each
sampler step takes the denoiser's x̂0, moves it a few small normalised steps down R_wp(G(x̂0), target)
through the differentiable simulator (plus the short-distance and, if asked, the stray-atom penalty), and the
sampler continues from the moved x̂0: data consistency in x̂0-space as in decomposed diffusion sampling (Chung
et al. 2023), with no backpropagation through the network. The diffusion prior keeps the structure physical;
the PDF keeps it faithful. Coarse to fine follows the noise: both curves are blurred by x̂0's own uncertainty
σ_t/√ᾱ_t (in Å, capped at `blur_max`), and the step shrinks with σ_t, so late steps are fine adjustments;
a step that would raise a structure's fit is refused and halved, so guidance never makes x̂0 fit worse.
"""

from __future__ import annotations

import torch

from pdfusion.config import PDFConfig
from pdfusion.diffusion.gaussian import types_to_numbers
from pdfusion.diffusion.guards import check_finite
from pdfusion.pdf.fitting import MIN_DISTANCE, blur, cohesion_penalty, pair_penalty, simulate_safe
from pdfusion.pdf.metrics import rwp

__all__ = ["PDFGuide", "pdf_fit_descent", "pdf_fit_step"]


def _loss(x: torch.Tensor, numbers: torch.Tensor, mask: torch.Tensor, target: torch.Tensor, pdf_cfg: PDFConfig,
          blur_width: float, penalty: float, min_distance: float, cohesion: float = 0.0) -> torch.Tensor:
    """Per-structure R_wp (both curves blurred by `blur_width` Å) + penalty·short-distance penalty
    + cohesion·stray-atom penalty, (B,)."""
    g = simulate_safe(x, numbers, mask, pdf_cfg)
    tgt = target.to(g.dtype)
    loss = rwp(blur(g, blur_width, pdf_cfg.rstep), blur(tgt, blur_width, pdf_cfg.rstep))
    loss = loss + penalty * pair_penalty(x, mask, min_distance)
    return loss + cohesion * cohesion_penalty(x, mask) if cohesion > 0 else loss


def _objective(pos: torch.Tensor, numbers: torch.Tensor, mask: torch.Tensor, target: torch.Tensor,
               pdf_cfg: PDFConfig, blur_width: float, penalty: float, min_distance: float, cohesion: float = 0.0
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """`_loss` and its gradient with respect to the positions (B,N,3)."""
    with torch.enable_grad():
        x = pos.detach().float().requires_grad_(True)
        loss = _loss(x, numbers, mask, target, pdf_cfg, blur_width, penalty, min_distance, cohesion)
        (grad,) = torch.autograd.grad(loss.sum(), x)
    check_finite("pdf_guidance.grad", grad)
    return loss.detach(), grad


def _normalised_step(pos: torch.Tensor, grad: torch.Tensor, mask: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """pos moved against grad so each structure's RMS displacement over real atoms is step (B,) Å (no atom
    moves more than 3·step); padding and structures with zero gradient stay put."""
    m3 = mask.unsqueeze(-1).to(grad.dtype)
    grad = grad * m3
    n = m3.sum((1, 2)).clamp(min=1.0)
    rms = torch.sqrt((grad * grad).sum((1, 2)) / n)[:, None, None]
    st = step.to(grad.dtype)[:, None, None]
    delta = -st * grad / rms.clamp(min=1e-12)
    delta = torch.where(rms > 0, delta, torch.zeros_like(delta))
    delta = torch.maximum(torch.minimum(delta, 3 * st), -3 * st)
    return (pos + delta.to(pos.dtype)) * m3.to(pos.dtype)


def pdf_fit_step(pos: torch.Tensor, numbers: torch.Tensor, mask: torch.Tensor, target: torch.Tensor,
                 pdf_cfg: PDFConfig, *, step: float, blur_width: float = 0.0, penalty: float = 1.0,
                 min_distance: float = MIN_DISTANCE, cohesion: float = 0.0) -> torch.Tensor:
    """One normalised gradient step on R_wp (blurred by `blur_width` Å) + penalty·short-distance penalty
    (+ cohesion·stray-atom penalty).
    pos (B,N,3) Å → moved copy, each structure's RMS displacement over real atoms = `step` Å (no atom
    moves more than 3·step); padding and structures with zero gradient stay put."""
    m = mask.bool()
    _, grad = _objective(pos, numbers, m, target, pdf_cfg, blur_width, penalty, min_distance, cohesion)
    return _normalised_step(pos, grad, m, torch.full((pos.shape[0],), float(step), device=pos.device))


def pdf_fit_descent(pos: torch.Tensor, numbers: torch.Tensor, mask: torch.Tensor, target: torch.Tensor,
                    pdf_cfg: PDFConfig, *, step: float, iters: int, blur_width: float = 0.0, penalty: float = 1.0,
                    min_distance: float = MIN_DISTANCE, cohesion: float = 0.0) -> torch.Tensor:
    """`iters` normalised steps, each kept only where it lowers that structure's objective (else the step is
    halved for it): the fit never gets worse. Why: a fixed step of 0.3 Å at full noise overshoots, and without
    the check guidance raised the blurred R_wp of x̂0 at 15 of 20 sampler times in 1–6 of 8 structures."""
    m = mask.bool()
    loss, grad = _objective(pos, numbers, m, target, pdf_cfg, blur_width, penalty, min_distance, cohesion)
    st = torch.full((pos.shape[0],), float(step), device=pos.device)
    for _ in range(iters):
        cand = _normalised_step(pos, grad, m, st)
        loss_c, grad_c = _objective(cand, numbers, m, target, pdf_cfg, blur_width, penalty, min_distance, cohesion)
        better = loss_c < loss
        b3 = better[:, None, None]
        pos = torch.where(b3, cand, pos)
        grad = torch.where(b3, grad_c, grad)
        loss = torch.where(better, loss_c, loss)
        st = torch.where(better, st, st / 2)
    return pos


class PDFGuide:
    """The sampler's x̂0 hook: `guide(x0, h0, t)` → x0 moved toward the target PDF (diffusion units).

    strength: RMS displacement per sampler step (Å) at σ_t = 1; it scales with max(σ_t, 0.1); 0 builds a guide
    that only scores (`score`), for population resampling without guidance.
    iters: gradient steps per sampler step.
    cohesion: weight of the stray-atom penalty (`pdf.fitting.cohesion_penalty`, Å⁻²); 0 = off."""

    def __init__(self, diffusion, target: torch.Tensor, metal: torch.Tensor, pdf_cfg: PDFConfig, *,
                 strength: float, iters: int = 1, blur_max: float = 0.8, penalty: float = 1.0,
                 cohesion: float = 0.0) -> None:
        if target.dim() != 2 or target.shape[-1] != pdf_cfg.n_r:
            raise ValueError(f"pdf_guidance: the target G(r) must be (B, {pdf_cfg.n_r}) on the simulator's r grid "
                             f"(pdf_cfg), got {tuple(target.shape)}")
        if strength < 0 or iters < 1 or cohesion < 0:
            raise ValueError(f"pdf_guidance: need strength >= 0 (0: score only), iters >= 1 and cohesion >= 0, "
                             f"got {strength}, {iters}, {cohesion}")
        self.diffusion, self.target, self.metal, self.pdf_cfg = diffusion, target, metal.long(), pdf_cfg
        self.strength, self.iters, self.blur_max, self.penalty = strength, iters, blur_max, penalty
        self.cohesion = cohesion
        self.scale = diffusion.model_cfg.position_scale

    def _width_sigma(self, t: int) -> tuple[float, float]:
        abar = float(self.diffusion.schedule.alphas_cumprod[t])
        sigma = (1.0 - abar) ** 0.5
        return min(self.blur_max, sigma / abar ** 0.5 * self.scale), sigma

    def __call__(self, x0: torch.Tensor, h0: torch.Tensor, t: int, mask: torch.Tensor) -> torch.Tensor:
        width, sigma = self._width_sigma(t)
        step = self.strength * max(sigma, 0.1)
        numbers = types_to_numbers(h0.argmax(-1), self.metal) * mask
        pos = x0 * self.scale
        pos = pdf_fit_descent(pos, numbers, mask, self.target, self.pdf_cfg, step=step, iters=self.iters,
                              blur_width=width, penalty=self.penalty, cohesion=self.cohesion)
        return pos / self.scale

    def score(self, x0: torch.Tensor, h0: torch.Tensor, t: int, mask: torch.Tensor) -> torch.Tensor:
        """(B,) the objective guidance descends (blurred R_wp + the penalties) at x̂0, without moving it:
        how population resampling ranks the rows of one target."""
        width, _ = self._width_sigma(t)
        numbers = types_to_numbers(h0.argmax(-1), self.metal) * mask
        with torch.no_grad():  # a ranking, not a step: no gradient
            return _loss(x0.float() * self.scale, numbers, mask.bool(), self.target, self.pdf_cfg, width,
                         self.penalty, MIN_DISTANCE, self.cohesion)
