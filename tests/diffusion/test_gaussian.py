"""Forward process, encoding and training loss of GaussianDiffusion."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny, tiny_model_cfg, toy_batch

from pdfusion.data.batching import DenseBatch
from pdfusion.diffusion import NonFiniteError, remove_mean


def test_encode_centres_scales_and_one_hots():
    _, d = tiny()
    batch = toy_batch([7, 11])
    shifted = DenseBatch(pos=(batch.pos + torch.tensor([3.0, -1.0, 2.0])) * batch.mask.unsqueeze(-1), z=batch.z,
                         mask=batch.mask, pdf=batch.pdf, metal=batch.metal, n_atoms=batch.n_atoms)
    x, h = d.encode(shifted)
    assert x.sum(1).abs().max() < 1e-5
    torch.testing.assert_close(x * d.model_cfg.position_scale, remove_mean(batch.pos, batch.mask), atol=1e-5, rtol=0)
    types = (batch.z == 8).long()
    assert torch.equal(h.argmax(-1)[batch.mask], types[batch.mask])
    assert h.max() == pytest.approx(d.model_cfg.type_scale)
    assert h[~batch.mask].abs().max() == 0
    pos, t = d.decode(x, h, batch.mask)
    torch.testing.assert_close(pos, remove_mean(batch.pos, batch.mask), atol=1e-5, rtol=0)
    assert torch.equal(t, types * batch.mask)


def test_q_sample_is_the_closed_form_and_noise_is_zero_com():
    _, d = tiny(T=50)
    batch = toy_batch([6, 9])
    x0, _ = d.encode(batch)
    g = torch.Generator().manual_seed(0)
    eps = d.position_noise(batch.mask, g)
    assert eps.sum(1).abs().max() < 1e-5 and eps[~batch.mask].abs().max() == 0
    t = torch.tensor([1, 50])
    xt = d.q_sample(x0, t, eps)
    a = d.schedule.alphas_cumprod[t].float().view(-1, 1, 1)
    torch.testing.assert_close(xt, a.sqrt() * x0 + (1 - a).sqrt() * eps)
    assert xt.sum(1).abs().max() < 1e-5  # stays in the zero-CoM subspace
    torch.testing.assert_close(d.predict_x0(xt, t, eps), x0, atol=1e-4, rtol=0)


def test_posterior_uses_the_schedule_coefficients_and_keeps_zero_com():
    _, d = tiny(T=50)
    batch = toy_batch([6, 9])
    x0, _ = d.encode(batch)
    t = torch.tensor([1, 25])
    xt = d.q_sample(x0, t, d.position_noise(batch.mask, torch.Generator().manual_seed(1)))
    mean, var = d.posterior_mean_var(x0, xt, t)
    s = d.schedule
    for i, ti in enumerate(t.tolist()):
        want = float(s.posterior_mean_coef1[ti]) * x0[i] + float(s.posterior_mean_coef2[ti]) * xt[i]
        torch.testing.assert_close(mean[i], want, atol=1e-5, rtol=0)
        assert float(var[i]) == pytest.approx(float(s.posterior_variance[ti]), rel=1e-5)
    assert mean.sum(1).abs().max() < 1e-5


def test_training_loss_metrics_and_condition_dropout():
    model, d = tiny(p_uncond=0.5)
    batch = toy_batch([5, 8, 12, 6])
    loss, m = d.training_loss(model, batch, torch.Generator().manual_seed(0), count_loss_weight=0.1)
    assert loss.requires_grad and set(m) >= {"loss", "loss_x", "loss_h", "loss_count", "p_cond"}
    assert m["loss"] == pytest.approx(m["loss_x"] + m["loss_h"] + 0.1 * m["loss_count"], rel=1e-5)
    loss.backward()
    assert model.count_head[0].weight.grad.abs().sum() > 0
    # p_uncond = 1 / no condition: every row uses the null embedding and the count head is skipped
    _, d1 = tiny(p_uncond=1.0)
    _, m1 = d1.training_loss(model, batch, torch.Generator().manual_seed(0), count_loss_weight=0.1)
    assert m1["p_cond"] == 0.0
    toy = DenseBatch(pos=batch.pos, z=batch.z, mask=batch.mask, pdf=None, metal=None, n_atoms=batch.n_atoms)
    _, m2 = d.training_loss(model, toy, torch.Generator().manual_seed(0))
    assert m2["p_cond"] == 0.0 and m2["loss_count"] == 0.0


def test_same_generator_gives_the_same_loss():
    model, d = tiny()
    batch = toy_batch([5, 8])
    a = d.training_loss(model, batch, torch.Generator().manual_seed(4))[0]
    b = d.training_loss(model, batch, torch.Generator().manual_seed(4))[0]
    assert torch.equal(a, b)


def test_loss_decreases_on_a_toy_set():
    torch.set_num_threads(1)
    model, d = tiny(seed=1, T=50, hidden=32, layers=3)
    data = [toy_batch([6, 9, 12, 8], seed=s) for s in range(4)]

    def eval_loss() -> float:
        with torch.no_grad():
            return sum(d.training_loss(model, b, torch.Generator().manual_seed(100 + i),
                                       count_loss_weight=0.1)[0].item()
                       for i, b in enumerate(data * 3)) / (3 * len(data))

    before = eval_loss()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    for step in range(60):
        loss, _ = d.training_loss(model, data[step % len(data)], g, count_loss_weight=0.1, step=step)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    after = eval_loss()
    assert after < 0.8 * before, (before, after)


def test_non_finite_batch_raises_naming_the_tensor():
    model, d = tiny()
    batch = toy_batch([5, 8])
    batch.pos[1, 2, 0] = float("inf")
    with pytest.raises(NonFiniteError, match=r"^batch\.pos"):
        d.training_loss(model, batch)


def test_non_finite_loss_names_the_step():
    model, d = tiny()
    with torch.no_grad():
        model.egnn.out.bias.fill_(1e30)  # eps_h finite, but its square overflows float32
    with pytest.raises(NonFiniteError, match="loss: .* at step 17"):
        d.training_loss(model, toy_batch([5, 8]), step=17)


def test_too_many_atoms_for_the_count_head_is_a_clear_error():
    model, d = tiny(max_atoms=8)
    with pytest.raises(ValueError, match="model.max_atoms"):
        d.training_loss(model, toy_batch([5, 12]))


def test_min_snr_weighting_is_the_closed_form_and_uniform_is_one():
    import dataclasses

    from pdfusion.diffusion import GaussianDiffusion

    model, d = tiny(seed=3, T=20)
    t = torch.arange(1, 21)
    torch.testing.assert_close(d.loss_weights(t), torch.ones(20))
    dcfg = dataclasses.replace(d.diffusion_cfg, loss_weighting="min_snr", min_snr_gamma=2.0)
    dw = GaussianDiffusion(d.schedule, d.model_cfg, dcfg)
    abar = d.schedule.alphas_cumprod[t]
    snr = abar / (1 - abar)
    expected = torch.minimum(snr, torch.tensor(2.0, dtype=snr.dtype)) / snr
    torch.testing.assert_close(dw.loss_weights(t), expected.float())
    assert float(dw.loss_weights(t).max()) == pytest.approx(1.0) and float(dw.loss_weights(t)[0]) < 0.1
    # same noise and t: the weighted loss is the per-sample-weighted ε-MSE; uniform is the plain one
    batch = toy_batch([6, 9, 7])
    lu, mu = d.training_loss(model, batch, torch.Generator().manual_seed(0), count_loss_weight=0.0)
    lw, mw = dw.training_loss(model, batch, torch.Generator().manual_seed(0), count_loss_weight=0.0)
    assert float(lw.detach()) < float(lu.detach()) and mw["p_cond"] == mu["p_cond"]


def test_unknown_loss_weighting_is_a_clear_error():
    from pdfusion.config import ConfigError, DiffusionConfig

    with pytest.raises(ConfigError, match="loss_weighting"):
        DiffusionConfig(loss_weighting="snr+")


def test_bond_length_frame_encodes_one_shape_at_every_size():
    """With model.bond_length set, a particle and its 1.3x swollen copy encode to the same x (one shape to learn),
    whose median metal–oxygen bond is bond_length; padding stays zero."""
    from pdfusion.structures.bonds import median_metal_oxygen_bond

    _, d = tiny(bond_length=2.1)
    batch = toy_batch([9, 9, 13])
    pos = batch.pos.clone()
    pos[1] = 1.3 * pos[0]
    swollen = DenseBatch(pos=pos, z=batch.z, mask=batch.mask, pdf=batch.pdf, metal=batch.metal, n_atoms=batch.n_atoms)
    x, _ = d.encode(swollen)
    torch.testing.assert_close(x[1], x[0], atol=1e-5, rtol=0)
    bonds = median_metal_oxygen_bond(x * d.model_cfg.position_scale, batch.z, batch.mask)
    torch.testing.assert_close(bonds, torch.full((3,), 2.1), atol=1e-5, rtol=0)
    assert x[~batch.mask].abs().max() == 0
    with pytest.raises(ValueError, match="model.bond_length"):
        tiny_model_cfg(bond_length=0.0)


def test_lognormal_time_sampling_spends_steps_where_order_forms():
    """t_sampling='lognormal' draws σ = √((1−ᾱ)/ᾱ) log-normally: the median σ is exp(mean), and far fewer
    steps land in the pure-noise half of the schedule than with uniform t."""
    from pdfusion.config import DiffusionConfig, ScheduleConfig
    from pdfusion.diffusion import GaussianDiffusion, build_schedule

    sched = ScheduleConfig(timesteps=500)
    s = build_schedule(sched)
    gen = torch.Generator().manual_seed(0)
    logn = (GaussianDiffusion(s, None, DiffusionConfig(schedule=sched, t_sampling="lognormal"))
            .sample_times(20000, gen, "cpu"))
    unif = GaussianDiffusion(s, None, DiffusionConfig(schedule=sched)).sample_times(20000, gen, "cpu")
    assert int(logn.min()) >= 1 and int(logn.max()) <= 500
    abar = s.alphas_cumprod[logn.median()]
    assert abs(float(((1 - abar) / abar).sqrt().log()) - (-1.9)) < 0.05
    assert float((logn > 250).float().mean()) < 0.1 < 0.4 < float((unif > 250).float().mean())
