"""Debye → F(Q) → G(r): closed forms, invariances, batching, dtypes, gradients, chunking, grid vs direct."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pdfusion.config import PDFConfig
from pdfusion.pdf import PDFSimulator, q_grid, r_grid, rwp, simulate_pdf, srreal_grid
from pdfusion.pdf.formfactors import xray_f0

RAW = PDFConfig(normalize=False)
SMALL = PDFConfig(rmax=8.0, qmax=20.0, qmin=0.5, normalize=False)  # cheap grids for gradcheck etc.


def rocksalt_cluster(a: float = 4.2, radius: float = 5.0, metal: int = 12, seed: int | None = None):
    """A spherical rock-salt (MgO-type) cluster; optional random jitter so no distance is degenerate."""
    r = np.arange(-4, 5)
    grid = np.stack(np.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3)
    pos = grid * (a / 2)
    keep = np.linalg.norm(pos, axis=1) <= radius
    pos, grid = pos[keep], grid[keep]
    numbers = np.where(grid.sum(1) % 2 == 0, metal, 8)
    if seed is not None:
        pos = pos + np.random.default_rng(seed).normal(scale=0.05, size=pos.shape)
    return torch.tensor(pos, dtype=torch.float64), torch.tensor(numbers, dtype=torch.long)


def random_rotation(seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q * torch.sign(torch.det(q))


@pytest.mark.parametrize("method", ["direct", "grid"])
def test_two_identical_atoms_fq_closed_form(method):
    """F(Q) = exp(-U_pair Q²/2·...) sin(Qd)/d for two like atoms: 2/(N f²)·f²·DW·sin(Qd)/d with N = 2."""
    d = 2.37
    pos = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, d]], dtype=torch.float64)
    sim = PDFSimulator(RAW, method=method)
    fq = sim.fq(pos, torch.tensor([8, 8]))
    q = q_grid(RAW)
    u = RAW.biso / (8 * math.pi**2)
    expected = torch.exp(-u * q**2) * torch.sin(q * d) / d
    expected[: srreal_grid(RAW).nqmin] = 0.0
    tol = 1e-12 if method == "direct" else 1e-4
    assert torch.allclose(fq, expected, atol=tol * expected.abs().max(), rtol=0)


def test_two_unlike_atoms_fq_uses_average_form_factor():
    d = 1.95
    pos = torch.tensor([[0.0, 0.0, 0.0], [d, 0.0, 0.0]], dtype=torch.float64)
    z = torch.tensor([22, 8])
    fq = PDFSimulator(RAW, method="direct").fq(pos, z)
    q = q_grid(RAW)
    f = xray_f0(z, q)
    fbar = f.mean(0)
    expected = 2 * f[0] * f[1] / (2 * fbar**2) * torch.exp(-RAW.biso / (8 * math.pi**2) * q**2) * torch.sin(q * d) / d
    expected[: srreal_grid(RAW).nqmin] = 0.0
    assert torch.allclose(fq, expected, rtol=1e-12, atol=1e-14)


def test_pdf_of_a_dimer_peaks_at_the_bond_length():
    d = 2.5
    cfg = PDFConfig(qdamp=0.0, qmax=40.0, qmin=0.0)
    g = simulate_pdf(torch.tensor([[0.0, 0, 0], [0, d, 0]], dtype=torch.float64), torch.tensor([29, 29]), cfg=cfg)
    r = r_grid(cfg)
    assert g.shape == r.shape
    assert abs(float(r[g.argmax()]) - d) <= 0.02
    assert float(g.max()) == pytest.approx(1.0)


def test_r_grid_matches_config():
    r = r_grid(PDFConfig())
    assert r.numel() == PDFConfig().n_r == 3000
    assert float(r[0]) == 0.0 and float(r[-1]) == pytest.approx(29.99)


def test_srreal_grid_bookkeeping_for_seed_parameters():
    """Extended rmax = rmax + 6·2π/qmax + Gaussian tail of FWHM from 2U, on the r grid; qstep = π / that."""
    g = srreal_grid(PDFConfig())
    u = 0.3 / (8 * math.pi**2)
    ext = (6 * 2 * math.pi / 30
           + math.sqrt(-math.log(3.33e-6) / (4 * math.log(2))) * 2 * math.sqrt(2 * math.log(2)) * math.sqrt(2 * u))
    assert g.rcalchi == pytest.approx(math.ceil((30 + ext) / 0.01) * 0.01)
    assert g.qstep == pytest.approx(math.pi / g.rcalchi)
    assert g.nqmax == math.ceil(30 / g.qstep) and g.nqmin == math.ceil(0.8 / g.qstep)
    assert g.npad == 4096
    # a user qstep coarser than the optimum is replaced by the optimum, a finer one is kept
    assert srreal_grid(PDFConfig(qstep=1.0)).qstep == pytest.approx(g.qstep)
    assert srreal_grid(PDFConfig(qstep=0.05)).qstep == 0.05


@pytest.mark.parametrize("method", ["direct", "grid"])
def test_padded_batch_equals_individual_calls(method):
    a_pos, a_z = rocksalt_cluster(radius=4.0, seed=1)
    b_pos, b_z = rocksalt_cluster(radius=5.0, metal=30, seed=2)
    n = max(len(a_z), len(b_z)) + 3
    pos = torch.full((2, n, 3), 123.0, dtype=torch.float64)  # padding far away: must be ignored
    num = torch.zeros(2, n, dtype=torch.long)
    mask = torch.zeros(2, n, dtype=torch.bool)
    for k, (p, z) in enumerate([(a_pos, a_z), (b_pos, b_z)]):
        pos[k, : len(z)], num[k, : len(z)], mask[k, : len(z)] = p, z, True
    batch = simulate_pdf(pos, num, mask, RAW, method=method)
    for k, (p, z) in enumerate([(a_pos, a_z), (b_pos, b_z)]):
        single = simulate_pdf(p, z, cfg=RAW, method=method)
        assert torch.allclose(batch[k], single, atol=1e-10 * single.abs().max())


def test_mask_with_holes_equals_compact_structure():
    pos, z = rocksalt_cluster(radius=4.0, seed=3)
    n = len(z)
    holes = torch.zeros(n + 4, 3, dtype=torch.float64)
    num = torch.full((n + 4,), 8, dtype=torch.long)
    mask = torch.ones(n + 4, dtype=torch.bool)
    where = torch.tensor([0, 5, 9, n + 2])
    mask[where] = False
    holes[mask], num[mask] = pos, z
    holes[~mask] = pos[:4] + 0.3  # junk atoms that must not count
    assert torch.allclose(simulate_pdf(holes, num, mask, RAW), simulate_pdf(pos, z, cfg=RAW), atol=1e-10)


def test_float32_matches_float64():
    pos, z = rocksalt_cluster(seed=4)
    g64 = simulate_pdf(pos, z)
    g32 = simulate_pdf(pos.float(), z)
    assert g32.dtype == torch.float32
    assert float(rwp(g32.double(), g64)) < 1e-4


@pytest.mark.parametrize("method", ["direct", "grid"])
def test_invariant_to_permutation_rotation_translation(method):
    pos, z = rocksalt_cluster(seed=5)
    g = simulate_pdf(pos, z, cfg=RAW, method=method)
    perm = torch.randperm(len(z), generator=torch.Generator().manual_seed(0))
    moved = pos[perm] @ random_rotation(1).T + torch.tensor([3.0, -7.0, 11.0], dtype=torch.float64)
    g2 = simulate_pdf(moved, z[perm], cfg=RAW, method=method)
    tol = 1e-10 if method == "direct" else 1e-5
    assert float(rwp(g2, g)) < tol


def test_grid_method_agrees_with_direct_sum():
    pos, z = rocksalt_cluster(radius=6.0, metal=26, seed=6)
    assert float(rwp(simulate_pdf(pos, z, method="grid"), simulate_pdf(pos, z, method="direct"))) < 1e-4


@pytest.mark.parametrize("method", ["direct", "grid"])
def test_chunked_equals_unchunked(method):
    pos, z = rocksalt_cluster(seed=7)
    whole = simulate_pdf(pos, z, cfg=RAW, method=method)
    chunked = simulate_pdf(pos, z, cfg=RAW, method=method, chunk_size=37 if method == "grid" else 400)
    assert torch.allclose(chunked, whole, atol=1e-11 * whole.abs().max())


@pytest.mark.parametrize("method", ["direct", "grid"])
def test_gradcheck_float64(method):
    pos = torch.tensor([[0.0, 0.0, 0.0], [1.9, 0.1, 0.0], [0.2, 2.1, -0.3], [-1.7, 0.4, 1.2], [1.1, -1.3, 1.9]],
                       dtype=torch.float64, requires_grad=True)
    z = torch.tensor([22, 8, 8, 22, 8])
    sim = PDFSimulator(SMALL, method=method)
    # project G(r) on a few fixed random directions: one backward pass per projection instead of per r point
    proj = torch.randn(r_grid(SMALL).numel(), 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda p: sim(p, z) @ proj, (pos,), eps=1e-6, atol=1e-5, rtol=1e-3)


def test_grid_gradient_matches_direct_gradient():
    pos, z = rocksalt_cluster(radius=4.0, seed=8)
    grads = []
    for method in ("direct", "grid"):
        p = pos.clone().requires_grad_(True)
        g = simulate_pdf(p, z, cfg=RAW, method=method)
        (g * torch.linspace(-1, 1, g.numel(), dtype=g.dtype)).sum().backward()
        grads.append(p.grad)
    assert torch.allclose(grads[1], grads[0], atol=1e-3 * grads[0].abs().max())


@pytest.mark.parametrize("method", ["direct", "grid"])
def test_finite_gradient_at_coincident_atoms(method):
    pos = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [2.0, 0.0, 0.0], [0.0, 2.0, 0.0]],
                       dtype=torch.float64, requires_grad=True)
    g = simulate_pdf(pos, torch.tensor([8, 8, 26, 8]), cfg=SMALL, method=method)
    assert torch.isfinite(g).all()
    g.sum().backward()
    assert torch.isfinite(pos.grad).all()


def test_coincident_pair_is_skipped_like_srreal():
    """srreal skips d = 0 pairs in the sum; the rest of the structure is unaffected (only N changes)."""
    base = torch.tensor([[0.0, 0, 0], [2.0, 0, 0]], dtype=torch.float64)
    dup = torch.cat([base, base[:1]])
    fq2 = PDFSimulator(RAW).fq(base, torch.tensor([8, 8]))
    fq3 = PDFSimulator(RAW).fq(dup, torch.tensor([8, 8, 8]))
    # 3 atoms: pairs (0,1) and (2,1) at d = 2, the coincident (0,2) skipped → 2 pair terms over N = 3
    assert torch.allclose(fq3, fq2 * 2 * 2 / 3, rtol=1e-3, atol=1e-6)


def test_neutron_radiation_uses_scattering_lengths():
    d = 2.0
    pos = torch.tensor([[0.0, 0, 0], [d, 0, 0]], dtype=torch.float64)
    cfg = PDFConfig(radiation="neutron", normalize=False)
    fq = PDFSimulator(cfg, method="direct").fq(pos, torch.tensor([22, 8]))
    b_ti, b_o = -3.37, 5.803
    q = q_grid(cfg)
    expected = (2 * b_ti * b_o / (2 * ((b_ti + b_o) / 2) ** 2) * torch.exp(-0.3 / (8 * math.pi**2) * q**2)
                * torch.sin(q * d) / d)
    expected[: srreal_grid(cfg).nqmin] = 0
    assert torch.allclose(fq, expected, rtol=1e-3, atol=1e-6)


def test_bad_inputs_raise_clear_errors():
    pos, z = rocksalt_cluster(radius=3.0)
    with pytest.raises(ValueError, match="positions"):
        simulate_pdf(pos[:, :2], z)
    with pytest.raises(ValueError, match="numbers"):
        simulate_pdf(pos, z[:-1])
    bad = pos.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        simulate_pdf(bad, z)
    with pytest.raises(ValueError, match="atomic number"):
        simulate_pdf(pos, torch.full_like(z, 119))
    with pytest.raises(ValueError, match="no positive maximum"):
        simulate_pdf(pos[:1], z[:1])
    with pytest.raises(ValueError, match="backend"):
        simulate_pdf(pos, z, backend="nope")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_matches_cpu(dtype):
    pos, z = rocksalt_cluster(seed=9)
    cpu = simulate_pdf(pos.to(dtype), z)
    gpu = simulate_pdf(pos.to(dtype).cuda(), z.cuda())
    assert gpu.device.type == "cuda" and gpu.dtype == dtype
    assert float(rwp(gpu.cpu().double(), cpu.double())) < 1e-5


def test_large_batch_is_split_and_reassembled_in_order(monkeypatch):
    """Batches above SUB_BATCH are simulated in size-sorted sub-batches; results come back in input order."""
    from pdfusion.pdf import debye

    monkeypatch.setattr(debye, "SUB_BATCH", 2)
    clusters = [rocksalt_cluster(radius=r, metal=m, seed=s) for r, m, s in ((5.0, 12, 1), (3.0, 30, 2), (4.0, 26, 3),
                                                                             (3.5, 12, 4), (4.5, 22, 5))]
    n = max(len(z) for _, z in clusters)
    pos = torch.zeros(len(clusters), n, 3, dtype=torch.float64)
    num = torch.zeros(len(clusters), n, dtype=torch.long)
    mask = torch.zeros(len(clusters), n, dtype=torch.bool)
    for k, (p, z) in enumerate(clusters):
        pos[k, : len(z)], num[k, : len(z)], mask[k, : len(z)] = p, z, True
    p = pos.clone().requires_grad_(True)
    batch = PDFSimulator(RAW)(p, num, mask)
    batch.sum().backward()
    assert torch.isfinite(p.grad).all() and bool((p.grad[~mask] == 0).all())
    for k, (pk, z) in enumerate(clusters):
        assert torch.allclose(batch[k], simulate_pdf(pk, z, cfg=RAW), atol=1e-10 * float(batch[k].detach().abs().max()))
