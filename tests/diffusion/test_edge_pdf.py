"""Physics-informed conditioning: the target G(r) read at each edge's distance (closed forms: peak position,
Gaussian blur widths, linear interpolation), zeros where the condition is dropped, the noise-aware widths; and
the frame-feature denoiser, which is permutation-equivariant and padding-blind but deliberately not
rotation-equivariant."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import tiny
from test_model import inputs, random_orthogonal

from pdfusion.config import ModelConfig
from pdfusion.diffusion import PDFusionDenoiser
from pdfusion.diffusion.edge_pdf import STENCIL, EdgePDF, first_peak, gaussian_blur_rows
from pdfusion.pdf.fitting import blur

DR = 0.01
R = torch.arange(3000) * DR


def _peaks(*centres, width=0.05, heights=None):
    heights = heights or [1.0] * len(centres)
    return sum(hgt * torch.exp(-0.5 * ((R - c) / width) ** 2) for c, hgt in zip(centres, heights, strict=True))


def test_first_peak_is_the_first_strong_maximum_above_1_2_angstrom():
    g = torch.stack([_peaks(0.8, 2.05, 3.4, heights=[5.0, 0.6, 1.0]),  # a spike below 1.2 Å is ignored
                     _peaks(1.95, 2.1, 3.0, heights=[0.1, 0.7, 1.0])])  # a peak under 20 % of the largest too
    torch.testing.assert_close(first_peak(g, DR), torch.tensor([2.05, 2.10]), atol=1e-4, rtol=0)


def test_row_blur_widths_add_in_quadrature_and_match_the_scalar_blur():
    g = torch.stack([_peaks(10.0, width=0.1), _peaks(10.0, width=0.1)])
    out = gaussian_blur_rows(g, torch.tensor([0.2, 0.5]), DR)
    for row, w in zip(out, (0.2, 0.5), strict=True):
        area = float(row.sum() * DR)
        assert math.isclose(area, 0.1 * math.sqrt(2 * math.pi), rel_tol=1e-4)
        var = float((row * (R - 10.0) ** 2).sum() * DR) / area
        assert math.isclose(math.sqrt(var), math.hypot(0.1, w), rel_tol=1e-3)
    torch.testing.assert_close(out[:1], blur(g[:1], 0.2, DR), atol=2e-3, rtol=0)  # blur cuts its kernel at ±3σ


def _reader(mode="raw", bond_length=None, noise=None, keep=(True, False)):
    cfg = ModelConfig(pdf_points=3000, pdf_rstep=DR, edge_pdf=mode, bond_length=bond_length, position_scale=2.0)
    pdf = torch.stack([R * 0.01 + _peaks(2.0), R * 0.02 + _peaks(2.5)])
    return EdgePDF(cfg, pdf, torch.tensor(keep), noise), pdf


def test_features_interpolate_the_target_at_each_edge_and_vanish_without_the_condition():
    reader, pdf = _reader()
    d0 = torch.tensor([0.7351, 1.5, 0.9])  # model units; × position_scale 2 = 1.4702, 3.0, 1.8 Å
    graph = torch.tensor([0, 0, 1])
    f = reader.features(d0, graph)
    assert f.shape == (3, EdgePDF.dim())
    r = d0[:2, None] * 2.0 + STENCIL[None]
    lo = (r / DR).floor().long()
    frac = r / DR - lo
    expect = pdf[0][lo] * (1 - frac) + pdf[0][lo + 1] * frac
    torch.testing.assert_close(f[:2, :7], expect, atol=1e-5, rtol=0)
    assert f[2].abs().max() == 0  # row 1's condition is dropped


def test_bond_frame_reads_at_the_targets_own_scale():
    """In a bond-length frame an edge of length bond_length (model: bond_length / position_scale) must be read
    at the target's first peak, whatever the target's size."""
    reader, pdf = _reader(bond_length=2.1, keep=(True, True))
    d0 = torch.full((2,), 2.1 / 2.0)
    f = reader.features(d0, torch.tensor([0, 1]))
    centre = 3  # the stencil's middle point
    torch.testing.assert_close(f[:, centre], torch.stack([pdf[0, 200], pdf[1, 250]]), atol=2e-3, rtol=0)


def test_noise_aware_reads_x_t_rescaled_and_blurred_by_the_pair_spread():
    shrink, spread = torch.tensor([0.8, 1.0]), torch.tensor([0.3, 0.0])
    noisy, pdf = _reader("noise_aware", noise=(shrink, spread), keep=(True, True))
    raw, _ = _reader("raw", keep=(True, True))
    torch.testing.assert_close(noisy.scale, raw.scale / shrink)
    width = math.sqrt(0.25 ** 2 + 2 * (0.3 * 2.0 / 0.8) ** 2)
    torch.testing.assert_close(noisy.blurred[0], gaussian_blur_rows(pdf[:1], torch.tensor([width]), DR)[0])
    torch.testing.assert_close(noisy.blurred[1], raw.blurred[1])  # no noise: the raw reader


def test_noise_aware_model_needs_the_schedule():
    with pytest.raises(ValueError, match="noise_aware.*schedule"):
        PDFusionDenoiser(ModelConfig(hidden=8, layers=1, pdf_embed=8, pdf_points=40, edge_pdf="noise_aware"))


def test_dropped_condition_ignores_the_pdf():
    model, _ = tiny(seed=2, cutoff=4.0, edge_pdf="raw", pdf_rstep=0.5)
    x, h, mask, t, pdf, metal, _ = inputs([9, 14])
    off = torch.tensor([False, False])
    a = model(x, h, mask, t, pdf, metal, off)
    b = model(x, h, mask, t, pdf.flip(-1) * 3, metal, off)
    torch.testing.assert_close(a[0], b[0], atol=1e-6, rtol=0)


@pytest.fixture(scope="module")
def frame_model():
    m, _ = tiny(seed=4, cutoff=4.0, frame_features=True)
    with torch.no_grad():
        m.egnn.out.weight.normal_(0, 0.3)
    return m.eval()


def test_frame_model_is_permutation_equivariant_and_padding_blind(frame_model):
    x, h, mask, t, pdf, metal, cm = inputs([12, 12])
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(1))
    ex, eh = frame_model(x, h, mask, t, pdf, metal, cm)
    ex2, eh2 = frame_model(x[:, perm], h[:, perm], mask[:, perm], t, pdf, metal, cm)
    torch.testing.assert_close(ex2, ex[:, perm], atol=1e-4, rtol=0)
    pad = [torch.cat([a, a.new_zeros(a.shape[0], 5, *a.shape[2:])], 1) for a in (x, h, mask)]
    exp, ehp = frame_model(*pad, t, pdf, metal, cm)
    torch.testing.assert_close(exp[:, :12], ex, atol=1e-4, rtol=0)
    torch.testing.assert_close(ehp[:, :12], eh, atol=1e-4, rtol=0)


def test_frame_model_sees_absolute_directions(frame_model):
    """The point of the frame: a rotated input is a different input (it is not rotation-equivariant)."""
    x, h, mask, t, pdf, metal, cm = inputs([9, 14])
    q = random_orthogonal(torch.Generator().manual_seed(7), False)
    ex, _ = frame_model(x, h, mask, t, pdf, metal, cm)
    ex2, _ = frame_model((x @ q.T) * mask.unsqueeze(-1), h, mask, t, pdf, metal, cm)
    assert (ex2 - ex @ q.T).abs().max() > 1e-2


def test_pdf_gradient_points_downhill_and_vanishes_without_the_condition():
    """Moving atoms a little along the learned-guidance input lowers the scale-free misfit it is the
    descent direction of; rows whose condition is dropped get zeros."""
    from helpers import toy_particle

    from pdfusion.diffusion.pdf_gradient import _condition_pdf_config, pdf_gradient
    from pdfusion.pdf.fitting import simulate_safe

    cfg = ModelConfig(pdf_points=400, pdf_rstep=0.05, position_scale=3.5, pdf_gradient=True)
    pos, z = toy_particle(13, torch.Generator().manual_seed(0))
    mask = torch.ones(2, 13, dtype=torch.bool)
    target = simulate_safe(pos[None], z[None], mask[:1], _condition_pdf_config(cfg)).expand(2, -1)
    start = (pos + 0.2 * torch.randn(13, 3, generator=torch.Generator().manual_seed(1))).expand(2, -1, -1) / 3.5
    h = torch.nn.functional.one_hot((z == 8).long(), 2).float().expand(2, -1, -1)
    abar = torch.ones(2)
    unit, size = pdf_gradient(cfg, start, h, mask, target, torch.tensor([22, 22]), torch.tensor([True, False]), abar)
    assert unit[1].abs().max() == 0 and size[1].abs().max() == 0
    torch.testing.assert_close((unit[0].pow(2).sum(-1).mean()).sqrt(), torch.tensor(1.0))

    def misfit(x):
        g = simulate_safe(x * 3.5, z[None], mask[:1], _condition_pdf_config(cfg))
        return float(1 - (g * target[:1]).sum() ** 2 / ((g * g).sum() * (target[:1] ** 2).sum()))

    assert misfit(start[:1] + 0.01 * unit[:1]) < misfit(start[:1]) < misfit(start[:1] - 0.01 * unit[:1])
