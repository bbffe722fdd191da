"""R_wp: closed-form values, batching, shape errors."""

from __future__ import annotations

import math

import pytest
import torch

from pdfusion.pdf import rwp


def test_identical_is_zero_and_hand_example():
    t = torch.tensor([1.0, 1.0, -2.0, 0.5], dtype=torch.float64)
    assert float(rwp(t, t)) == 0.0
    p = torch.tensor([1.0, 2.0], dtype=torch.float64)
    assert float(rwp(p, torch.tensor([1.0, 1.0], dtype=torch.float64))) == pytest.approx(math.sqrt(1 / 2))
    # scaling the target by c leaves the error of pred = 0 at 1
    assert float(rwp(torch.zeros(4, dtype=torch.float64), 3 * t)) == pytest.approx(1.0)


def test_batched_over_leading_dims_and_dim_argument():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(3, 5, 50, generator=g), torch.randn(3, 5, 50, generator=g)
    out = rwp(pred, target)
    assert out.shape == (3, 5)
    assert torch.allclose(out[1, 2], rwp(pred[1, 2], target[1, 2]))
    assert torch.allclose(rwp(pred.transpose(-1, 0), target.transpose(-1, 0), dim=0), out.T)


def test_shape_mismatch_and_zero_target_raise():
    with pytest.raises(ValueError, match="shape"):
        rwp(torch.zeros(2, 10), torch.ones(10))
    with pytest.raises(ValueError, match="identically zero"):
        rwp(torch.ones(10), torch.zeros(10))


def test_rwp_gradient_is_finite_at_a_perfect_fit_and_nan_still_propagates():
    """sqrt'(0) is infinite: without the guard, refining a candidate that already fits exactly turns its positions
    into NaN on the first step."""
    target = torch.tensor([[0.0, 1.0, -0.5, 0.25]], dtype=torch.float64)
    pred = target.clone().requires_grad_(True)
    r = rwp(pred, target)
    r.sum().backward()
    assert float(r) == 0.0 and torch.equal(pred.grad, torch.zeros_like(target))
    off = (target + 0.1).requires_grad_(True)
    rwp(off, target).sum().backward()
    assert torch.isfinite(off.grad).all() and bool((off.grad != 0).any())
    assert torch.isnan(rwp(torch.full_like(target, float("nan")), target)).all()
