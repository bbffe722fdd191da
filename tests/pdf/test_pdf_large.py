"""Issue 22: large particles in bounded memory, and the limits checked before allocating.

The k-d tree pair path of ``pdf.debye`` (pairs within range only) must give the all-pairs sums; the
slab-by-slab, k-d tree cut of ``structures.particles.cut_sphere`` must give the all-pairs cut; the size checks
of ``pdfusion.limits`` refuse before any array exists.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import pdfusion.pdf.debye as debye
from pdfusion.config import ConfigError, PDFConfig
from pdfusion.limits import Limits, particle_atoms_estimate
from pdfusion.pdf.files import check_spikes
from pdfusion.pdf.limits import check_pdf_config, pdf_memory_bytes
from pdfusion.structures.particles import bond_cutoff, cut_sphere, make_particle
from pdfusion.structures.prototypes import unit_cell


@pytest.mark.parametrize("method", ["grid", "direct"])
def test_near_pairs_match_all_pairs(monkeypatch, method):
    p = make_particle("rutile", "Ti", 9.0)
    cfg = PDFConfig(rmax=6.0, qmax=20.0)  # rcalchi ~7.9 Å, particle ~22 Å across: most pairs are out of range
    pos, z = torch.as_tensor(p.positions)[None], torch.as_tensor(p.numbers)[None]
    full = debye.PDFSimulator(cfg, method=method, chunk_size=5000)(pos, z)
    monkeypatch.setattr(debye, "NEAR_PAIRS_MIN_ATOMS", 100)
    sim = debye.PDFSimulator(cfg, method=method, chunk_size=5000)
    calls = []
    real = debye._near_pairs
    monkeypatch.setattr(debye, "_near_pairs", lambda *a: calls.append(1) or real(*a))
    near = sim(pos, z)
    assert calls, "the k-d tree path was not taken"
    torch.testing.assert_close(near, full, rtol=0, atol=1e-12)
    # a batch mixing a large structure (k-d tree) and a small one (pair lists)
    small = make_particle("rocksalt", "Mg", 3.0)
    n = len(p)
    pos2 = torch.zeros(2, n, 3, dtype=torch.float64)
    z2 = torch.ones(2, n, dtype=torch.long) * 8
    mask = torch.zeros(2, n, dtype=torch.bool)
    pos2[0], z2[0], mask[0] = pos[0], z[0], True
    pos2[1, : len(small)], z2[1, : len(small)], mask[1, : len(small)] = torch.as_tensor(small.positions), \
        torch.as_tensor(small.numbers), True
    both = sim(pos2, z2, mask)
    torch.testing.assert_close(both[0], full[0], rtol=0, atol=1e-12)
    ref_small = debye.PDFSimulator(cfg, method=method)(torch.as_tensor(small.positions), torch.as_tensor(small.numbers))
    torch.testing.assert_close(both[1], ref_small, rtol=0, atol=1e-12)


def _cut_all_pairs(cell_cart, numbers, lattice, center, radius, cutoff):
    """The cut as it was (every oxygen against every metal): the reference."""
    from pdfusion.structures.particles import lattice_translations

    reach = radius + cutoff + 1e-6
    shifts = lattice_translations(lattice, reach) @ lattice
    pos = (cell_cart[None] + shifts[:, None]).reshape(-1, 3) - center
    z = np.tile(numbers, len(shifts))
    dist = np.linalg.norm(pos, axis=1)
    near = dist <= reach
    pos, z, dist = pos[near], z[near], dist[near]
    metal = z != 8
    keep_m = metal & (dist <= radius + 1e-6)
    o_idx = np.flatnonzero(~metal & (dist <= radius + cutoff + 1e-6))
    d = np.linalg.norm(pos[o_idx][:, None] - pos[keep_m][None], axis=-1)
    o_idx = o_idx[(d < cutoff).any(axis=1)]
    m_idx = np.flatnonzero(keep_m)
    idx = np.concatenate([m_idx[np.argsort(dist[m_idx], kind="stable")], o_idx[np.argsort(dist[o_idx], kind="stable")]])
    return z[idx], pos[idx]


@pytest.mark.parametrize(("kind", "metal", "radius"),
                         [("rutile", "Ti", 11.0), ("spinel", "Fe", 9.5), ("wurtzite", "Zn", 8.0)])
def test_bounded_cut_matches_all_pairs_cut(kind, metal, radius):
    cell = unit_cell(kind, metal)
    centre = cell.cart_coords[0] + 0.3
    got = cut_sphere(cell.cart_coords, cell.numbers, cell.lattice, centre, radius, bond_cutoff(cell))
    ref = _cut_all_pairs(cell.cart_coords, cell.numbers, cell.lattice, centre, radius, bond_cutoff(cell))
    assert np.array_equal(got[0], ref[0]) and np.allclose(got[1], ref[1], rtol=0, atol=1e-12)
    est = particle_atoms_estimate(cell.lattice, len(cell.numbers), radius, bond_cutoff(cell))
    assert len(got[0]) <= est < 2.5 * len(got[0])


def test_limits_refuse_before_allocating():
    lim = Limits()
    check_pdf_config(PDFConfig(), lim, 100_000)
    assert pdf_memory_bytes(PDFConfig(), 100_000) < 0.5 * (1 << 30)
    with pytest.raises(ConfigError, match="--max-points"):
        check_pdf_config(PDFConfig(rmax=1e6), lim)
    with pytest.raises(ConfigError, match="--max-memory"):
        check_pdf_config(PDFConfig(rmax=3000, rstep=0.1), lim)
    check_pdf_config(PDFConfig(rmax=3000, rstep=0.1), Limits(max_memory_gb=1000))  # raised: accepted
    with pytest.raises(ConfigError, match="rmax: must be a finite number"):
        debye.srreal_grid(PDFConfig(rmax=float("inf")))
    with pytest.raises(ConfigError, match="--max-atoms"):
        make_particle("rutile", "Ti", 60.0, max_atoms=50_000)


def test_far_pair_bins_do_not_overflow():
    """A pair 1e200 Å apart is out of range and contributes nothing (its bin index once overflowed int64)."""
    pos = torch.tensor([[0.0, 0, 0], [1.9, 0, 0], [1e200, 0, 0]], dtype=torch.float64)
    z = torch.tensor([22, 8, 8])
    got = debye.simulate_pdf(pos, z, cfg=PDFConfig(normalize=False))
    near = pos.clone()
    near[2, 0] = 1e4  # out of range too, without overflow: the same curve
    ref = debye.simulate_pdf(near, z, cfg=PDFConfig(normalize=False))
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-12)
    direct = debye.simulate_pdf(pos, z, cfg=PDFConfig(normalize=False), method="direct")
    ref_direct = debye.simulate_pdf(near, z, cfg=PDFConfig(normalize=False), method="direct")
    torch.testing.assert_close(direct, ref_direct, rtol=0, atol=1e-12)


def test_spike_check():
    r = np.arange(0, 30, 0.01)
    g = np.sin(2 * r) * np.exp(-r / 8)
    check_spikes(r, g, "ok.gr")
    g[200] = 1e12
    with pytest.raises(ValueError, match=r"spike.gr point 200: G = 1e\+12 at r = 2 Å"):
        check_spikes(r, g, "spike.gr")
    sharp = np.sin(2 * r) * np.exp(-r / 8)
    sharp[195:206] *= 50  # a tall peak several points wide is still a peak
    check_spikes(r, sharp, "peak.gr")
