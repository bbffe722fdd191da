"""pdf.refine: least-squares refinement of particles (Debye) and crystals (periodic) against measured G(r)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from pdfusion.pdf.periodic import Crystal, periodic_pdf
from pdfusion.pdf.realspace import ParticleModel
from pdfusion.pdf.refine import (
    FitWarning,
    _least_squares,
    _Spec,
    fit_particle,
    fit_periodic,
    prepare_data,
    rw,
)
from pdfusion.structures.particle import Particle

MEASURED = Path(os.environ.get("PDFUSION_SHARED", Path(__file__).resolve().parents[2].parent / "shared")) / \
    "data" / "measured-examples"  # as tests/conftest.py: tests needing it skip when absent
FCC = np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])


def _ni_cell(a: float = 3.52) -> Crystal:
    return Crystal(np.eye(3) * a, FCC, [28] * 4)


def _ni_particle(radius: float, a: float = 3.52) -> Particle:
    cr = _ni_cell(a)
    n = int(radius / a) + 2
    k = np.arange(-n, n + 1)
    shifts = np.array(np.meshgrid(k, k, k, indexing="ij")).reshape(3, -1).T @ cr.lattice
    pos = (cr.cart[None] + shifts[:, None]).reshape(-1, 3)
    pos = pos[np.linalg.norm(pos, axis=1) <= radius + 1e-6]
    return Particle(np.full(len(pos), 28), pos)


def _within(res, name, true, sigmas=4.0, rel=None):
    value, unc = res.params[name], res.uncertainties[name]
    assert abs(value - true) <= sigmas * unc + (rel * abs(true) if rel else 0.0), (name, value, unc, true)


def test_particle_fit_recovers_scale_expansion_uiso_delta2_qdamp():
    p = _ni_particle(7.0)
    r = np.arange(0.0, 20.0, 0.01)
    true = dict(scale=0.7, expansion=1.012, uiso=0.0065, delta2=1.5, qdamp=0.03)
    g = ParticleModel(p.numbers, p.positions, r, qmin=0.5, qmax=25.0)(**true).numpy()
    noisy = g + np.random.default_rng(0).normal(scale=0.01 * np.abs(g).max(), size=g.shape)
    res = fit_particle(p, r, noisy, free=("scale", "expansion", "uiso", "delta2", "qdamp"), qmin=0.5, qmax=25.0)
    for name in ("scale", "expansion", "delta2", "qdamp"):
        _within(res, name, true[name])
    _within(res, "uiso_Ni", true["uiso"])
    assert res.uncertainties["expansion"] < 1e-3
    assert res.rw == pytest.approx(rw(noisy[(r >= 1.5)], res.gcalc), rel=1e-9)
    assert res.structure.positions == pytest.approx(p.positions * res.params["expansion"])
    json.dumps(res.to_json(), allow_nan=False)


def test_periodic_fit_recovers_lattice_uiso_delta2_qdamp_qbroad():
    cell = _ni_cell(3.52)
    r = np.arange(0.0, 30.0, 0.01)
    true = dict(scale=0.45, uiso=0.006, delta2=1.8, qdamp=0.045, qbroad=0.017)
    g = periodic_pdf(_ni_cell(3.5245), r, qmin=0.5, qmax=25.0, **true).numpy()
    noisy = g + np.random.default_rng(1).normal(scale=0.02, size=g.shape)
    res = fit_periodic(cell, r, noisy, qmin=0.5, qmax=25.0)
    assert res.free == ["scale", "a", "uiso_Ni", "delta2", "qdamp", "qbroad"]
    _within(res, "a", 3.5245)
    _within(res, "uiso_Ni", true["uiso"])
    for name in ("scale", "delta2", "qdamp", "qbroad"):
        _within(res, name, true[name])
    assert res.structure.lattice_parameters[0] == pytest.approx(res.params["a"])
    assert res.structure.uiso == pytest.approx([res.params["uiso_Ni"]] * 4)
    assert res.meta["derived"]["c"] == pytest.approx(res.params["a"])
    assert res.meta["oversampling"] == pytest.approx(math.pi / 25.0 / 0.01)


def test_uncertainties_are_those_of_the_nyquist_grid():
    """The oversampling correction: a fit of the dense curve and of its Nyquist-grid sample agree in σ."""
    cell = _ni_cell()
    r = np.arange(0.0, 25.0, 0.01)
    g = periodic_pdf(cell, r, qmin=0.5, qmax=25.0, scale=0.5, uiso=0.006, delta2=1.5, qdamp=0.04).numpy()
    g = g + np.random.default_rng(2).normal(scale=0.02, size=g.shape)
    free = ("scale", "lattice", "uiso", "delta2")
    dense = fit_periodic(cell, r, g, free=free, qmin=0.5, qmax=25.0, qdamp=0.04)
    nyq = fit_periodic(cell, r, g, free=free, qmin=0.5, qmax=25.0, qdamp=0.04, nyquist=True)
    assert nyq.meta["oversampling"] == pytest.approx(1.0)
    assert np.diff(nyq.r) == pytest.approx(math.pi / 25.0)
    for name in ("a", "uiso_Ni", "delta2"):
        ratio = dense.uncertainties[name] / nyq.uncertainties[name]
        assert 0.5 < ratio < 2.0, (name, ratio)


def test_expansion_mode_for_a_crystal_and_fixed_parameters():
    cell = _ni_cell()
    r = np.arange(0.0, 20.0, 0.01)
    g = periodic_pdf(cell, r, expansion=1.01, uiso=0.006, qmax=25.0, qdamp=0.04).numpy()
    res = fit_periodic(cell, r, g, free=("scale", "expansion", "uiso"), qmax=25.0, qdamp=0.04)
    assert res.params["expansion"] == pytest.approx(1.01, abs=1e-6)
    assert res.params["qdamp"] == 0.04 and "qdamp" not in res.uncertainties
    assert res.meta["derived"]["a"] == pytest.approx(3.52 * 1.01, abs=1e-5)
    assert res.rw < 1e-4


def test_spdiameter_refines_for_a_nanocrystal():
    cell = _ni_cell()
    r = np.arange(0.0, 30.0, 0.01)
    g = periodic_pdf(cell, r, uiso=0.006, qmax=25.0, qdamp=0.04, spdiameter=28.0).numpy()
    res = fit_periodic(cell, r, g, free=("scale", "spdiameter"), qmax=25.0, qdamp=0.04, spdiameter=22.0,
                       init={"uiso": 0.006})
    assert res.params["spdiameter"] == pytest.approx(28.0, rel=1e-4)


def test_positions_refinement_lowers_rw():
    p = _ni_particle(5.0)
    r = np.arange(0.0, 12.0, 0.01)
    g = ParticleModel(p.numbers, p.positions, r, qmax=25.0)(uiso=0.005, qdamp=0.03).numpy()
    moved = Particle(p.numbers, p.positions + np.random.default_rng(3).normal(scale=0.04, size=p.positions.shape))
    before = fit_particle(moved, r, g, free=("scale",), init={"uiso": 0.005}, qmax=25.0, qdamp=0.03)
    after = fit_particle(moved, r, g, free=("scale", "positions"), init={"uiso": 0.005}, qmax=25.0, qdamp=0.03,
                         position_steps=30)
    assert "positions" in after.free and after.meta["positions_rms_shift"] > 0
    assert after.rw < 0.5 * before.rw


def test_rw_is_pdfguis_definition():
    assert rw([1.0, 2.0], [1.0, 1.0]) == pytest.approx(math.sqrt(1 / 5))
    assert rw([1.0, 2.0], [1.0, 1.0], weights=[1.0, 4.0]) == pytest.approx(math.sqrt(4 / 17))
    with pytest.raises(ValueError, match="zero"):
        rw([0.0, 0.0], [1.0, 1.0])


def test_dg_weights():
    cell = _ni_cell()
    r = np.arange(0.0, 15.0, 0.01)
    g = periodic_pdf(cell, r, uiso=0.006, qmax=25.0, qdamp=0.04).numpy()
    dg = np.full_like(r, 0.05)
    res = fit_periodic(cell, r, g, dg=dg, weights="dg", free=("scale", "uiso"), qmax=25.0, qdamp=0.04)
    assert res.rw < 1e-4 and res.meta["weights"] == "dg"
    with pytest.raises(ValueError, match="dG"):
        fit_periodic(cell, r, g, weights="dg", free=("scale",), qmax=25.0)
    with pytest.raises(ValueError, match="dG"):
        fit_periodic(cell, r, g, dg=np.zeros_like(r), weights="dg", free=("scale",), qmax=25.0)


@pytest.fixture(scope="module")
def ni_data():
    path = MEASURED / "Ni.gr"
    if not path.exists():
        pytest.skip(f"reference data not present: {path}")
    from pdfusion.pdf.files import read_pdf_file

    return read_pdf_file(path), Crystal.from_cif(MEASURED / "Ni.cif")


def test_ni_calibrant_reproduces_the_published_refinement(ni_data):
    """Ni.gr + Ni.cif, r 1.5-50 Å: PDFgui published Qdamp 0.04535, Qbroad 0.01696, a 3.52478 Å, Uiso 0.00589 Å²,
    delta2 1.71, scale 0.438, Rw 0.041."""
    data, cell = ni_data
    res = fit_periodic(cell, data.r, data.g, qmin=0.5, qmax=25.0, rmax=50.0)
    p, u = res.params, res.uncertainties
    assert res.rw <= 0.045
    _within(res, "qdamp", 0.04535, sigmas=2)
    _within(res, "qbroad", 0.01696, sigmas=2)
    _within(res, "uiso_Ni", 0.00589, sigmas=2)
    _within(res, "scale", 0.438, sigmas=2)
    assert p["a"] == pytest.approx(3.52478, abs=3e-4)  # srreal normalises peaks by r_ij: -0.0002 Å vs PDFfit2
    assert 1.6 < p["delta2"] < 2.1 and u["delta2"] < 0.1
    assert not res.warnings


def test_ni_calibrant_with_pdfguis_engine_reproduces_the_published_values(ni_data):
    data, cell = ni_data
    res = fit_periodic(cell, data.r, data.g, qmin=0.5, qmax=25.0, rmin=1.49, rmax=50.2, convention="pdffit2",
                       nyquist=True)
    p = res.params
    assert p["qdamp"] == pytest.approx(0.04535, abs=5e-5)
    assert p["qbroad"] == pytest.approx(0.01696, abs=5e-5)
    assert p["a"] == pytest.approx(3.52478, abs=2e-5)
    assert p["uiso_Ni"] == pytest.approx(0.00589, abs=2e-5)
    assert p["delta2"] == pytest.approx(1.71, abs=0.02)
    assert p["scale"] == pytest.approx(0.438, abs=1e-3)
    assert res.rw == pytest.approx(0.041, abs=5e-4)


# --------------------------------------------------------------------------------------------------
# garbage in: one-line errors and warnings
# --------------------------------------------------------------------------------------------------
def _curve():
    cell = _ni_cell()
    r = np.arange(0.0, 12.0, 0.01)
    return cell, r, periodic_pdf(cell, r, uiso=0.006, qmax=25.0, qdamp=0.04).numpy()


@pytest.mark.parametrize("case, match", [
    ("nan", "non-finite"), ("descending", "strictly increasing"), ("empty", "holds 0 data point"),
    ("window", "rmin < rmax"), ("length", "G values"), ("zeros", "zero everywhere"),
])
def test_bad_data_is_refused_in_one_line(case, match):
    cell, r, g = _curve()
    kw = dict(free=("scale",), qmax=25.0)
    if case == "nan":
        g = g.copy()
        g[500] = np.nan
    elif case == "descending":
        r = r[::-1].copy()
    elif case == "empty":
        kw["rmin"] = 20.0
        kw["rmax"] = 30.0
    elif case == "window":
        kw["rmin"] = 5.0
        kw["rmax"] = 2.0
    elif case == "length":
        g = g[:-3]
    elif case == "zeros":
        g = np.zeros_like(g)
    with pytest.raises(ValueError, match=match) as info:
        fit_periodic(cell, r, g, **kw)
    assert "\n" not in str(info.value)


def test_nan_outside_the_window_is_a_warning():
    cell, r, g = _curve()
    g = g.copy()
    g[0] = np.nan
    with pytest.warns(FitWarning, match="outside the fit window"):
        res = fit_periodic(cell, r, g, free=("scale",), qmax=25.0, qdamp=0.04, init={"uiso": 0.006})
    assert res.rw < 1e-6 and any("outside" in w for w in res.warnings)


def test_spikes_are_reported():
    cell, r, g = _curve()
    g = g.copy()
    g[700] += 5 * np.abs(g).max()
    with pytest.warns(FitWarning, match="spike"):
        fit_periodic(cell, r, g, free=("scale",), qmax=25.0, qdamp=0.04, init={"uiso": 0.006})


def test_duplicate_atoms_are_refused():
    p = _ni_particle(4.0)
    dup = Particle(np.append(p.numbers, 28), np.vstack([p.positions, p.positions[3] + [0.1, 0, 0]]))
    r = np.arange(0, 10, 0.01)
    with pytest.raises(ValueError, match="apart"):
        fit_particle(dup, r, np.sin(r), qmax=25.0)
    cell = Crystal(np.eye(3) * 3.52, np.vstack([FCC, [[0.01, 0, 0]]]), [28] * 5)
    with pytest.raises(ValueError, match="apart"):
        fit_periodic(cell, r, np.sin(r), qmax=25.0)


@pytest.mark.parametrize("kw, match", [
    ({"free": ("scale", "bogus")}, "unknown parameter 'bogus'"),
    ({"free": ("uiso_O",)}, "does not contain"),
    ({"free": ("b",)}, "tied by the cell's symmetry"),
    ({"free": ("positions",)}, "unknown parameter"),
    ({"init": {"delta2": float("nan")}}, "finite"),
    ({"init": {"nope": 1.0}}, "unknown parameter 'nope'"),
    ({"qmax": float("nan")}, "qmax"),
    ({"qmin": 30.0}, "qmin"),
    ({"free": ("spdiameter",)}, "starting value"),
])
def test_bad_arguments_are_refused(kw, match):
    cell, r, g = _curve()
    args = {"qmax": 25.0, **kw}
    with pytest.raises(ValueError, match=match):
        fit_periodic(cell, r, g, **args)


def test_start_outside_bounds_is_clipped_with_a_warning():
    p = _ni_particle(4.0)
    r = np.arange(0, 10, 0.01)
    g = ParticleModel(p.numbers, p.positions, r, qmax=25.0)(uiso=0.005, qdamp=0.04).numpy()
    with pytest.warns(FitWarning, match="outside its allowed range"):
        res = fit_particle(p, r, g, init={"expansion": 1.6}, qmax=25.0)
    assert res.params["expansion"] == pytest.approx(1.0, abs=1e-4)


def test_non_finite_model_names_the_parameter():
    data = prepare_data(np.arange(0, 5, 0.01), np.sin(np.arange(0, 5, 0.01)), rmin=0.5)
    spec = _Spec({"scale": 1.0, "qdamp": 0.01}, {"qdamp": (0.0, 1.0)}, ["scale", "qdamp"])
    r = torch.as_tensor(data.r)

    def evaluate(v):
        g = v["scale"] * torch.sin(r) * torch.exp(-v["qdamp"] * r)
        return torch.where(v["qdamp"] > 0.2, torch.full_like(g, float("nan")), g)

    data.g = (np.sin(data.r) * np.exp(-0.5 * data.r))  # pulls qdamp past 0.2
    with pytest.raises(ValueError, match="non-finite at qdamp"):
        _least_squares(evaluate, spec, data, 100)


def test_particle_larger_than_the_window_sums_every_pair():
    """A 41 Å spinel particle fitted to 20 Å: the refinement model equals simulate_pdf run to 75 Å (every pair)
    on the window. Pairs longer than the window + 6 ripples still reach it (termination ripples, the Qmin cut);
    leaving them out, as srreal's range does, changed G by R_w 0.04 here."""
    import math

    from pdfusion.config import PDFConfig
    from pdfusion.pdf import simulate_pdf
    from pdfusion.structures.particles import make_particle

    p = make_particle("spinel", "Fe", 19.0)
    diameter = 2 * np.linalg.norm(p.positions - p.positions.mean(0), axis=1).max()
    assert diameter > 40.0
    r = np.arange(1.5, 20.0 + 1e-9, 0.01)
    g = ParticleModel(p.numbers, p.positions, r, qmin=1.0, qmax=25.0)(uiso=0.006, qdamp=0.04).numpy()
    cfg = PDFConfig(rmin=0.0, rmax=75.0, rstep=0.01, qmin=1.0, qmax=25.0, qdamp=0.04, biso=8 * math.pi**2 * 0.006,
                    normalize=False)
    ref = simulate_pdf(torch.tensor(p.positions), torch.tensor(p.numbers), cfg=cfg).numpy()
    ref = np.interp(r, np.arange(len(ref)) * 0.01, ref)
    assert rw(ref, g) <= 0.005


def test_fit_options_are_one_typed_config():
    """FitConfig (config.py) and keyword options are the same fit; bad values fail naming the field."""
    from pdfusion.config import PARTICLE_EXPANSION, ConfigError, FitConfig, ScreenConfig, from_dict, to_dict

    p = _ni_particle(4.0)
    r = np.arange(0, 10, 0.01)
    g = ParticleModel(p.numbers, p.positions * 1.02, r, qmax=25.0)(uiso=0.006, qdamp=0.04).numpy()
    cfg = FitConfig(qmax=25.0, free="scale, expansion, uiso", rmax=9.0)
    assert from_dict(FitConfig, to_dict(cfg)) == cfg and cfg.free == ("scale", "expansion", "uiso")
    a = fit_particle(p, r, g, cfg)
    b = fit_particle(p, r, g, qmax=25.0, free=["scale", "expansion", "uiso"], rmax=9.0)
    assert a.params == b.params and a.params["expansion"] == pytest.approx(1.02, abs=1e-4)
    assert fit_particle(p, r, g, cfg, rmax=8.0).meta["rmax"] == pytest.approx(8.0)  # a keyword replaces a field
    with pytest.raises(TypeError, match="unknown fit option"):
        fit_particle(p, r, g, cfg, qmaxx=20.0)
    for bad, field in [({"qdamp": -1.0}, "qdamp"), ({"weights": "dG"}, "weights"), ({"max_nfev": 0}, "max_nfev"),
                       ({"expansion_bounds": (1.1, 1.2)}, "expansion_bounds")]:
        with pytest.raises(ConfigError, match=f"^{field}:"):
            FitConfig(**bad)
    assert FitConfig().expansion_bounds == PARTICLE_EXPANSION == (0.8, 1.25)
    with pytest.raises(ConfigError, match="^expansion:"):  # the screen may not search beyond the refinement's bounds
        ScreenConfig(expansion=(0.7, 1.1))
