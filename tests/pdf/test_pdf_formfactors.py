"""Form-factor tables: Waasmaier–Kirfel f0(0) ≈ Z, agreement with an independent copy, neutron lengths."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pdfusion.pdf.formfactors import neutron_b, scattering_factors, xray_f0


def test_xray_f0_at_zero_is_the_electron_count():
    z = torch.arange(1, 99)
    f0 = xray_f0(z, torch.zeros(1, dtype=torch.float64))[:, 0]
    assert torch.allclose(f0, z.double(), atol=0.05)  # the WK fit reproduces Z to ~0.04 e


def test_xray_f0_decreases_with_q_and_matches_the_formula_for_oxygen():
    q = torch.linspace(0, 30, 61, dtype=torch.float64)
    f = xray_f0(torch.tensor([8]), q)[0]
    assert bool((f[1:] < f[:-1]).all())
    # Waasmaier & Kirfel (1995) oxygen coefficients, typed from the paper's table
    a = [2.960427, 2.508818, 0.637853, 0.722838, 1.142756]
    b = [14.182259, 5.936858, 0.112726, 34.958481, 0.390240]
    c = 0.027014
    s2 = (q / (4 * math.pi)) ** 2
    expected = c + sum(ai * torch.exp(-bi * s2) for ai, bi in zip(a, b, strict=True))
    assert torch.allclose(f, expected, rtol=1e-12)


def test_xray_table_matches_debyecalculator_copy():
    yaml = pytest.importorskip("yaml")
    from importlib import resources

    text = resources.files("debyecalculator").joinpath("utility", "elements_info.yaml").read_text()
    table = yaml.safe_load("\n".join(line for line in text.splitlines() if not line.startswith("#")))
    q = torch.linspace(0, 30, 31, dtype=torch.float64)
    s2 = (q / (4 * math.pi)) ** 2
    for sym, z in (("O", 8), ("Ti", 22), ("Zn", 30), ("Pt", 78), ("Bi", 83)):
        p = table[sym]
        ref = p[5] + sum(p[i] * torch.exp(-p[6 + i] * s2) for i in range(5))
        assert torch.allclose(xray_f0(torch.tensor([z]), q)[0], ref, rtol=1e-6), sym


def test_neutron_lengths_known_values_and_shape():
    q = torch.linspace(0, 10, 5, dtype=torch.float64)
    b = neutron_b(torch.tensor([[8, 22], [1, 26]]), q)
    assert b.shape == (2, 2, 5)
    np.testing.assert_allclose(b[..., 0].numpy(), [[5.803, -3.37], [-3.739, 9.45]], atol=0.01)
    assert torch.equal(b[..., 0], b[..., -1])


def test_unknown_elements_and_radiation_raise():
    q = torch.zeros(1, dtype=torch.float64)
    with pytest.raises(ValueError, match="atomic numbers"):
        xray_f0(torch.tensor([0]), q)
    with pytest.raises(ValueError, match="no Waasmaier-Kirfel"):
        xray_f0(torch.tensor([110]), q)
    with pytest.raises(ValueError, match="radiation"):
        scattering_factors(torch.tensor([8]), q, "electron")
