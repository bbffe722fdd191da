"""fit_expansion: the isotropic-expansion (lattice-parameter) fit applied to bond-length-frame samples."""

from __future__ import annotations

import pytest
import torch

from pdfusion.config import PDFConfig
from pdfusion.pdf import rwp, simulate_pdf
from pdfusion.pdf.fitting import fit_expansion
from pdfusion_testdata import rocksalt_particle

CFG = PDFConfig(rmax=15.0, rstep=0.01, qmax=25.0)


def _target_and_shapes(factors):
    p = rocksalt_particle(28, 4.18, 5.5)
    pos = torch.from_numpy(p.positions - p.positions.mean(0))
    z = torch.from_numpy(p.numbers)
    mask = torch.ones(1, len(z), dtype=torch.bool)
    target = simulate_pdf(pos[None], z[None], mask, CFG)[0]
    f = torch.tensor(factors, dtype=torch.float64)
    return pos, z, target, f


def test_recovers_the_size_of_a_shrunk_or_swollen_particle():
    pos, z, target, f = _target_and_shapes([0.8, 0.93, 1.0, 1.12, 1.3])
    b, n = len(f), len(z)
    fit = fit_expansion(pos[None] / f[:, None, None], z.expand(b, n), torch.ones(b, n, dtype=torch.bool),
                        target.expand(b, -1), CFG)
    torch.testing.assert_close(fit.factor, f, atol=2e-4 * float(f.max()), rtol=0)
    assert float(fit.rwp.max()) < 0.02
    # what it returns is self-consistent: the scaled positions simulate to g_sim, which scores rwp
    again = simulate_pdf(fit.positions, z.expand(b, n), torch.ones(b, n, dtype=torch.bool), CFG)
    torch.testing.assert_close(fit.g_sim, again, atol=1e-8, rtol=0)
    torch.testing.assert_close(fit.rwp, rwp(again, target.expand(b, -1)), atol=1e-10, rtol=0)


def test_padding_is_ignored_and_stays_zero():
    pos, z, target, _ = _target_and_shapes([1.0])
    n = len(z)
    padded = torch.zeros(1, n + 6, 3, dtype=torch.float64)
    zp = torch.full((1, n + 6), 8, dtype=torch.long)
    mask = torch.zeros(1, n + 6, dtype=torch.bool)
    padded[0, :n], zp[0, :n], mask[0, :n] = pos / 1.07, z, True
    fit = fit_expansion(padded, zp * mask, mask, target[None], CFG)
    assert float(fit.factor[0]) == pytest.approx(1.07, abs=3e-4)
    assert float(fit.positions[0, n:].abs().max()) == 0.0


def test_bad_range_is_named():
    pos, z, target, _ = _target_and_shapes([1.0])
    with pytest.raises(ValueError, match="lo"):
        fit_expansion(pos[None], z[None], torch.ones(1, len(z), dtype=torch.bool), target[None], CFG, lo=1.1)


def test_cohesion_penalty_closed_form_padding_and_finite_gradient():
    """Σ relu(d_nn − 3.5 Å)² over real atoms: a bonded pair costs nothing, an atom 7 Å from the nearest other
    costs (7 − 3.5)², and each of two atoms 5 Å apart costs (5 − 3.5)²; padding and a lone atom cost 0, and the
    gradient is finite everywhere (padding sits on top of the origin atom)."""
    from pdfusion.pdf.fitting import cohesion_penalty

    pos = torch.tensor([[[0.0, 0, 0], [2.0, 0, 0], [9.0, 0, 0], [0.0, 0, 0], [0.0, 0, 0]]], requires_grad=True)
    mask = torch.tensor([[True, True, True, False, False]])
    pen = cohesion_penalty(pos, mask)
    torch.testing.assert_close(pen, torch.tensor([12.25]))  # only the atom at 9 Å: nearest at 2 Å, 7 Å away
    (grad,) = torch.autograd.grad(pen.sum(), pos)
    assert torch.isfinite(grad).all()
    assert float(grad[0, 2, 0]) > 0  # descent pulls the stray toward its nearest neighbour, and moves only the stray
    torch.testing.assert_close(grad[0, 2], torch.tensor([2 * 3.5, 0.0, 0.0]))
    assert grad[0, [0, 1, 3, 4]].abs().max() == 0
    torch.testing.assert_close(cohesion_penalty(pos[:, :3].detach(), mask[:, :3]), pen.detach())
    two = torch.tensor([[[0.0, 0, 0], [5.0, 0, 0]]])
    torch.testing.assert_close(cohesion_penalty(two, torch.ones(1, 2, dtype=torch.bool)), torch.tensor([4.5]))
    lone = torch.zeros(1, 3, 3, requires_grad=True)
    lone_mask = torch.tensor([[True, False, False]])
    assert float(cohesion_penalty(lone.detach(), lone_mask)) == 0.0
    (g_lone,) = torch.autograd.grad(cohesion_penalty(lone, lone_mask).sum(), lone)
    assert torch.isfinite(g_lone).all()
    p = rocksalt_particle(28, 4.18, 5.5)  # a real cut: every atom bonded, so no cost at all
    assert float(cohesion_penalty(torch.from_numpy(p.positions)[None], torch.ones(1, len(p), dtype=torch.bool))) == 0
