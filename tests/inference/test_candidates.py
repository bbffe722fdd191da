"""Ranking, refinement and the library-lookup baseline, on rock-salt clusters built here."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from pdfusion.config import DataConfig, PDFConfig, SampleConfig, preset
from pdfusion.inference.candidates import Candidate, generate_candidates, metal_number
from pdfusion.inference.lookup import library_lookup
from pdfusion.inference.refine import refine
from pdfusion_testdata import rocksalt_cluster

SMALL_PDF = PDFConfig(rmax=10.0, rstep=0.05, qmax=20.0)


def simulate(numbers, pos, cfg=SMALL_PDF):
    from pdfusion.pdf import simulate_pdf

    p = torch.as_tensor(pos, dtype=torch.float64)[None]
    z = torch.as_tensor(numbers)[None]
    return simulate_pdf(p, z, torch.ones_like(z, dtype=torch.bool), cfg)[0]


@pytest.fixture(scope="module")
def bundle():
    return _gaussian_bundle()


def _gaussian_bundle(**model_kw):
    from pdfusion.diffusion.gaussian import GaussianDiffusion
    from pdfusion.diffusion.geometry import remove_mean
    from pdfusion.diffusion.model import PDFusionDenoiser
    from pdfusion.diffusion.schedules import build_schedule
    from pdfusion.inference.bundle import ModelBundle
    from pdfusion.pdf import r_grid

    torch.set_num_threads(1)
    torch.manual_seed(0)
    base = preset("tiny")
    cfg = dataclasses.replace(base, model=dataclasses.replace(base.model, pdf_points=SMALL_PDF.n_r, max_atoms=40,
                                                                **model_kw),
                              data=DataConfig(batch_size=4), pdf=SMALL_PDF)
    diffusion = GaussianDiffusion(build_schedule(cfg.diffusion.schedule), cfg.model, cfg.diffusion)
    abar = diffusion.schedule.alphas_cumprod.float()

    class GaussianOptimal(PDFusionDenoiser):
        """The real denoiser, with ε_x replaced by the closed-form optimum for unit-Gaussian data,
        ε = sqrt(1 - ᾱ_t)·x_t: an untrained EGNN flings atoms thousands of Å apart, this gives
        particle-sized candidates so that ranking is tested on meaningful PDFs."""

        def forward(self, x, h, mask, t, pdf=None, metal=None, cond_mask=None, **kw):
            out = super().forward(x, h, mask, t, pdf, metal, cond_mask, **kw)
            a = abar[(t * diffusion.T).round().long()].reshape(-1, 1, 1)
            eps_x = remove_mean(torch.sqrt(1 - a) * x, mask.bool())
            return (eps_x, torch.sqrt(1 - a) * h, *out[2:])

    model = GaussianOptimal(cfg.model).eval()
    return ModelBundle(model=model, diffusion=diffusion, config=cfg, pdf_config=SMALL_PDF,
                       r_grid=np.asarray(r_grid(SMALL_PDF)))


def test_candidates_ranked_ascending_and_simulated_with_training_config(bundle):
    from pdfusion.pdf import rwp, simulate_pdf

    targets = torch.stack([simulate(*rocksalt_cluster(3.5, 22)), simulate(*rocksalt_cluster(3.0, 30))]).float()
    cfg = SampleConfig(n_samples=4, steps=5, n_atoms=12, seed=1)
    ranked = generate_candidates(bundle, targets, ["Ti", 30], cfg)
    assert len(ranked) == 2
    for b, (cands, metal) in enumerate(zip(ranked, (22, 30), strict=True)):
        assert len(cands) == 4
        scores = [c.rwp for c in cands]
        assert scores == sorted(scores)
        assert all(c.g_sim.max() == pytest.approx(1.0) for c in cands)  # particle-sized: real, normalised PDFs
        for c in cands:
            assert c.n_atoms == 12 and set(np.unique(c.numbers)) <= {metal, 8}
            np.testing.assert_allclose(c.positions.mean(0), 0.0, atol=1e-6)
            ref = simulate(c.numbers, c.positions, bundle.pdf_config)
            np.testing.assert_allclose(c.g_sim, ref.numpy(), atol=1e-4)
            assert c.rwp == pytest.approx(float(rwp(ref, targets[b].double())), rel=1e-3, abs=1e-5)
        # a different PDFConfig would have given a different curve: the training config is what is used
        other = simulate_pdf(torch.as_tensor(cands[0].positions)[None], torch.as_tensor(cands[0].numbers)[None],
                             torch.ones(1, 12, dtype=torch.bool), dataclasses.replace(SMALL_PDF, qdamp=0.08))
        assert not np.allclose(other[0].numpy(), cands[0].g_sim, atol=1e-3)


def test_bond_length_model_candidates_are_sized_to_each_target():
    """A bond-length-frame model samples shapes; each candidate is the sampler's shape scaled by fit_expansion
    against its own target, and its g_sim / rwp are those of the returned positions. PDF guidance, which needs
    absolute sizes, is refused with a named error."""
    from pdfusion.diffusion.gaussian import types_to_numbers
    from pdfusion.diffusion.samplers import sample
    from pdfusion.pdf import rwp
    from pdfusion.pdf.fitting import fit_expansion

    framed = _gaussian_bundle(bond_length=2.1)
    targets = torch.stack([simulate(*rocksalt_cluster(3.5, 22, a=3.9)), simulate(*rocksalt_cluster(3.5, 22, a=4.6))])
    cfg = SampleConfig(n_samples=3, steps=5, n_atoms=12, seed=1)
    ranked = generate_candidates(framed, targets.float(), [22, 22], cfg)
    # the same draw by hand: sampler (same seed), then the expansion fit
    gen = torch.Generator().manual_seed(cfg.seed)
    rep_pdf, rep_metal = targets.float().repeat_interleave(3, 0), torch.full((6,), 22)
    res = sample(framed.model, framed.diffusion, rep_pdf, rep_metal, torch.full((6,), 12), cfg, generator=gen,
                 pdf_cfg=framed.pdf_config)
    numbers = types_to_numbers(res.types.long(), rep_metal) * res.mask
    fit = fit_expansion(res.positions.double(), numbers, res.mask.bool(), rep_pdf, framed.pdf_config)
    for b, cands in enumerate(ranked):
        rows = sorted(range(3 * b, 3 * b + 3), key=lambda i: float(fit.rwp[i]))
        for c, i in zip(cands, rows, strict=True):
            assert c.expansion == pytest.approx(float(fit.factor[i]), abs=1e-12)
            assert 0.75 <= c.expansion <= 1.35  # fit_expansion's default range
            np.testing.assert_allclose(c.positions, fit.positions[i].numpy(), atol=1e-5)
            ref = simulate(c.numbers, c.positions, framed.pdf_config)
            np.testing.assert_allclose(c.g_sim, ref.numpy(), atol=1e-4)
            assert c.rwp == pytest.approx(float(rwp(ref, targets[b])), rel=1e-3, abs=1e-5)
    with pytest.raises(ValueError, match="bond-length frame"):
        generate_candidates(framed, targets[:1].float(), [22], SampleConfig(n_samples=1, steps=2, pdf_guidance=0.1))


def test_per_pdf_configs_and_reproducible_seed(bundle):
    target = simulate(*rocksalt_cluster(3.5, 22)).float()
    c1 = SampleConfig(n_samples=2, steps=4, n_atoms=10, seed=3)
    c2 = SampleConfig(n_samples=3, steps=4, n_atoms=14, seed=3)
    ranked = generate_candidates(bundle, torch.stack([target, target]), [22, 22], [c1, c2])
    assert [len(r) for r in ranked] == [2, 3]
    assert {c.n_atoms for c in ranked[1]} == {14}
    again = generate_candidates(bundle, target[None], [22], c1)
    np.testing.assert_array_equal(again[0][0].positions, ranked[0][0].positions)


def test_bad_inputs_are_named(bundle):
    with pytest.raises(ValueError, match="r grid"):
        generate_candidates(bundle, torch.zeros(1, 7), [22], SampleConfig(n_samples=1, steps=2))
    with pytest.raises(ValueError, match="metal"):
        metal_number("Xx")
    with pytest.raises(ValueError, match="metal"):
        metal_number(8)


def test_refine_lowers_rwp_and_keeps_distances_sane():
    numbers, pos = rocksalt_cluster(4.0, 22)
    target = simulate(numbers, pos)
    rng = np.random.default_rng(0)
    start = pos + rng.normal(0, 0.12, pos.shape)
    res = refine(start, numbers, target, SMALL_PDF, steps=60, lr=0.01)
    assert res.positions.shape == pos.shape
    assert float(res.rwp_after[0]) < 0.6 * float(res.rwp_before[0])
    np.testing.assert_allclose(res.positions.mean(0), 0.0, atol=1e-8)
    d = np.linalg.norm(res.positions[:, None] - res.positions[None], axis=-1) + np.eye(len(pos)) * 99
    assert d.min() > 1.35
    np.testing.assert_allclose(res.g_sim[0], simulate(numbers, res.positions).numpy(), atol=1e-6)


def test_refine_penalty_pushes_apart_overlapping_atoms():
    numbers, pos = rocksalt_cluster(3.0, 22)
    target = simulate(numbers, pos)
    squeezed = pos.copy()
    squeezed[1] = squeezed[0] + np.array([0.5, 0.0, 0.0])  # an unphysical 0.5 Å pair
    res = refine(squeezed, numbers, target, SMALL_PDF, steps=80, lr=0.02)
    d = np.linalg.norm(res.positions[:, None] - res.positions[None], axis=-1) + np.eye(len(pos)) * 99
    assert d.min() > 1.2


def test_library_lookup_returns_exact_match():
    lib = torch.stack([simulate(*rocksalt_cluster(r, m)) for r in (2.5, 3.3, 3.9) for m in (22, 30)])
    order = [4, 0, 5, 2]
    idx, best = library_lookup(lib[order], lib, chunk_elements=lib[0].numel() * 7)  # forces several chunks
    assert idx.tolist() == order
    np.testing.assert_allclose(best, 0.0, atol=1e-12)
    noisy = lib[3] + 0.01 * torch.randn(lib.shape[1], generator=torch.Generator().manual_seed(0), dtype=lib.dtype)
    idx2, best2 = library_lookup(noisy, lib)
    assert idx2.tolist() == [3] and 0 < best2[0] < 0.1
    with pytest.raises(ValueError, match="points"):
        library_lookup(torch.zeros(1, 5), lib)


def test_candidate_to_xyz_roundtrip(tmp_path):
    from pdfusion.structures.io import read_structure

    numbers, pos = rocksalt_cluster(3.0, 22)
    c = Candidate(numbers=numbers, positions=pos, n_atoms=len(numbers), rwp=0.1, rwp_before_refine=None,
                  g_sim=np.zeros(3))
    path = tmp_path / "c.xyz"
    path.write_text(c.to_xyz())
    p = read_structure(path)
    np.testing.assert_array_equal(p.numbers, numbers)
    np.testing.assert_allclose(p.positions, pos, atol=1e-6)


def test_blur_is_a_normalised_gaussian_and_keeps_constants():
    from pdfusion.pdf.fitting import blur as _blur

    dr, sigma = 0.01, 0.3
    delta = torch.zeros(1, 2001, dtype=torch.float64)
    delta[0, 1000] = 1.0
    out = _blur(delta, sigma, dr)[0]
    r = (torch.arange(2001, dtype=torch.float64) - 1000) * dr
    expect = torch.exp(-0.5 * (r / sigma) ** 2) * (r.abs() <= 3 * sigma + 1e-9)
    torch.testing.assert_close(out, expect / expect.sum(), rtol=1e-9, atol=1e-12)
    const = torch.full((2, 500), 0.7, dtype=torch.float64)
    torch.testing.assert_close(_blur(const, sigma, dr), const)
    assert _blur(const, 0.5 * dr, dr) is const  # below the grid step: no blur



def test_sizes_set_each_candidates_atom_count_and_bad_sizes_are_named(bundle):
    from pdfusion.inference.candidates import sample_and_score

    target = simulate(*rocksalt_cluster(3.5, 22)).float()
    cfg = SampleConfig(n_samples=3, steps=3, n_atoms=10, seed=2)
    ranked = sample_and_score(bundle.model, bundle.diffusion, torch.stack([target, target]), [22, 22], cfg,
                              bundle.pdf_config, sizes=[[8, 12, 16], [20, 20, 9]])
    assert sorted(c.n_atoms for c in ranked[0]) == [8, 12, 16]
    assert sorted(c.n_atoms for c in ranked[1]) == [9, 20, 20]
    for bad, why in (([[8, 12]], "2 lists of 3"), ([[8, 12, 16], [0, 5, 5]], "1..40")):
        with pytest.raises(ValueError, match=why):
            sample_and_score(bundle.model, bundle.diffusion, torch.stack([target, target]), [22, 22], cfg,
                             bundle.pdf_config, sizes=bad)


def test_chunks_cover_every_row_once_under_the_budget_and_keep_targets_together():
    from pdfusion.inference.candidates import PAIR_BUDGET, _chunks

    g = torch.Generator().manual_seed(0)
    sizes = torch.randint(20, 400, (300,), generator=g)
    groups = torch.arange(30).repeat_interleave(10)[torch.randperm(300, generator=g)]
    for grp in (None, groups):
        chunks = _chunks(sizes, grp, None)
        rows = torch.cat(chunks)
        assert sorted(rows.tolist()) == list(range(300))
        for c in chunks:
            assert c.numel() * int(sizes[c].max()) ** 2 <= PAIR_BUDGET or c.numel() == 1
    together = _chunks(sizes, groups, None)
    for target in range(30):  # 10 rows of <= 400 atoms fit the budget, so no target is split
        assert sum(bool((groups[c] == target).any()) for c in together) == 1


def test_population_resampling_runs_through_sample_and_score(bundle):
    from pdfusion.inference.candidates import sample_and_score

    target = simulate(*rocksalt_cluster(3.5, 22)).float()
    cfg = SampleConfig(n_samples=6, steps=6, n_atoms=10, seed=2, resample_at=(0.5,))
    ranked = sample_and_score(bundle.model, bundle.diffusion, torch.stack([target, target * 0.5]), [22, 22], cfg,
                              bundle.pdf_config)
    assert [len(r) for r in ranked] == [6, 6]
    for cands in ranked:
        assert all(np.isfinite(c.rwp) for c in cands) and [c.rwp for c in cands] == sorted(c.rwp for c in cands)


def test_pruned_candidates_are_the_largest_bonded_group_of_the_same_samples_and_scored_as_such(bundle):
    """prune_fragments drops what lies outside each sample's largest bonded group (< 3.5 Å) before scoring: the
    same seed gives the same samples, each pruned candidate is the unpruned one's largest fragment (same atoms,
    re-centred), it is one bonded group, and its R_wp is that of the kept atoms."""
    from pdfusion.inference.candidates import sample_and_score
    from pdfusion.pdf import rwp
    from pdfusion.structures.fragments import largest_fragment

    target = simulate(*rocksalt_cluster(3.5, 22)).float()
    cfg = SampleConfig(n_samples=8, steps=5, n_atoms=20, seed=3)
    plain = sample_and_score(bundle.model, bundle.diffusion, target[None], [22], cfg, bundle.pdf_config)[0]
    pruned = sample_and_score(bundle.model, bundle.diffusion, target[None], [22], dataclasses.replace(
        cfg, prune_fragments=True), bundle.pdf_config)[0]
    assert any(c.n_atoms < 20 for c in pruned), "the Gaussian denoiser's samples should hold detached atoms"
    assert all(c.n_sampled == 20 for c in plain + pruned), "n_sampled is the drawn size, before pruning"
    assert sum(c.n_atoms for c in plain) == 8 * 20
    expect = []
    for c in plain:
        keep = largest_fragment(c.positions)
        p = c.positions[keep]
        expect.append((int(keep.sum()), np.sort(np.linalg.norm(p - p.mean(0), axis=1))))
    for c in pruned:
        assert largest_fragment(c.positions).all()
        match = [e for e in expect if e[0] == c.n_atoms and np.allclose(e[1], np.sort(
            np.linalg.norm(c.positions, axis=1)), atol=1e-5)]
        assert match, c.n_atoms
        ref = simulate(c.numbers, c.positions, bundle.pdf_config)
        assert c.rwp == pytest.approx(float(rwp(ref, target.double())), rel=1e-3, abs=1e-5)


def test_keep_largest_fragments_ignores_padding():
    from pdfusion.inference.candidates import keep_largest_fragments

    pos = torch.tensor([[[0.0, 0, 0], [2.0, 0, 0], [30.0, 0, 0], [1.0, 0, 0], [0.0, 0, 0]],
                        [[0.0, 0, 0], [9.0, 0, 0], [11.0, 0, 0], [0.0, 0, 0], [0.0, 0, 0]]])
    mask = torch.tensor([[True, True, True, False, False], [True, True, True, False, False]])
    keep = keep_largest_fragments(pos, mask)
    assert keep.tolist() == [[True, True, False, False, False], [False, True, True, False, False]]


def test_prune_candidates_removes_atoms_the_target_lacks_and_never_makes_one_worse():
    """A larger cut around the target particle loses atoms and fits better; the exact particle is left alone;
    every returned candidate's g_sim and R_wp are those of its own positions, and only `top` are touched."""
    from pdfusion.inference.candidates import prune_candidates
    from pdfusion.pdf import rwp

    small_z, small_p = rocksalt_cluster(3.0, 22)
    big_z, big_p = rocksalt_cluster(4.2, 22)
    target = simulate(small_z, small_p)

    def cand(z, p):
        g = simulate(z, p)
        return Candidate(numbers=z, positions=p - p.mean(0), n_atoms=len(z), rwp=float(rwp(g, target)),
                         rwp_before_refine=None, g_sim=g.numpy().astype(np.float32))

    exact, larger = cand(small_z, small_p), cand(big_z, big_p)
    assert larger.rwp > 0.2 and exact.rwp < 1e-9
    out = prune_candidates([larger, exact], target, SMALL_PDF, steps=20, top=2)
    assert [c.rwp for c in out] == sorted(c.rwp for c in out)
    kept_exact = next(c for c in out if c.n_atoms == len(small_z) and c.rwp < 1e-9)
    np.testing.assert_array_equal(kept_exact.numbers, small_z)
    cut = next(c for c in out if c is not kept_exact)
    assert cut.n_atoms < len(big_z) and cut.rwp < 0.6 * larger.rwp
    for c in out:
        ref = simulate(c.numbers, c.positions)
        np.testing.assert_allclose(c.g_sim, ref.numpy(), atol=1e-5)
        assert c.rwp == pytest.approx(float(rwp(ref, target)), rel=1e-6, abs=1e-9)
    untouched = prune_candidates([exact, larger], target, SMALL_PDF, steps=20, top=1)
    assert untouched[1] is larger


def test_sampling_with_prune_atoms_needs_refine_and_never_fits_worse(bundle):
    from pdfusion.config import ConfigError

    with pytest.raises(ConfigError, match="prune_atoms"):
        SampleConfig(prune_atoms=True)
    target = simulate(*rocksalt_cluster(3.0, 22)).float()
    base = SampleConfig(n_samples=3, steps=4, n_atoms=24, seed=2, refine=True, refine_steps=10)
    plain = generate_candidates(bundle, target[None], [22], base)[0]
    pruned = generate_candidates(bundle, target[None], [22], dataclasses.replace(base, prune_atoms=True,
                                                                                 prune_top=3))[0]
    assert pruned[0].rwp <= plain[0].rwp + 1e-12
    assert all(c.n_atoms <= 24 and len(c.numbers) == c.n_atoms for c in pruned)


def test_refining_a_perfect_fit_keeps_it():
    numbers, pos = rocksalt_cluster(3.0, 22)
    res = refine(pos, numbers, simulate(numbers, pos), SMALL_PDF, steps=5)
    assert np.isfinite(res.positions).all() and float(res.rwp_after[0]) == pytest.approx(0.0, abs=1e-12)
