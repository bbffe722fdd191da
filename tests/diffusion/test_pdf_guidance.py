"""PDF guidance: the x̂0 fit step is equivariant, padding-blind, bounded and downhill; guided sampling
needs the PDFConfig and fits the target better than the same sampler unguided."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from helpers import N_R, tiny, toy_particle

from pdfusion.config import ConfigError, PDFConfig, SampleConfig
from pdfusion.diffusion import sample
from pdfusion.diffusion.pdf_guidance import pdf_fit_descent, pdf_fit_step
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
    stray = start.clone()
    stray[0, 0] += torch.tensor([6.0, 0.0, 0.0])  # an atom off the cluster: the cohesion term acts
    out = pdf_fit_step(stray, z, mask, target, PDF_CFG, step=0.02, cohesion=1.0)
    out_t = pdf_fit_step(stray[:, perm] @ rot.T, z[:, perm], mask, target, PDF_CFG, step=0.02, cohesion=1.0)
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
    with pytest.raises(ConfigError, match="pdf_guidance_cohesion"):
        SampleConfig(pdf_guidance=0.1, pdf_guidance_cohesion=-1.0)
    model, d = tiny(seed=0, T=20)
    _, z, _, target = _target_and_start()
    with pytest.raises(ValueError, match="pdf_guidance.*pdf_cfg"):
        sample(model, d, target, torch.tensor([22]), [13], SampleConfig(steps=4, pdf_guidance=0.1))
    with pytest.raises(ValueError, match="pdf_guidance"):
        sample(model, d, target[:, :30], torch.tensor([22]), [13], SampleConfig(steps=4, pdf_guidance=0.1),
               pdf_cfg=PDF_CFG)


FINE = PDFConfig(rmax=12.0, rstep=0.05)  # a grid fine enough to resolve the toy particle's peaks


class GaussianPriorDenoiser(torch.nn.Module):
    """The exact denoiser of a data distribution N(mu, s²·I) over positions (diffusion units) with fixed
    atom types: E[x0 | x_t] in closed form, returned as ε. No training, so no floating-point luck: its
    unguided samples are mu + s·z, a rough prior (right atoms, wrong details) for guidance to correct."""

    def __init__(self, diffusion, mu: torch.Tensor, types: torch.Tensor, s: float) -> None:
        super().__init__()
        self.diffusion, self.s = diffusion, s
        self.register_buffer("mu", mu)  # (N, 3), zero CoM
        self.register_buffer("h0", torch.nn.functional.one_hot(types, 2).float() * diffusion.model_cfg.type_scale)

    def x0(self, x: torch.Tensor, t_int: torch.Tensor) -> torch.Tensor:
        a = self.diffusion.schedule.alphas_cumprod.float()[t_int][:, None, None]
        c = self.s ** 2 * a.sqrt() / (a * self.s ** 2 + 1 - a)
        return self.mu + c * (x - a.sqrt() * self.mu)

    def forward(self, x, h, mask, t, pdf, metal, cond_mask, return_count=False):
        t_int = (t * self.diffusion.T).round().long()
        a = self.diffusion.schedule.alphas_cumprod.float()[t_int][:, None, None]
        ex = (x - a.sqrt() * self.x0(x, t_int)) / (1 - a).sqrt()
        eh = (h - a.sqrt() * self.h0) / (1 - a).sqrt()
        m = mask.unsqueeze(-1).float()
        return ex * m, eh * m


@pytest.fixture(scope="module")
def gaussian_prior():
    """Target: a toy particle's G(r). Prior: the same particle with 0.15 Å of fixed jitter per coordinate,
    and 0.05 Å of spread. R_wp of its samples is ~1; guidance must bring them near the target."""
    _, d = tiny(seed=0, T=100)
    pos, z = toy_particle(13, torch.Generator().manual_seed(0))
    mask = torch.ones(1, 13, dtype=torch.bool)
    target = simulate_safe(pos[None], z[None], mask, FINE)
    rough = pos + 0.15 * torch.randn(13, 3, generator=torch.Generator().manual_seed(1))
    rough = rough - rough.mean(0)
    scale = d.model_cfg.position_scale
    model = GaussianPriorDenoiser(d, rough / scale, (z == 8).long(), s=0.05 / scale)
    return model, d, target, z


def _fit(model, d, target, cfg, k=16):
    pdfs, metals = target.expand(k, -1), torch.full((k,), 22)
    out = sample(model, d, pdfs, metals, torch.full((k,), 13), cfg, pdf_cfg=FINE)
    assert (out.positions.sum(1).abs().max()) < 1e-4  # still zero centre of mass
    return rwp(simulate_safe(out.positions, out.numbers(metals), out.mask, FINE), pdfs), out


@pytest.mark.parametrize("steps", [None, 20])
def test_guided_sampling_fits_the_target_better_than_unguided(gaussian_prior, steps):
    """With an exact denoiser the outcome rests on guidance alone: every guided sample must fit better
    than the best unguided one, and the median by a wide margin. (Checked by hand: with the guidance step's
    sign flipped, or pdf_guidance=0, both assertions fail.)"""
    model, d, target, _ = gaussian_prior
    plain, _ = _fit(model, d, target, SampleConfig(steps=steps, seed=5))
    guided, out_a = _fit(model, d, target, SampleConfig(steps=steps, seed=5, pdf_guidance=0.3, pdf_guidance_iters=5))
    _, out_b = _fit(model, d, target, SampleConfig(steps=steps, seed=5, pdf_guidance=0.3, pdf_guidance_iters=5))
    torch.testing.assert_close(out_a.positions, out_b.positions)  # seeded: reproducible with guidance too
    assert float(guided.max()) < float(plain.min()), (guided, plain)
    assert float(guided.median()) < 0.5 * float(plain.median()), (guided, plain)


def test_guidance_lowers_the_fit_of_every_x0(gaussian_prior):
    """At every sampler time, the guide moves the exact denoiser's x̂0 down the (blurred) R_wp it steers by,
    for every structure (before the acceptance rule in pdf_fit_descent, 1-6 of 8 got worse at 15 of 20 times)."""
    from pdfusion.diffusion.pdf_guidance import PDFGuide
    from pdfusion.diffusion.samplers import strided_timesteps
    from pdfusion.pdf.fitting import blur

    model, d, target, z = gaussian_prior
    k = 8
    mask = torch.ones(k, 13, dtype=torch.bool)
    numbers = z.expand(k, -1)
    guide = PDFGuide(d, target.expand(k, -1), torch.full((k,), 22), FINE, strength=0.3, iters=5)
    gen = torch.Generator().manual_seed(7)
    h0 = model.h0.expand(k, -1, -1)
    s = d.model_cfg.position_scale

    def fit(x, width):
        g = simulate_safe(x * s, numbers, mask, FINE)
        return rwp(blur(g, width, FINE.rstep), blur(target.expand(k, -1), width, FINE.rstep))

    for t in strided_timesteps(d.T, 20):
        tt = torch.full((k,), t)
        xt = d.q_sample(model.mu.expand(k, -1, -1), tt, d.position_noise(mask, gen))
        x0 = model.x0(xt, tt)
        moved = guide(x0, h0, t, mask)
        abar = float(d.schedule.alphas_cumprod[t])
        width = min(guide.blur_max, (1 - abar) ** 0.5 / abar ** 0.5 * s)
        before, after = fit(x0, width), fit(moved, width)
        assert bool((after < before).all()), (t, before, after)
        assert float(after.median()) < 0.8 * float(before.median()), (t, before, after)


def _survivors(model, d, target, resample_at, k=16, seed=2):
    """Which rows were never replaced: rerun resample_sources on the scores sample() ranks by."""
    from pdfusion.diffusion.samplers import resample_sources

    calls = []
    orig = resample_sources

    def spy(score, groups, keep):
        src = orig(score, groups, keep)
        calls.append(src.clone())
        return src

    import pdfusion.diffusion.samplers as samplers_mod
    samplers_mod.resample_sources = spy
    try:
        fit, out = _fit(model, d, target, SampleConfig(steps=20, seed=seed, resample_at=resample_at), k=k)
    finally:
        samplers_mod.resample_sources = orig
    return fit, out, calls


def test_population_resampling_keeps_the_best_rows_and_moves_the_population_toward_the_fit():
    """Greedy SMC over the K candidates of one target: rows that rank in the kept half at every resampling time
    finish exactly as without resampling (same noise stream), the others continue from copies of kept rows, and
    the median fit improves. Exact Gaussian-prior denoiser (0.2 Å spread), so the outcome rests on the selection
    alone; resampling late (95 % of the steps), where x̂0 already tells the final fit apart."""
    _, d = tiny(seed=0, T=100)
    pos, z = toy_particle(13, torch.Generator().manual_seed(0))
    target = simulate_safe(pos[None], z[None], torch.ones(1, 13, dtype=torch.bool), FINE)
    model = GaussianPriorDenoiser(d, pos / d.model_cfg.position_scale, (z == 8).long(),
                                  s=0.2 / d.model_cfg.position_scale)
    plain_medians, resampled_medians = [], []
    for seed in (1, 2, 3):
        plain, plain_out = _fit(model, d, target, SampleConfig(steps=20, seed=seed))
        fit, out, calls = _survivors(model, d, target, (0.95,), seed=seed)
        assert len(calls) == 1
        src = calls[0]
        kept = src == torch.arange(16)
        assert int(kept.sum()) == 8 and set(src.tolist()) == set(torch.nonzero(kept).squeeze(1).tolist())
        torch.testing.assert_close(out.positions[kept], plain_out.positions[kept], atol=1e-6, rtol=0)
        assert not torch.allclose(out.positions[~kept], plain_out.positions[~kept])
        plain_medians.append(float(plain.median()))
        resampled_medians.append(float(fit.median()))
    assert sum(resampled_medians) < 0.9 * sum(plain_medians), (plain_medians, resampled_medians)


def test_resampling_with_keep_one_changes_nothing_and_needs_sampler_noise(gaussian_prior):
    model, d, target, _ = gaussian_prior
    _, a = _fit(model, d, target, SampleConfig(steps=10, seed=3), k=4)
    _, b = _fit(model, d, target, SampleConfig(steps=10, seed=3, resample_at=(0.5,), resample_keep=1.0), k=4)
    assert torch.equal(a.positions, b.positions)
    with pytest.raises(ConfigError, match="resample_at"):
        SampleConfig(steps=10, eta=0.0, resample_at=(0.5,))
    with pytest.raises(ConfigError, match="resample_at"):
        SampleConfig(steps=10, resample_at=(1.0,))
    with pytest.raises(ConfigError, match="resample_keep"):
        SampleConfig(steps=10, resample_at=(0.5,), resample_keep=0.0)
    with pytest.raises(ValueError, match="resample_at.*pdf_cfg"):
        sample(model, d, target, torch.tensor([22]), [13], SampleConfig(steps=4, resample_at=(0.5,)))


def _nearest_neighbour(pos: torch.Tensor) -> torch.Tensor:
    d = torch.cdist(pos, pos) + torch.eye(pos.shape[-2]) * 1e9
    return d.amin(-1)


def test_cohesion_pulls_a_stray_atom_back_that_the_fit_alone_leaves_out():
    """A cluster fitted to its own G(r), with one atom moved 8 Å out: 40 descent steps on R_wp alone leave it
    stray (its pairs sit at long r); with the cohesion term it comes to the penalty's bound, 3.5 Å from the
    cluster, moving alone (the rest of the cluster stays bonded). Where it lands is a local minimum: on this
    toy its R_wp ends worse than leaving it stray (0.04 vs 0.03), so whether the term pays is for the A/B."""
    start, z, mask, target = _target_and_start(jitter=0.0)
    far = start.clone()
    direction = far[0, 0] / far[0, 0].norm()
    far[0, 0] = far[0, 0] + 8.0 * direction
    plain = pdf_fit_descent(far, z, mask, target, PDF_CFG, step=0.1, iters=40, blur_width=1.0)
    pulled = pdf_fit_descent(far, z, mask, target, PDF_CFG, step=0.1, iters=40, blur_width=1.0, cohesion=10.0)
    assert float(_nearest_neighbour(plain[0])[0]) > 8.0
    nn = _nearest_neighbour(pulled[0])
    assert float(nn[0]) < 3.6 and float(nn[1:].max()) < 2.5, nn


def test_guided_sampling_with_cohesion_pulls_the_stray_atom_in(gaussian_prior):
    """Exact denoiser whose prior puts one atom 7 Å off the particle: with the same seed, sampling with the
    cohesion term ends with that atom nearer the particle in every sample (SampleConfig → PDFGuide wiring; the
    exact prior, 0.05 Å wide, keeps pulling it back, so how far it comes is for the A/B on real models)."""
    model, d, target, z = gaussian_prior
    scale = d.model_cfg.position_scale
    mu = model.mu.clone()
    mu[0] = mu[0] + 7.0 / scale * mu[0] / mu[0].norm()
    mu = mu - mu.mean(0)
    stray = GaussianPriorDenoiser(d, mu, (z == 8).long(), s=model.s)
    cfg = SampleConfig(steps=20, seed=5, pdf_guidance=0.3, pdf_guidance_iters=5)
    _, out_plain = _fit(stray, d, target, cfg, k=8)
    _, out_coh = _fit(stray, d, target, dataclasses.replace(cfg, pdf_guidance_cohesion=1.0), k=8)
    nn_plain = torch.stack([_nearest_neighbour(p)[0] for p in out_plain.positions])
    nn_coh = torch.stack([_nearest_neighbour(p)[0] for p in out_coh.positions])
    assert bool((nn_coh < nn_plain - 0.1).all()), (nn_plain, nn_coh)


def test_guidance_window_guides_only_its_share_of_the_steps(gaussian_prior):
    """pdf_guidance_window=(0.5, 1): the first half of the trajectory is exactly the unguided one, the second
    half departs from it, and the result differs from guiding every step; a window the config cannot mean is
    named."""
    model, d, target, _ = gaussian_prior
    k = 4
    pdfs, metals, counts = target.expand(k, -1), torch.full((k,), 22), torch.full((k,), 13)

    def run(**kw):
        cfg = SampleConfig(steps=10, seed=2, pdf_guidance=0.3, pdf_guidance_iters=3, **kw)
        return sample(model, d, pdfs, metals, counts, cfg, pdf_cfg=FINE, return_trajectory=True)

    plain = sample(model, d, pdfs, metals, counts, SampleConfig(steps=10, seed=2), pdf_cfg=FINE,
                   return_trajectory=True)
    late, full = run(pdf_guidance_window=(0.5, 1.0)), run()
    for i in range(6):  # the start state and the 5 unguided steps
        torch.testing.assert_close(late.trajectory[i], plain.trajectory[i], atol=0, rtol=0)
    assert not torch.allclose(late.trajectory[6], plain.trajectory[6])
    assert not torch.allclose(late.positions, full.positions)
    for bad in [(0.5, 0.5), (-0.1, 1.0), (0.0, 1.5)]:
        with pytest.raises(ConfigError, match="pdf_guidance_window"):
            SampleConfig(pdf_guidance_window=bad)


@pytest.mark.parametrize("steps", [None, 10])
def test_restarts_rerun_the_late_times_guided_after_the_pass(gaussian_prior, steps):
    """restarts=2, restart_t=30 of T=100: the pass is exactly the one without restarts; then each restart noises
    the finished sample back to t=30 and runs the sampler's times <= 30 again, guided. So the trajectory grows
    by two late runs and ends elsewhere. (Whether that fits better is for the A/B on real models: this exact
    prior, 0.05 Å wide, pulls every restart back to the same basin.)"""
    model, d, target, _ = gaussian_prior
    k = 8
    pdfs, metals, counts = target.expand(k, -1), torch.full((k,), 22), torch.full((k,), 13)
    base = SampleConfig(steps=steps, seed=2, pdf_guidance=0.3, pdf_guidance_iters=3, pdf_guidance_window=(0.8, 1.0))
    one = sample(model, d, pdfs, metals, counts, base, pdf_cfg=FINE, return_trajectory=True)
    more = sample(model, d, pdfs, metals, counts, dataclasses.replace(base, restarts=2, restart_t=30), pdf_cfg=FINE,
                  return_trajectory=True)
    n_pass = len(one.trajectory)
    n_late = 30 if steps is None else 4  # times 30..1, or 30 and the strided 23, 12, 1
    assert len(more.trajectory) == n_pass + 2 * n_late
    for a, b in zip(one.trajectory, more.trajectory[:n_pass], strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert not torch.allclose(more.positions, one.positions)
    assert torch.isfinite(more.positions).all() and (more.positions.sum(1).abs().max()) < 1e-4
    for field, value in (("restarts", -1), ("restart_t", 0)):
        with pytest.raises(ConfigError, match=field):
            SampleConfig(**{field: value})
