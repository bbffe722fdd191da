"""One contract for every noise schedule: add a schedule to SCHEDULES and it is tested here."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pdfusion.config import SCHEDULES, ScheduleConfig
from pdfusion.diffusion.schedules import NoiseSchedule, build_schedule

CASES = [(name, T) for name in SCHEDULES for T in (50, 1000)]


@pytest.fixture(params=CASES, ids=[f"{n}-T{t}" for n, t in CASES])
def schedule(request) -> NoiseSchedule:
    name, T = request.param
    return build_schedule(ScheduleConfig(name=name, timesteps=T))


def test_alphas_cumprod_strictly_decreasing_in_unit_interval(schedule):
    a = schedule.alphas_cumprod
    assert a.shape == (schedule.timesteps + 1,)
    assert (a > 0).all() and (a <= 1).all()
    assert (a[1:] < a[:-1]).all()
    assert a[0] > 0.99 and a[-1] < 0.01  # starts at the data, ends at (almost) pure noise
    assert torch.allclose(schedule.sqrt_alphas_cumprod ** 2 + schedule.sqrt_one_minus_alphas_cumprod ** 2,
                          torch.ones_like(a), atol=1e-12)


def test_closed_form_equals_composition_of_per_step_gaussians(schedule):
    """q(x_t|x_0) = N(√ᾱ_t x0, 1-ᾱ_t) must equal composing N(√(1-β_s) x_{s-1}, β_s) for s = 0..t."""
    mean_coef, var = 1.0, 0.0
    for t in range(schedule.timesteps + 1):
        b = float(schedule.betas[t])
        mean_coef = mean_coef * (1 - b) ** 0.5
        var = (1 - b) * var + b
        assert mean_coef == pytest.approx(float(schedule.sqrt_alphas_cumprod[t]), rel=1e-9, abs=1e-12)
        assert var == pytest.approx(1 - float(schedule.alphas_cumprod[t]), rel=1e-9, abs=1e-12)


def test_closed_form_matches_monte_carlo_chain(schedule):
    g = torch.Generator().manual_seed(0)
    x0 = torch.full((20_000,), 1.5, dtype=torch.float64)
    x = x0.clone()
    checkpoints = {1, schedule.timesteps // 3, schedule.timesteps}
    for t in range(schedule.timesteps + 1):
        b = schedule.betas[t]
        x = (1 - b).sqrt() * x + b.sqrt() * torch.randn(x.shape, generator=g, dtype=torch.float64)
        if t in checkpoints:
            mean = float(schedule.sqrt_alphas_cumprod[t]) * 1.5
            var = 1 - float(schedule.alphas_cumprod[t])
            se = (var / x.numel()) ** 0.5
            assert abs(float(x.mean()) - mean) < 5 * se + 1e-9
            assert float(x.var()) == pytest.approx(var, rel=0.06, abs=1e-9)


def test_posterior_matches_bayes_rule(schedule):
    """Posterior coefficients against the product of the two Gaussians, written independently."""
    a = schedule.alphas_cumprod.numpy()
    for t in (1, 2, schedule.timesteps // 2, schedule.timesteps):
        a_prev, alpha_t = a[t - 1], a[t] / a[t - 1]
        beta_t = 1 - alpha_t
        prec = 1 / (1 - a_prev) + alpha_t / beta_t if a_prev < 1 else np.inf
        var = 1 / prec
        x0, xt = 0.7, -1.3
        mean = var * (np.sqrt(a_prev) * x0 / (1 - a_prev) + np.sqrt(alpha_t) * xt / beta_t) if a_prev < 1 else x0
        assert float(schedule.posterior_variance[t]) == pytest.approx(var, rel=1e-8, abs=1e-14)
        got = float(schedule.posterior_mean_coef1[t]) * x0 + float(schedule.posterior_mean_coef2[t]) * xt
        assert got == pytest.approx(mean, rel=1e-8, abs=1e-12)


def test_round_trips_through_its_config(schedule):
    blob = json.dumps(schedule.to_config())
    again = NoiseSchedule.from_config(json.loads(blob))
    assert again.name == schedule.name and again.timesteps == schedule.timesteps
    for tab in ("betas", "alphas_cumprod", "posterior_variance", "posterior_mean_coef1", "posterior_mean_coef2"):
        assert torch.equal(getattr(again, tab), getattr(schedule, tab))


def test_gather_broadcasts_and_rejects_out_of_range(schedule):
    like = torch.zeros(3, 5, 3)
    out = schedule.gather("alphas_cumprod", torch.tensor([0, 1, schedule.timesteps]), like)
    assert out.shape == (3, 1, 1) and out.dtype == torch.float32
    with pytest.raises(ValueError, match="0.."):
        schedule.gather("alphas_cumprod", torch.tensor([schedule.timesteps + 1]), like)


# ---------------------------------------------------------------- per-schedule closed forms
@pytest.mark.parametrize("T", [1000, 200])
def test_linear_betas_are_the_ddpm_line(T):
    s = build_schedule(ScheduleConfig(name="linear", timesteps=T))
    k = 1000 / T  # DDPM's line at T = 1000, rescaled for other T
    assert float(s.betas[0]) == pytest.approx(1e-4 * k, rel=1e-9)
    assert float(s.betas[-1]) == pytest.approx(0.02 * k, rel=1e-9)
    assert np.allclose(np.diff(s.betas.numpy()), (0.02 - 1e-4) * k / T, rtol=1e-6)


def test_cosine_is_nichol_dhariwal_with_clipped_betas():
    T, s_ = 1000, 0.008
    s = build_schedule(ScheduleConfig(name="cosine", timesteps=T, cosine_s=s_))
    f = np.cos(((np.arange(T + 1) / T) + s_) / (1 + s_) * np.pi / 2) ** 2
    assert (s.betas <= 0.999 + 1e-12).all()
    assert np.allclose(s.alphas_cumprod.numpy()[:900], (f / f[0])[:900], rtol=1e-9)


def test_polynomial_is_edm_polynomial_2():
    """Independent numpy transcription of EDM's polynomial_schedule + clip_noise_schedule."""
    T, prec = 500, 1e-5
    steps = T + 1
    x = np.linspace(0, steps, steps)
    a2 = (1 - np.power(x / steps, 2.0)) ** 2
    a2 = np.concatenate([np.ones(1), a2])
    a2 = np.cumprod(np.clip(a2[1:] / a2[:-1], 0.001, 1.0))
    a2 = (1 - 2 * prec) * a2 + prec
    s = build_schedule(ScheduleConfig(name="polynomial", timesteps=T, precision=prec))
    assert np.allclose(s.alphas_cumprod.numpy(), a2, rtol=1e-12)
    assert float(s.alphas_cumprod[0]) == pytest.approx(1 - prec, abs=1e-12)
