"""Self-conditioning (model.self_condition): the previous estimate (x̂0, ĥ0) is an input of the denoiser."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny, toy_batch
from test_model import ATOL, inputs, random_orthogonal

from pdfusion.config import SampleConfig
from pdfusion.diffusion import sample
from pdfusion.diffusion.geometry import remove_mean

VARIANTS = {"plain": dict(cutoff=4.0), "edge_pdf": dict(cutoff=4.0, edge_pdf="raw", pdf_rstep=0.5),
            "noise_aware": dict(cutoff=None, edge_pdf="noise_aware", pdf_rstep=0.5)}


@pytest.fixture(params=list(VARIANTS), scope="module")
def model(request):
    m, _ = tiny(seed=5, self_condition=True, **VARIANTS[request.param])
    with torch.no_grad():  # non-trivial coordinate heads, including the gate on x̂0 − x_t
        for blk in m.egnn.blocks:
            blk.coord_mlp[-1].weight.normal_(0, 0.3)
        m.egnn.out.weight.normal_(0, 0.3)
    return m.eval()


def _estimate(x, h, mask, seed=11):
    g = torch.Generator().manual_seed(seed)
    m = mask.unsqueeze(-1).float()
    return (remove_mean(x + 0.4 * torch.randn(x.shape, generator=g), mask),
            (h + 0.2 * torch.randn(h.shape, generator=g)) * m)


@pytest.mark.parametrize("reflect", [False, True], ids=["rotation", "reflection"])
def test_equivariant_when_the_estimate_moves_with_the_input(model, reflect):
    x, h, mask, t, pdf, metal, cm = inputs([9, 14])
    xh, hh = _estimate(x, h, mask)
    g = torch.Generator().manual_seed(7)
    q = random_orthogonal(g, reflect)
    shift = torch.randn(1, 1, 3, generator=g) * 5
    m = mask.unsqueeze(-1)
    ex, eh = model(x, h, mask, t, pdf, metal, cm, self_cond=(xh, hh))
    ex2, eh2 = model((x @ q.T + shift) * m, h, mask, t, pdf, metal, cm, self_cond=((xh @ q.T + shift) * m, hh))
    torch.testing.assert_close(ex2, ex @ q.T, atol=ATOL, rtol=0)
    torch.testing.assert_close(eh2, eh, atol=ATOL, rtol=0)


def test_permutation_equivariant_and_padding_blind(model):
    x, h, mask, t, pdf, metal, cm = inputs([12, 12])
    xh, hh = _estimate(x, h, mask)
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(1))
    ex, eh = model(x, h, mask, t, pdf, metal, cm, self_cond=(xh, hh))
    ex2, _ = model(x[:, perm], h[:, perm], mask[:, perm], t, pdf, metal, cm, self_cond=(xh[:, perm], hh[:, perm]))
    torch.testing.assert_close(ex2, ex[:, perm], atol=ATOL, rtol=0)
    pad = [torch.cat([a, a.new_zeros(a.shape[0], 5, *a.shape[2:])], 1) for a in (x, h, mask, xh, hh)]
    exp, ehp = model(*pad[:3], t, pdf, metal, cm, self_cond=(pad[3], pad[4]))
    torch.testing.assert_close(exp[:, :12], ex, atol=ATOL, rtol=0)
    torch.testing.assert_close(ehp[:, :12], eh, atol=ATOL, rtol=0)


def test_the_estimate_is_used_and_none_means_no_estimate(model):
    x, h, mask, t, pdf, metal, cm = inputs([9, 14])
    without, _ = model(x, h, mask, t, pdf, metal, cm)
    with_est, _ = model(x, h, mask, t, pdf, metal, cm, self_cond=_estimate(x, h, mask))
    assert (with_est - without).abs().max() > 1e-2


def test_a_model_without_self_conditioning_refuses_an_estimate():
    m, _ = tiny(seed=5, cutoff=4.0)
    x, h, mask, t, pdf, metal, cm = inputs([9, 14])
    with pytest.raises(ValueError, match="self_cond"):
        m(x, h, mask, t, pdf, metal, cm, self_cond=(x, h))


def test_training_feeds_a_first_estimate_on_some_batches_and_its_inputs_learn():
    model, diffusion = tiny(seed=6, cutoff=4.0, edge_pdf="raw", pdf_rstep=0.5, self_condition=True)
    batch = toy_batch([9, 14, 11])
    seen = []
    orig = model.forward

    def spy(*a, **kw):
        seen.append(kw.get("self_cond") is not None)
        return orig(*a, **kw)

    model.forward = spy
    g = torch.Generator().manual_seed(0)
    grads = []
    for _ in range(12):
        model.zero_grad()
        loss, _ = diffusion.training_loss(model, batch, g)
        loss.backward()
        grads.append(float(model.egnn.embed.weight.grad[:, -(model.cfg.n_types + 2):].abs().sum()))
    # each self-conditioned batch is one no-grad pass without, then one with the estimate
    assert any(seen) and not all(seen)
    assert max(grads) > 0  # the estimate's node inputs receive gradient when present


def test_sampler_feeds_each_steps_estimate_to_the_next():
    model, diffusion = tiny(seed=7, cutoff=4.0, self_condition=True)
    batch = toy_batch([8, 10])
    calls = []
    orig = model.forward

    def spy(x, h, mask, t, *a, **kw):
        calls.append(kw.get("self_cond"))
        return orig(x, h, mask, t, *a, **kw)

    model.forward = spy
    out = sample(model, diffusion, batch.pdf, batch.metal, [8, 10], SampleConfig(steps=5, guidance=1.0, eta=1.0))
    assert calls[0] is None and all(c is not None for c in calls[1:]) and len(calls) == 5
    xh, hh = calls[-1]
    assert xh.shape == (2, 10, 3) and bool((xh[1, 10:] == 0).all()) and bool((xh[0, 8:] == 0).all())
    assert xh.abs().max() <= diffusion.model_cfg.coords_range
    assert torch.isfinite(out.positions).all()


def test_raw_estimate_is_the_networks_own_and_clean_is_the_clipped_one():
    """`self_cond_estimate`: "raw" feeds back x̂0 from the network's ε (what training shows it), "clean" the x̂0
    after clipping. Without clipping both are the same; with a clip that bites, only "clean" is bounded by it."""
    model, diffusion = tiny(seed=7, cutoff=4.0, self_condition=True)
    batch = toy_batch([8, 10])
    with torch.no_grad():  # large coordinate outputs, so a small clip radius changes x̂0
        model.egnn.out.weight.normal_(0, 3.0)

    def fed(**kw):
        calls, orig = [], model.forward

        def spy(x, h, mask, t, *a, **k):
            calls.append(k.get("self_cond"))
            return orig(x, h, mask, t, *a, **k)

        model.forward = spy
        try:
            sample(model, diffusion, batch.pdf, batch.metal, [8, 10], SampleConfig(steps=4, eta=0.0, **kw))
        finally:
            model.forward = orig
        return [c[0] for c in calls[1:]]

    for a, b in zip(fed(clip_x0=None, self_cond_estimate="raw"), fed(clip_x0=None, self_cond_estimate="clean"),
                    strict=True):
        torch.testing.assert_close(a, b)
    radius = 0.5  # Å
    clean = fed(clip_x0=radius, self_cond_estimate="clean")
    raw = fed(clip_x0=radius, self_cond_estimate="raw")
    limit = 2 * radius / diffusion.model_cfg.position_scale  # re-centring after the clip may move atoms a little
    assert all(float(c.norm(dim=-1).max()) <= limit for c in clean)
    assert any(float(r.norm(dim=-1).max()) > limit for r in raw)


@pytest.mark.parametrize("lag", [0, 3])
def test_training_estimate_comes_from_t_plus_the_lag(lag):
    """`diffusion.self_cond_lag`: the first (no-grad) pass sees the same noise at t + lag (clamped to T), as the
    sampler's fed-back estimate comes from its previous, noisier step; the second pass is at t."""
    import dataclasses

    from pdfusion.diffusion import GaussianDiffusion

    model, diffusion = tiny(seed=6, cutoff=4.0, self_condition=True)
    diffusion = GaussianDiffusion(diffusion.schedule, diffusion.model_cfg,
                                  dataclasses.replace(diffusion.diffusion_cfg, self_cond_lag=lag))
    batch = toy_batch([9, 14, 11])
    calls = []
    orig = model.forward

    def spy(x, h, mask, t, *a, **kw):
        calls.append((t.clone(), x.clone(), kw.get("self_cond") is not None))
        return orig(x, h, mask, t, *a, **kw)

    model.forward = spy
    g = torch.Generator().manual_seed(0)
    pairs = 0
    for _ in range(12):
        calls.clear()
        diffusion.training_loss(model, batch, g)
        if len(calls) == 2:
            (t1, x1, sc1), (t2, x2, sc2) = calls
            assert not sc1 and sc2
            T = diffusion.T
            expect = torch.clamp(torch.round(t2 * T) + lag, max=T) / T
            torch.testing.assert_close(t1, expect)
            assert torch.equal(x1, x2) == (lag == 0 or bool((expect == t2).all()))
            pairs += 1
    assert pairs > 0
