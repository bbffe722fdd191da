"""Tiny models and self-generated toy particles shared by the diffusion tests."""

from __future__ import annotations

import torch

from pdfusion.config import DiffusionConfig, ModelConfig, ScheduleConfig
from pdfusion.data.batching import DenseBatch
from pdfusion.diffusion import GaussianDiffusion, PDFusionDenoiser, build_schedule

N_R = 40


def tiny_model_cfg(**kw) -> ModelConfig:
    base = dict(hidden=16, layers=2, pdf_embed=16, pdf_points=N_R, max_atoms=32)
    base.update(kw)
    return ModelConfig(**base)


def tiny(seed: int = 0, T: int = 20, p_uncond: float = 0.2, **model_kw):
    torch.manual_seed(seed)
    mcfg = tiny_model_cfg(**model_kw)
    dcfg = DiffusionConfig(schedule=ScheduleConfig(name="polynomial", timesteps=T), p_uncond=p_uncond)
    schedule = build_schedule(dcfg.schedule)
    model = PDFusionDenoiser(mcfg, schedule.alphas_cumprod)
    return model, GaussianDiffusion(schedule, mcfg, dcfg)


def toy_particle(n: int, g: torch.Generator, spacing: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    """A jittered rock-salt-like cluster of n atoms (alternating metal Z=22 / oxygen), centred."""
    side = int(round(n ** (1 / 3))) + 2
    grid = torch.stack(torch.meshgrid(*[torch.arange(side)] * 3, indexing="ij"), -1).reshape(-1, 3).float()
    grid = grid - grid.mean(0)
    order = grid.norm(dim=1).argsort()[:n]
    cell = grid[order]
    pos = cell * spacing + 0.05 * torch.randn(n, 3, generator=g)
    z = torch.where(cell.sum(1).long() % 2 == 0, torch.tensor(22), torch.tensor(8))
    return pos - pos.mean(0), z


def toy_batch(sizes: list[int], seed: int = 0, n_max: int | None = None) -> DenseBatch:
    g = torch.Generator().manual_seed(seed)
    n_max = n_max or max(sizes)
    b = len(sizes)
    pos = torch.zeros(b, n_max, 3)
    z = torch.zeros(b, n_max, dtype=torch.long)
    mask = torch.zeros(b, n_max, dtype=torch.bool)
    for i, n in enumerate(sizes):
        p, zz = toy_particle(n, g)
        pos[i, :n], z[i, :n], mask[i, :n] = p, zz, True
    pdf = torch.stack([torch.sin(torch.linspace(0, 6, N_R) * (1 + 0.1 * n)) for n in sizes])
    return DenseBatch(pos=pos, z=z, mask=mask, pdf=pdf, metal=torch.full((b,), 22), n_atoms=mask.sum(1))
