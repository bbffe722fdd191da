"""Atom deletion scored by R_wp: leave-one-out scores equal direct removal, pruning carves a planted smaller
particle out of a larger cut around it, bad input is refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pdfusion.config import PDFConfig
from pdfusion.inference.topology import grow_by_rwp, leave_one_out_rwp, prune_by_rwp, vacant_sites
from pdfusion.pdf import rwp
from pdfusion.pdf.fitting import simulate_safe
from pdfusion.structures.particles import make_particle

FAST_PDF = PDFConfig(rmax=12.0, rstep=0.05)


def _g(pos: np.ndarray, num: np.ndarray) -> torch.Tensor:
    p, n = torch.as_tensor(pos)[None], torch.as_tensor(num)[None]
    return simulate_safe(p, n, torch.ones(n.shape, dtype=torch.bool), FAST_PDF)[0]


def test_leave_one_out_equals_simulating_each_removal():
    p = make_particle("rocksalt", "Mg", 4.0)
    target = _g(p.positions * 1.01, p.numbers)
    keep = np.ones(len(p), dtype=bool)
    keep[3] = False
    loo = leave_one_out_rwp(p.positions, p.numbers, target, FAST_PDF, keep)
    assert np.isinf(loo[3]) and np.isfinite(np.delete(loo, 3)).all()
    for i in (0, 7, len(p) - 1):
        k = keep.copy()
        k[i] = False
        direct = float(rwp(_g(p.positions[k], p.numbers[k])[None], target[None])[0])
        assert loo[i] == pytest.approx(direct, rel=1e-9)


def test_pruning_carves_the_planted_particle_out_of_a_larger_cut():
    small, big = make_particle("rocksalt", "Mg", 4.0), make_particle("rocksalt", "Mg", 5.2)
    # the same cut centre: the small cut's atoms are a subset of the large one's
    inside = np.array([np.min(np.linalg.norm(small.positions - x, axis=1)) < 1e-6 for x in big.positions])
    assert inside.sum() == len(small) < len(big)
    target = _g(small.positions, small.numbers)
    out = prune_by_rwp(big.positions, big.numbers, target, FAST_PDF, max_remove=0.9, max_rounds=60)
    assert out.rwp_before > 0.2 and out.rwp_after < 0.25 * out.rwp_before
    assert out.rwp_after == pytest.approx(float(rwp(_g(out.positions, out.numbers)[None], target[None])[0]))
    assert len(out.numbers) < len(big) and out.kept.sum() == len(out.numbers)
    # what it removed is mostly the shell the target lacks
    assert (~out.kept & ~inside).sum() >= 0.6 * (~inside).sum()
    # nothing to remove: a perfect fit is returned unchanged
    same = prune_by_rwp(small.positions, small.numbers, target, FAST_PDF)
    assert same.kept.all() and same.rwp_after == pytest.approx(same.rwp_before, abs=1e-12)


def test_pruning_refuses_bad_input():
    p = make_particle("rocksalt", "Mg", 4.0)
    target = _g(p.positions, p.numbers)
    with pytest.raises(ValueError, match="max_remove"):
        prune_by_rwp(p.positions, p.numbers, target, FAST_PDF, max_remove=1.0)
    with pytest.raises(ValueError, match="batch_frac"):
        prune_by_rwp(p.positions, p.numbers, target, FAST_PDF, batch_frac=0.0)
    bad = p.positions.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        prune_by_rwp(bad, p.numbers, target, FAST_PDF)
    with pytest.raises(ValueError, match="positions must be"):
        prune_by_rwp(p.positions[:-1], p.numbers, target, FAST_PDF)


def test_vacant_sites_are_the_next_shell_of_the_lattice():
    small, big = make_particle("rocksalt", "Mg", 4.0), make_particle("rocksalt", "Mg", 5.2)
    sites, elems = vacant_sites(small.positions, small.numbers)
    assert len(sites) > 0 and set(elems) <= set(small.numbers)
    shell = np.array([np.min(np.linalg.norm(small.positions - x, axis=1)) > 1e-6 for x in big.positions])
    # every site of the shell the larger cut adds that touches the small cut is proposed, with its element
    d = np.linalg.norm(sites[:, None] - big.positions[shell][None], axis=-1)
    hit = d.min(axis=0) < 1e-6
    near = np.linalg.norm(big.positions[shell][:, None] - small.positions[None], axis=-1).min(axis=1) < 3.0
    assert hit[near].mean() > 0.9
    j = d.argmin(axis=1)
    exact = d.min(axis=1) < 1e-6
    assert np.array_equal(elems[exact], big.numbers[shell][j[exact]])


def test_growth_fills_in_the_shell_of_a_larger_target():
    small, big = make_particle("rocksalt", "Mg", 4.0), make_particle("rocksalt", "Mg", 5.2)
    target = _g(big.positions, big.numbers)
    out = grow_by_rwp(small.positions, small.numbers, target, FAST_PDF, max_rounds=40)
    assert out.rwp_before > 0.2 and out.rwp_after < 0.35 * out.rwp_before
    assert out.rwp_after == pytest.approx(float(rwp(_g(out.positions, out.numbers)[None], target[None])[0]))
    assert len(small) < len(out.numbers) <= 2 * len(small)
    assert np.array_equal(out.positions[: len(small)], small.positions)  # the input atoms stay where they were
    with pytest.raises(ValueError, match="max_add"):
        grow_by_rwp(small.positions, small.numbers, target, FAST_PDF, max_add=0)
