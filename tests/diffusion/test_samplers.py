"""Samplers: zero CoM, guidance convention, one batched forward pass, reproducibility, finite guards."""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
from helpers import tiny, toy_batch

from pdfusion.config import SampleConfig
from pdfusion.diffusion import NonFiniteError, guided_epsilon, predict_n_atoms, sample, strided_timesteps


@pytest.fixture(scope="module")
def setup():
    model, d = tiny(seed=2, T=20)
    with torch.no_grad():  # non-trivial coordinate head so conditional and unconditional differ visibly
        for blk in model.egnn.blocks:
            blk.coord_mlp[-1].weight.normal_(0, 0.3)
    batch = toy_batch([5, 9, 7])
    return model.eval(), d, batch


CFGS = {"ddpm": SampleConfig(guidance=1.0), "ddim": SampleConfig(guidance=2.0, steps=6),
        "ddim-eta": SampleConfig(guidance=0.5, steps=6, eta=1.0)}


@pytest.mark.parametrize("name", list(CFGS))
def test_samples_have_zero_com_right_shapes_and_types(setup, name):
    model, d, batch = setup
    out = sample(model, d, batch.pdf, batch.metal, batch.n_atoms, CFGS[name], return_trajectory=True)
    assert out.positions.shape == (3, 9, 3) and out.types.shape == (3, 9)
    assert torch.equal(out.mask, batch.mask)
    scale = out.positions.abs().max().clamp(min=1.0)
    assert (out.positions.sum(1).abs() / scale).max() < 1e-5
    assert out.positions[~out.mask].abs().max() == 0
    assert set(out.types.unique().tolist()) <= {0, 1}
    steps = d.T if CFGS[name].steps is None else CFGS[name].steps
    assert len(out.trajectory) == steps + 1
    for frame in out.trajectory:
        assert (frame.sum(1).abs() / frame.abs().max().clamp(min=1.0)).max() < 1e-5
    z = out.numbers(batch.metal)
    assert set(z[out.mask].unique().tolist()) <= {8, 22} and z[~out.mask].abs().max() == 0


@pytest.mark.parametrize("steps", [None, 5])
def test_same_seed_reproduces_and_other_seed_differs(setup, steps):
    model, d, batch = setup
    cfg = SampleConfig(guidance=1.5, steps=steps, eta=0.3, seed=11)
    a = sample(model, d, batch.pdf, batch.metal, batch.n_atoms, cfg)
    b = sample(model, d, batch.pdf, batch.metal, batch.n_atoms, cfg)
    c = sample(model, d, batch.pdf, batch.metal, batch.n_atoms,
               SampleConfig(guidance=1.5, steps=steps, eta=0.3, seed=12))
    assert torch.equal(a.positions, b.positions) and torch.equal(a.types, b.types)
    assert not torch.equal(a.positions, c.positions)


def test_guidance_convention_in_one_batched_pass(setup):
    model, d, batch = setup
    x, h = d.encode(batch)
    t = torch.full((3,), 0.4)
    b = batch
    cond = model(x, h, b.mask, t, b.pdf, b.metal, torch.ones(3, dtype=torch.bool))
    unc = model(x, h, b.mask, t, b.pdf, b.metal, torch.zeros(3, dtype=torch.bool))
    assert (cond[0] - unc[0]).abs().max() > 1e-4
    calls = []
    hook = model.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    try:
        for gamma in (0.0, 1.0, 2.5):
            calls.clear()
            ex, eh = guided_epsilon(model, x, h, b.mask, t, b.pdf, b.metal, gamma, shortcut=False)
            assert calls == [6]  # conditional and unconditional halves in ONE forward of 2B rows
            torch.testing.assert_close(ex, (1 - gamma) * unc[0] + gamma * cond[0], atol=1e-5, rtol=0)
            torch.testing.assert_close(eh, (1 - gamma) * unc[1] + gamma * cond[1], atol=1e-5, rtol=0)
        calls.clear()
        guided_epsilon(model, x, h, b.mask, t, b.pdf, b.metal, 0.0)
        guided_epsilon(model, x, h, b.mask, t, b.pdf, b.metal, 1.0)
        assert calls == [3, 3]  # γ = 0 and γ = 1 only run the half they need
    finally:
        hook.remove()


def test_guidance_zero_is_unconditional_and_one_is_conditional(setup):
    model, d, batch = setup
    # unclipped: the hand-written loop below is plain DDIM (clipping has its own tests in test_clip.py)
    cfg0 = SampleConfig(guidance=0.0, steps=5, clip_x0=None, eta=0.0)  # deterministic DDIM, as written out below
    cfg1 = SampleConfig(guidance=1.0, steps=5, clip_x0=None, eta=0.0)
    g0 = sample(model, d, batch.pdf, batch.metal, batch.n_atoms, cfg0)
    unconditional = sample(model, d, None, None, batch.n_atoms, cfg0)
    assert torch.equal(g0.positions, unconditional.positions)
    g1 = sample(model, d, batch.pdf, batch.metal, batch.n_atoms, cfg1)
    assert not torch.allclose(g1.positions, g0.positions)
    # γ = 1 through the sampler equals a hand-written DDIM loop with the plain conditional model
    gen = torch.Generator().manual_seed(cfg1.seed)
    mask = batch.mask
    x, h = d.position_noise(mask, gen), d.type_noise(mask, gen)
    ts = strided_timesteps(d.T, 5)
    abar = d.schedule.alphas_cumprod
    for tn, ts_ in zip(ts, ts[1:] + [0], strict=True):
        ex, eh = model(x, h, mask, torch.full((3,), tn / d.T), batch.pdf, batch.metal, torch.ones(3, dtype=torch.bool))
        a_t, a_s = float(abar[tn]), (float(abar[ts_]) if ts_ > 0 else 1.0)  # the last step returns x̂_0
        x = (a_s / a_t) ** 0.5 * (x - (1 - a_t) ** 0.5 * ex) + (1 - a_s) ** 0.5 * ex
        h = (a_s / a_t) ** 0.5 * (h - (1 - a_t) ** 0.5 * eh) + (1 - a_s) ** 0.5 * eh
        x = x - (x * mask[..., None]).sum(1, keepdim=True) / mask.sum(1).view(-1, 1, 1)
        x, h = x * mask[..., None], h * mask[..., None]
    torch.testing.assert_close(g1.positions, x * d.model_cfg.position_scale, atol=1e-3, rtol=1e-4)


def test_strided_timesteps():
    assert strided_timesteps(1000, 1) == [1000]
    ts = strided_timesteps(1000, 100)
    assert len(ts) == 100 and ts[0] == 1000 and ts[-1] == 1 and all(a > b for a, b in zip(ts, ts[1:], strict=False))
    assert strided_timesteps(20, 50) == list(range(20, 0, -1))


def test_predict_n_atoms_samples_from_the_count_head(setup):
    model, d, batch = setup
    g = torch.Generator().manual_seed(0)
    n = predict_n_atoms(model, batch.pdf, batch.metal, g)
    assert n.shape == (3,) and n.dtype == torch.long
    assert (n >= 2).all() and (n <= model.cfg.max_atoms).all()
    assert torch.equal(n, predict_n_atoms(model, batch.pdf, batch.metal, torch.Generator().manual_seed(0)))
    # a count head that puts all mass on N = 7 must return 7
    with _count_head_logits(model, {6: 1e4}):
        assert predict_n_atoms(model, batch.pdf, batch.metal, g).tolist() == [7, 7, 7]


@contextlib.contextmanager
def _count_head_logits(model, logits: dict[int, float]):
    """The count head made input-independent: class k (N = k + 1) gets logits[k], every other -1e4; restored after."""
    last = model.count_head[-1]
    saved = (last.weight.clone(), last.bias.clone())
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(-1e4)
        for k, v in logits.items():
            last.bias[k] = v
    try:
        yield
    finally:
        with torch.no_grad():
            last.weight.copy_(saved[0])
            last.bias.copy_(saved[1])


def test_count_temperature_sharpens_the_size_draw_toward_the_mode(setup):
    """p(N=7) = 0.6, p(N=8) = 0.4: T = 1 draws 7 with 0.6, T = 1/4 with 0.6^4 / (0.6^4 + 0.4^4) = 0.835,
    T → 0 always."""
    model, d, batch = setup
    pdf, metal = batch.pdf.repeat(1000, 1), batch.metal.repeat(1000)

    def share_of_7(t):
        n = predict_n_atoms(model, pdf, metal, torch.Generator().manual_seed(1), temperature=t)
        assert set(n.tolist()) <= {7, 8}
        return float((n == 7).double().mean())

    with _count_head_logits(model, {6: math.log(0.6), 7: math.log(0.4)}):
        assert abs(share_of_7(1.0) - 0.6) < 0.03
        assert abs(share_of_7(0.25) - 0.835) < 0.03
        assert share_of_7(0.01) == 1.0
        with pytest.raises(ValueError, match="temperature"):
            predict_n_atoms(model, pdf, metal, temperature=0.0)


class _ExplodingModel(torch.nn.Module):
    """Returns inf noise predictions once t drops below one half."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x, h, mask, t, pdf, metal, cond_mask):
        ex, eh = self.inner(x, h, mask, t, pdf, metal, cond_mask)
        if float(t.max()) < 0.5:
            ex = ex + float("inf")
        return ex, eh


def test_sampler_raises_on_non_finite_state_naming_the_step(setup):
    model, d, batch = setup
    with pytest.raises(NonFiniteError, match=r"sampler\.x: .* at step 9"):
        sample(_ExplodingModel(model), d, batch.pdf, batch.metal, batch.n_atoms, SampleConfig())


def test_bad_sampler_inputs_are_clear_errors(setup):
    model, d, batch = setup
    with pytest.raises(ValueError, match="pdf: expected"):
        sample(model, d, batch.pdf[:2], batch.metal, batch.n_atoms, SampleConfig(steps=2))
    with pytest.raises(ValueError, match="n_atoms"):
        sample(model, d, batch.pdf, batch.metal, [3, 0, 2], SampleConfig(steps=2))
    bad = batch.pdf.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="^pdf"):
        sample(model, d, bad, batch.metal, batch.n_atoms, SampleConfig(steps=2))


# ------------------------------------------------------------------ samplers against closed-form oracles
class _Oracle(torch.nn.Module):
    """The exact ε-predictor E[ε | x_t] for data x0 ~ N(mean, s²) per coordinate (s = 0: a point mass),
    so a correct sampler must reproduce that distribution; no training involved."""

    def __init__(self, diffusion, mean_x, mean_h, s):
        super().__init__()
        self.d, self.mean_x, self.mean_h, self.s = diffusion, mean_x, mean_h, s
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x, h, mask, t, pdf, metal, cond_mask):
        ti = torch.round(t * self.d.T).long()
        a = self.d.schedule.alphas_cumprod[ti].float().view(-1, 1, 1)
        m = mask.unsqueeze(-1).float()

        def eps(z, mu):
            # x_t = √a·x0 + √(1-a)·ε with x0 ~ N(mu, s²): E[ε | x_t] = √(1-a)(x_t - √a·mu) / (a s² + 1 - a)
            return (1 - a).sqrt() * (z - a.sqrt() * mu) / (a * self.s ** 2 + 1 - a) * m

        return eps(x, self.mean_x), eps(h, self.mean_h)


ORACLE_CFGS = {"ddpm": SampleConfig(steps=None), "ddim": SampleConfig(steps=25),
               "ddim-eta1": SampleConfig(steps=25, eta=1.0)}


@pytest.mark.parametrize("name", list(ORACLE_CFGS))
def test_sampler_with_exact_denoiser_recovers_a_point_mass(name):
    _, d = tiny(T=100)
    batch = toy_batch([6, 10, 8])
    x0, h0 = d.encode(batch)
    out = sample(_Oracle(d, x0, h0, 0.0), d, None, None, batch.n_atoms, ORACLE_CFGS[name])
    torch.testing.assert_close(out.positions, remove_mean_(batch), atol=1e-3, rtol=0)
    assert torch.equal(out.types, (batch.z == 8).long() * batch.mask)


def remove_mean_(batch):
    from pdfusion.diffusion import remove_mean

    return remove_mean(batch.pos, batch.mask)


def expected_variance(d, cfg: SampleConfig, s: float) -> float:
    """Variance after sampling N(0, s²) data with the oracle, by the scalar recursion of each update
    (written from the DDPM/DDIM formulas, independently of samplers.py). DDIM with few steps shrinks the
    variance (Cauchy–Schwarz), so 'exactly s²' is only the many-step limit."""
    abar = d.schedule.alphas_cumprod.double()
    if cfg.steps is None:
        pairs = [(t, t - 1) for t in range(d.T, 0, -1)]
    else:
        ts = strided_timesteps(d.T, cfg.steps)
        pairs = list(zip(ts, ts[1:] + [0], strict=True))
    v = 1.0
    for t, t_next in pairs:
        a_t = float(abar[t])
        vt = a_t * s ** 2 + 1 - a_t
        k0, ke = a_t ** 0.5 * s ** 2 / vt, (1 - a_t) ** 0.5 / vt  # x̂0 = k0·x, ε̂ = ke·x
        if t_next == 0:
            return k0 ** 2 * v
        a_s = float(abar[t_next])
        if cfg.steps is None:
            beta = 1 - a_t / a_s
            c1, c2 = a_s ** 0.5 * beta / (1 - a_t), (1 - beta) ** 0.5 * (1 - a_s) / (1 - a_t)
            v = (c1 * k0 + c2) ** 2 * v + beta * (1 - a_s) / (1 - a_t)
        else:
            sig2 = cfg.eta ** 2 * (1 - a_s) / (1 - a_t) * (1 - a_t / a_s)
            v = (a_s ** 0.5 * k0 + (1 - a_s - sig2) ** 0.5 * ke) ** 2 * v + sig2
    return v


@pytest.mark.parametrize("name", list(ORACLE_CFGS))
def test_sampler_with_exact_denoiser_reproduces_gaussian_variance(name):
    """Data N(0, s²) in diffusion space: the sample variance (× N/(N-1) for the zero-CoM subspace) must
    match the update recursion; wrong posterior variances or DDIM σ would show up as a wrong spread."""
    _, d = tiny(T=100)
    s, n, b = 0.6, 50, 40
    cfg = ORACLE_CFGS[name]
    zeros_x, zeros_h = torch.zeros(b, n, 3), torch.zeros(b, n, 2)
    out = sample(_Oracle(d, zeros_x, zeros_h, s), d, None, None, torch.full((b,), n), cfg)
    x = out.positions / d.model_cfg.position_scale
    var = float(x.var(unbiased=False)) * n / (n - 1)
    want = expected_variance(d, cfg, s)
    assert var == pytest.approx(want, rel=0.06), (var, want)
    assert want == pytest.approx(s ** 2, rel=0.25)  # and the recursion itself is near the data variance


def test_sigma_spacing_is_descending_from_T_and_denser_at_low_noise():
    from pdfusion.config import ScheduleConfig
    from pdfusion.diffusion import build_schedule
    from pdfusion.diffusion.samplers import strided_timesteps

    s = build_schedule(ScheduleConfig(timesteps=500))
    ts = strided_timesteps(500, 100, s)
    assert ts[0] == 500 and ts[-1] >= 1 and all(a > b for a, b in zip(ts, ts[1:], strict=False))
    linear = strided_timesteps(500, 100)
    assert sum(t <= 50 for t in ts) > 1.5 * sum(t <= 50 for t in linear)  # 18 vs 10 steps


def test_template_seeded_sampling_starts_from_the_given_structures():
    """init + cfg.init_t (SDEdit): from t = 1 one step returns the template to within the noise of ᾱ_1;
    from t = 10 only times ≤ 10 are run; a missing half or wrong atom counts are clear errors."""
    from helpers import tiny, toy_batch

    from pdfusion.config import SampleConfig
    from pdfusion.diffusion import sample

    model, d = tiny(seed=0, T=100)
    init = toy_batch([9, 12], seed=3)
    init.pos = init.pos - (init.pos * init.mask[..., None]).sum(1, keepdim=True) / init.n_atoms[:, None, None]
    init.pos = init.pos * init.mask[..., None]
    n = init.n_atoms
    out = sample(model, d, init.pdf, init.metal, n, SampleConfig(steps=20, init_t=1, seed=0), init=init)
    dev = (out.positions - init.pos)[init.mask].norm(dim=-1)
    scratch = sample(model, d, init.pdf, init.metal, n, SampleConfig(steps=20, seed=0))
    far = (scratch.positions - init.pos)[init.mask].norm(dim=-1)
    assert float(dev.max()) < 0.3 < 1.0 < float(far.median())  # measured 0.17 and several Å
    assert torch.equal(out.types[init.mask], (init.z == 8).long()[init.mask])
    calls = []
    wrapped = lambda *a, **k: calls.append(1) or model(*a, **k)  # noqa: E731
    wrapped.parameters, wrapped.eval, wrapped.train, wrapped.training = model.parameters, model.eval, model.train, False
    sample(wrapped, d, init.pdf, init.metal, n, SampleConfig(steps=50, init_t=10, seed=0), init=init)
    assert len(calls) == 1 + sum(1 for t in range(1, 101) if t < 10 and t in __import__(
        "pdfusion.diffusion.samplers", fromlist=["x"]).strided_timesteps(100, 50))
    with pytest.raises(ValueError, match="init"):
        sample(model, d, init.pdf, init.metal, n, SampleConfig(steps=5, init_t=3))
    with pytest.raises(ValueError, match="atom counts"):
        sample(model, d, init.pdf, init.metal, torch.tensor([9, 11]), SampleConfig(steps=5, init_t=3), init=init)


class _LoudTypesModel(torch.nn.Module):
    """A denoiser whose type noise estimate is far too large (as an undertrained one's can be at high noise),
    recording the type state it is fed."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.seen = inner, []

    def forward(self, x, h, mask, t, pdf, metal, cond_mask):
        self.seen.append(float(h.abs().max()))
        ex, eh = self.inner(x, h, mask, t, pdf, metal, cond_mask)
        return ex, eh + 50.0


@pytest.mark.parametrize("steps", [None, 8], ids=["ancestral", "strided"])
def test_clipping_bounds_the_fed_back_type_state(setup, steps):
    """With clipping on, x̂0's types are clipped to [-1, 1] like its positions, so a wild ε̂_h cannot make the
    type state the network is fed grow step after step (unclipped, it reaches hundreds here)."""
    model, d, batch = setup
    loud = _LoudTypesModel(model)
    sample(loud, d, batch.pdf, batch.metal, batch.n_atoms, SampleConfig(steps=steps, clip_x0=25.0))
    clipped = max(loud.seen)
    loud.seen.clear()
    sample(loud, d, batch.pdf, batch.metal, batch.n_atoms, SampleConfig(steps=steps, clip_x0=None))
    assert clipped < 10.0 < max(loud.seen)


def test_resample_sources_keeps_the_best_share_of_each_group_and_copies_them_best_first():
    from pdfusion.diffusion.samplers import resample_sources

    score = torch.tensor([0.5, 0.1, 0.9, 0.3, 0.7, 2.0, 1.0])
    groups = torch.tensor([0, 0, 0, 0, 0, 1, 1])
    src = resample_sources(score, groups, keep=0.5)
    # group 0: ceil(2.5) = 3 kept (rows 1, 3, 0 by score); the dropped rows, 4 then 2 (by score), copy rows 1 and 3
    assert src.tolist() == [0, 1, 3, 3, 1, 6, 6]
    assert resample_sources(score, groups, keep=1.0).tolist() == list(range(7))
    assert resample_sources(score, groups, keep=0.01).tolist() == [1, 1, 1, 1, 1, 6, 6]


def test_resampled_rows_take_their_sources_atom_count(setup):
    """Rows of one target may differ in size (the count head draws each); a copy carries its source's mask."""
    from pdfusion.config import PDFConfig

    model, d, batch = setup
    pdf_cfg = PDFConfig(rmax=20.0, rstep=0.5)
    pdf = batch.pdf[:1].expand(3, -1).contiguous()
    out = sample(model, d, pdf, batch.metal, batch.n_atoms, SampleConfig(steps=6, resample_at=(0.5,),
                                                                        resample_keep=0.3), pdf_cfg=pdf_cfg)
    sizes = out.mask.sum(1)
    assert len(set(sizes.tolist())) == 1 and int(sizes[0]) in batch.n_atoms.tolist()
    assert out.positions[~out.mask].abs().max() == 0
