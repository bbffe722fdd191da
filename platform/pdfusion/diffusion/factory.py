"""The denoiser and the diffusion process built from a training config: the one place that knows how.

Training builds them to learn, a bundle builds them to load EMA weights into; both must build exactly
the same modules, or a checkpoint would not fit the model it is loaded into.
"""

from __future__ import annotations

from pdfusion.config import TrainConfig
from pdfusion.diffusion.gaussian import GaussianDiffusion
from pdfusion.diffusion.model import PDFusionDenoiser
from pdfusion.diffusion.schedules import build_schedule


def build_model(cfg: TrainConfig) -> tuple[PDFusionDenoiser, GaussianDiffusion]:
    """(denoiser with fresh weights, its diffusion process) for `cfg` (on the CPU)."""
    schedule = build_schedule(cfg.diffusion.schedule)
    return PDFusionDenoiser(cfg.model, schedule.alphas_cumprod), GaussianDiffusion(schedule, cfg.model, cfg.diffusion)
