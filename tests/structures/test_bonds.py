"""median_metal_oxygen_bond: the scale a bond-length-frame model divides out."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pdfusion.structures.bonds import median_metal_oxygen_bond
from pdfusion_testdata import rocksalt_particle


def _rotation(seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q


def test_rocksalt_bond_is_half_the_lattice_constant():
    p = rocksalt_particle(22, 4.3, 5.0)
    bond = median_metal_oxygen_bond(torch.from_numpy(p.positions), torch.from_numpy(p.numbers))
    assert float(bond) == pytest.approx(4.3 / 2, abs=1e-12)


def test_scales_with_the_particle_and_ignores_rotation_translation_order_and_padding():
    p = rocksalt_particle(26, 4.1, 4.5)
    pos, z = torch.from_numpy(p.positions), torch.from_numpy(p.numbers)
    # jitter so the median is not a lattice constant that any wrong formula would also hit
    pos = pos + 0.05 * torch.randn(pos.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ref = median_metal_oxygen_bond(pos, z)
    assert float(median_metal_oxygen_bond(1.7 * pos, z)) == pytest.approx(1.7 * float(ref), rel=1e-12)
    perm = torch.randperm(len(z), generator=torch.Generator().manual_seed(2))
    moved = pos[perm] @ _rotation(3).T + torch.tensor([4.0, -2.0, 7.5], dtype=torch.float64)
    assert float(median_metal_oxygen_bond(moved, z[perm])) == pytest.approx(float(ref), rel=1e-10)
    n = len(z)
    padded = torch.zeros(2, n + 9, 3, dtype=torch.float64)
    zp = torch.full((2, n + 9), 8, dtype=torch.long)
    mask = torch.zeros(2, n + 9, dtype=torch.bool)
    padded[0, :n], zp[0, :n], mask[0, :n] = pos, z, True
    padded[1, :n], zp[1, :n], mask[1, :n] = 2 * pos, z, True
    padded[:, n:] = 0.3  # padding near real atoms must not be anyone's nearest oxygen
    out = median_metal_oxygen_bond(padded, zp, mask)
    np.testing.assert_allclose(out.numpy(), [float(ref), 2 * float(ref)], rtol=1e-12)


def test_a_particle_without_oxygen_is_a_named_error():
    pos = torch.randn(5, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="bond_length"):
        median_metal_oxygen_bond(pos, torch.full((5,), 22))
