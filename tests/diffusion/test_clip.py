"""x̂0 clipping keeps samples of an untrained (or poor) model physical, and commutes with rotations."""

import torch

from pdfusion.config import ModelConfig, SampleConfig, ScheduleConfig
from pdfusion.diffusion.gaussian import GaussianDiffusion
from pdfusion.diffusion.model import PDFusionDenoiser
from pdfusion.diffusion.samplers import clip_positions, sample
from pdfusion.diffusion.schedules import build_schedule


def test_clip_positions_is_rotation_equivariant_and_bounded():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 7, 3, generator=g) * 10
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[1, 5:] = False
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=g))
    a = clip_positions(x, mask, 2.0)
    b = clip_positions(x @ q.T, mask, 2.0)
    assert torch.allclose(a @ q.T, b, atol=1e-5)
    assert float(a.norm(dim=-1).max()) < 2.0 * 1.5
    assert torch.all(a[1, 5:] == 0)


def _zero_eps_model(cfg):
    model = PDFusionDenoiser(cfg)

    def forward(x, h, mask, t, pdf=None, metal=None, cond_mask=None, **_):
        return torch.zeros_like(x), torch.zeros_like(h)

    model.forward = forward
    return model


def test_ddim_with_useless_model_stays_within_clip_radius():
    # a model predicting eps = 0 makes DDIM rescale the prior by 1/sqrt(alpha_bar_T): hundreds of Å unclipped
    cfg = ModelConfig(hidden=8, layers=1, pdf_points=10, pdf_embed=4)
    diffusion = GaussianDiffusion(build_schedule(ScheduleConfig(name="polynomial", timesteps=100)), cfg)
    model = _zero_eps_model(cfg)
    n = torch.tensor([20, 12])
    far = sample(model, diffusion, None, None, n, SampleConfig(steps=10, clip_x0=None))
    near = sample(model, diffusion, None, None, n, SampleConfig(steps=10, clip_x0=12.0))
    assert float(far.positions.norm(dim=-1).max()) > 100.0
    assert float(near.positions.norm(dim=-1).max()) <= 12.0 * 1.5
    anc = sample(model, diffusion, None, None, n, SampleConfig(steps=None, clip_x0=12.0))
    assert float(anc.positions.norm(dim=-1).max()) <= 12.0 * 1.5
