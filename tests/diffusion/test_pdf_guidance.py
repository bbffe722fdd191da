"""PDF guidance: the x̂0 fit step is equivariant, padding-blind, bounded and downhill; guided sampling
needs the PDFConfig and fits the target better than the same sampler unguided."""

from __future__ import annotations

import pytest
import torch
from helpers import N_R, tiny, toy_particle

from pdfusion.config import ConfigError, PDFConfig, SampleConfig
from pdfusion.diffusion import sample
from pdfusion.diffusion.pdf_guidance import pdf_fit_step
from pdfusion.pdf import rwp
from pdfusion.pdf.fitting import simulate_safe

PDF_CFG = PDFConfig(rmax=20.0, rstep=0.5)  # n_r = 40 = the tiny model's pdf_points
assert PDF_CFG.n_r == N_R


def _target_and_start(n: int = 13, jitter: float = 0.15, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    pos, z = toy_particle(n, g)
    mask = torch.ones(1, n, dtype=torch.bool)
    target = simulate_safe(pos[None], z[None], mask, PDF_CFG)
    start = pos + jitter * torch.randn(n, 3, generator=g)
    return start[None], z[None], mask, target


def _rotation(seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(seed)))
    return q


def test_fit_step_is_downhill_and_bounded():
    start, z, mask, target = _target_and_start()
    r0 = rwp(simulate_safe(start, z, mask, PDF_CFG), target)
    moved = pdf_fit_step(start, z, mask, target, PDF_CFG, step=0.01)
    disp = (moved - start).norm(dim=-1)
    assert float(disp.pow(2).mean().sqrt()) <= 0.01 * (1 + 1e-5) and float(disp.max()) <= 0.03 * 3 ** 0.5 + 1e-6
    assert float(rwp(simulate_safe(moved, z, mask, PDF_CFG), target)) < float(r0)
    pos = start
    for _ in range(30):
        pos = pdf_fit_step(pos, z, mask, target, PDF_CFG, step=0.01)
    assert float(rwp(simulate_safe(pos, z, mask, PDF_CFG), target)) < 0.7 * float(r0)


@pytest.mark.parametrize("reflect", [False, True])
def test_fit_step_is_rotation_reflection_and_permutation_equivariant(reflect):
    start, z, mask, target = _target_and_start()
    rot = _rotation(3) * (-1.0 if reflect else 1.0)
    perm = torch.randperm(z.shape[1], generator=torch.Generator().manual_seed(4))
    out = pdf_fit_step(start, z, mask, target, PDF_CFG, step=0.02, blur_width=1.0)
    out_t = pdf_fit_step(start[:, perm] @ rot.T, z[:, perm], mask, target, PDF_CFG, step=0.02, blur_width=1.0)
    torch.testing.assert_close(out_t, out[:, perm] @ rot.T, atol=1e-4, rtol=0)


def test_fit_step_ignores_padding():
    start, z, mask, target = _target_and_start()
    n = z.shape[1]
    pad_pos = torch.cat([start, torch.full((1, 4, 3), 7.0)], 1)
    pad_z = torch.cat([z, torch.zeros(1, 4, dtype=torch.long)], 1)
    pad_mask = torch.cat([mask, torch.zeros(1, 4, dtype=torch.bool)], 1)
    out = pdf_fit_step(start, z, mask, target, PDF_CFG, step=0.02)
    out_pad = pdf_fit_step(pad_pos, pad_z, pad_mask, target, PDF_CFG, step=0.02)
    torch.testing.assert_close(out_pad[:, :n], out, atol=1e-6, rtol=0)
    assert out_pad[:, n:].abs().max() == 0


def test_guidance_config_and_missing_pdf_cfg_are_clear_errors():
    with pytest.raises(ConfigError, match="pdf_guidance"):
        SampleConfig(pdf_guidance=-0.1)
    with pytest.raises(ConfigError, match="pdf_guidance_iters"):
        SampleConfig(pdf_guidance=0.1, pdf_guidance_iters=0)
    model, d = tiny(seed=0, T=20)
    _, z, _, target = _target_and_start()
    with pytest.raises(ValueError, match="pdf_guidance.*pdf_cfg"):
        sample(model, d, target, torch.tensor([22]), [13], SampleConfig(steps=4, pdf_guidance=0.1))
    with pytest.raises(ValueError, match="pdf_guidance"):
        sample(model, d, target[:, :30], torch.tensor([22]), [13], SampleConfig(steps=4, pdf_guidance=0.1),
               pdf_cfg=PDF_CFG)


FINE = PDFConfig(rmax=12.0, rstep=0.05)  # a grid fine enough to resolve the toy particle's peaks


@pytest.fixture(scope="module")
def briefly_trained():
    """A tiny denoiser trained for a few seconds on one toy particle: a rough prior (right size and
    composition, wrong details), which is what guidance has to work with."""
    from pdfusion.data.batching import DenseBatch

    torch.set_num_threads(1)
    model, d = tiny(seed=1, T=20, pdf_points=FINE.n_r, normalization_factor=1.0)
    pos, z = toy_particle(13, torch.Generator().manual_seed(0))
    mask = torch.ones(16, 13, dtype=torch.bool)
    target = simulate_safe(pos[None], z[None], mask[:1], FINE)
    batch = DenseBatch(pos=pos.expand(16, -1, -1).clone(), z=z.expand(16, -1).clone(), mask=mask,
                       pdf=target.expand(16, -1).clone(), metal=torch.full((16,), 22), n_atoms=mask.sum(1))
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(300):
        loss, _ = d.training_loss(model, batch, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), d, target


@pytest.mark.parametrize("steps", [None, 8])
def test_guided_sampling_fits_the_target_better_than_unguided(briefly_trained, steps):
    model, d, target = briefly_trained
    k = 8
    pdfs, metals, n = target.expand(k, -1), torch.full((k,), 22), torch.full((k,), 13)

    def fit(cfg):
        out = sample(model, d, pdfs, metals, n, cfg, pdf_cfg=FINE)
        assert (out.positions.sum(1).abs().max()) < 1e-4  # still zero centre of mass
        g = simulate_safe(out.positions, out.numbers(metals), out.mask, FINE)
        return rwp(g, pdfs), out

    plain, _ = fit(SampleConfig(steps=steps, seed=5))
    guided, out_a = fit(SampleConfig(steps=steps, seed=5, pdf_guidance=0.3, pdf_guidance_iters=5))
    _, out_b = fit(SampleConfig(steps=steps, seed=5, pdf_guidance=0.3, pdf_guidance_iters=5))
    torch.testing.assert_close(out_a.positions, out_b.positions)  # seeded: reproducible with guidance too
    assert float(guided.median()) < 0.9 * float(plain.median()), (guided, plain)  # measured 0.83 and 0.66
