"""Centring and the equivariant optimal-transport noise coupling."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from helpers import tiny, toy_batch
from scipy.spatial.transform import Rotation

from pdfusion.diffusion import GaussianDiffusion
from pdfusion.diffusion.geometry import align_noise, remove_mean
from pdfusion.structures.alignment import kabsch


def _setup(seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(3, 24, dtype=torch.bool)
    mask[1, 17:] = False
    mask[2, 9:] = False
    x0 = remove_mean(torch.randn(3, 24, 3, generator=g), mask)
    noise = remove_mean(torch.randn(3, 24, 3, generator=g), mask)
    types = (torch.arange(24) % 3 == 0).long().expand(3, 24) * mask
    return x0, noise, types, mask


def test_aligned_noise_is_a_rotated_per_type_permutation_of_the_draw_and_closer_to_the_data():
    x0, noise, types, mask = _setup()
    out = align_noise(noise, x0, types, mask)
    assert out[~mask].abs().max() == 0 and out.sum(1).abs().max() < 1e-5
    for b in range(3):
        m = mask[b]
        e, a = noise[b][m].double().numpy(), out[b][m].double().numpy()
        for k in (0, 1):  # a rotation keeps norms and pair distances; a permutation within a type keeps their sets
            sel = types[b][m].numpy() == k
            np.testing.assert_allclose(np.sort(np.linalg.norm(a[sel], axis=1)),
                                       np.sort(np.linalg.norm(e[sel], axis=1)), atol=1e-5)
        np.testing.assert_allclose(np.sort(np.linalg.norm(a[:, None] - a[None], axis=-1).ravel()),
                                   np.sort(np.linalg.norm(e[:, None] - e[None], axis=-1).ravel()), atol=1e-5)
        assert ((out[b] - x0[b]) ** 2).sum() < 0.8 * ((noise[b] - x0[b]) ** 2).sum()
        np.testing.assert_allclose(kabsch(a, x0[b][m].double().numpy()), np.eye(3), atol=1e-5)  # best turn
    torch.testing.assert_close(align_noise(x0, x0, types, mask), x0, atol=1e-5, rtol=0)  # already aligned: unchanged


def test_the_coupling_leaves_the_prior_isotropic_for_randomly_oriented_data():
    """Against a rotation-symmetric data distribution, aligned draws are still N(0, I) per coordinate:
    the sampler's prior needs no change."""
    _, _, types, mask = _setup()
    m = mask[:1].expand(400, -1)
    g = torch.Generator().manual_seed(3)
    base = remove_mean(torch.randn(1, 24, 3, generator=g), m[:1])[0].double().numpy()
    rots = Rotation.random(400, random_state=2).as_matrix()
    x0 = torch.as_tensor(np.einsum("bij,nj->bni", rots, base), dtype=torch.float32)
    noise = remove_mean(torch.randn(400, 24, 3, generator=g), m)
    out = align_noise(noise, x0, types[:1].expand(400, -1), m)
    flat = out.reshape(-1, 3)
    assert flat.mean(0).abs().max() < 0.05
    np.testing.assert_allclose(torch.cov(flat.T).numpy(), np.eye(3) * 23 / 24, atol=0.06)
    assert ((out - x0) ** 2).sum() < 0.6 * ((noise - x0) ** 2).sum()  # and still paired with its structure


def test_training_loss_uses_the_coupling_when_configured():
    model, d = tiny()
    batch = toy_batch([7, 11])
    x0, _ = d.encode(batch)
    aligned = GaussianDiffusion(d.schedule, d.model_cfg, dataclasses.replace(d.diffusion_cfg, align_noise=True))
    plain = d.training_noise(x0, batch, torch.Generator().manual_seed(5))
    paired = aligned.training_noise(x0, batch, torch.Generator().manual_seed(5))
    assert ((paired - x0) ** 2).sum() < ((plain - x0) ** 2).sum()
    torch.testing.assert_close(paired.norm(dim=-1).sum(), plain.norm(dim=-1).sum(), rtol=1e-5, atol=1e-5)
    loss, metrics = aligned.training_loss(model, batch, torch.Generator().manual_seed(1))
    assert torch.isfinite(loss) and metrics["loss_x"] > 0


def test_a_mixed_coupling_aligns_only_its_fraction_of_the_batch():
    _, d = tiny()
    batch = toy_batch([7, 11, 9, 8, 10, 12, 7, 9])
    x0, _ = d.encode(batch)
    plain = d.training_noise(x0, batch, torch.Generator().manual_seed(5))
    for frac, expect in ((0.0, 0), (1.0, 8)):
        cfg = dataclasses.replace(d.diffusion_cfg, align_noise=True, align_noise_fraction=frac)
        mixed = GaussianDiffusion(d.schedule, d.model_cfg, cfg)
        out = mixed.training_noise(x0, batch, torch.Generator().manual_seed(5))
        changed = int(((out - plain).abs().amax((1, 2)) > 1e-6).sum())
        assert changed == expect
    cfg = dataclasses.replace(d.diffusion_cfg, align_noise=True, align_noise_fraction=0.5)
    out = GaussianDiffusion(d.schedule, d.model_cfg, cfg).training_noise(x0, batch, torch.Generator().manual_seed(5))
    assert 0 < int(((out - plain).abs().amax((1, 2)) > 1e-6).sum()) < 8
