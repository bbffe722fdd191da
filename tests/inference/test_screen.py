"""Screening and solve: the fast model against simulate_pdf, a known candidate ranked first from a noisy,
scaled simulated target, the report's schema, the Ray path."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from pdfusion.config import PDFConfig
from pdfusion.inference.library import build_library
from pdfusion.inference.report import REPORT_SCHEMA_KEYS, format_table, write_report
from pdfusion.inference.screen import (
    Curves,
    ScreenConfig,
    local_fit,
    prepare_target,
    rescore,
    score_candidate,
    screen,
)
from pdfusion.inference.solve import SolveConfig, solve
from pdfusion.pdf import r_grid, simulate_pdf
from pdfusion.structures.clusters import icosahedron
from pdfusion.structures.particles import make_particle

QMAX = 22.0
UISO = 0.006


def simulated(particle, expansion=1.0, scale=1.0, noise=0.0, rmax=20.0, seed=0, qstep=None):
    """A 'measured' G(r): simulate_pdf of the expanded particle, scaled, with Gaussian noise."""
    cfg = PDFConfig(rmin=0.0, rmax=rmax, rstep=0.01, qmin=1.0, qmax=QMAX, qstep=qstep, qdamp=0.04,
                    biso=8 * math.pi**2 * UISO, normalize=False)
    pos = torch.as_tensor(particle.positions * expansion)[None]
    g = simulate_pdf(pos, torch.as_tensor(particle.numbers)[None], None, cfg)[0].numpy() * scale
    g = g + np.random.default_rng(seed).normal(0.0, noise * np.abs(g).max(), g.shape)
    return r_grid(cfg).numpy(), g


def test_fast_model_matches_simulate_pdf():
    # against simulate_pdf on a fine Q grid (qstep 0.005, near the continuous sine transform): srreal's
    # default Q step pi / (extended rmax) alone moves its curves by Rw ~0.01
    torch.set_num_threads(1)
    for p in (icosahedron("Pt", 4), make_particle("spinel", "Fe", 7.0)):
        r, g = simulated(p, expansion=1.02, rmax=30.0, qstep=0.005)
        t = prepare_target(r, g, ScreenConfig(qmin=1.0, qmax=QMAX, qdamp=0.04))
        gc = Curves(p, t.q, t.cfg).fq(np.array([1.02]), np.array([UISO]))[0, 0] @ t.transform
        assert np.sqrt(((gc - t.g) ** 2).sum() / (t.g**2).sum()) < 0.004
        for d2 in (2.0, 4.0):  # the delta2 stage on short pairs
            cfg = PDFConfig(rmin=0.0, rmax=30.0, rstep=0.01, qmin=1.0, qmax=QMAX, qstep=0.005, qdamp=0.04,
                            biso=8 * math.pi**2 * UISO, delta2=d2, normalize=False)
            gd = simulate_pdf(torch.as_tensor(p.positions * 1.02)[None], torch.as_tensor(p.numbers)[None], None,
                              cfg)[0].numpy()
            gdc = Curves(p, t.q, t.cfg).fq_delta2(1.02, np.array([UISO]), np.array([d2]))[0, 0] @ t.transform
            gdw = np.interp(t.r, r_grid(cfg).numpy(), gd)
            assert np.sqrt(((gdc - gdw) ** 2).sum() / (gdw**2).sum()) < 0.012


def test_score_recovers_scale_expansion_uiso():
    p = icosahedron("Pt", 4)
    r, g = simulated(p, expansion=1.015, scale=0.37, noise=0.01)
    s = score_candidate(p, prepare_target(r, g, ScreenConfig(qmin=1.0, qmax=QMAX)))
    assert s.expansion == pytest.approx(1.015, abs=0.001)
    assert s.scale == pytest.approx(0.37, rel=0.05)
    assert s.uiso == pytest.approx(UISO, abs=0.0021)
    assert s.rw < 0.1


def test_rescore_finds_delta2_and_local_fit_refines_it():
    p = icosahedron("Pt", 5)
    cfg = PDFConfig(rmin=0.0, rmax=20.0, rstep=0.01, qmin=1.0, qmax=QMAX, qdamp=0.04, biso=8 * math.pi**2 * 0.008,
                    delta2=3.0, normalize=False)
    g = simulate_pdf(torch.as_tensor(p.positions * 1.01)[None], torch.as_tensor(p.numbers)[None], None, cfg)[0]
    t = prepare_target(r_grid(cfg).numpy(), 0.5 * g.numpy(), ScreenConfig(qmin=1.0, qmax=QMAX))
    first = score_candidate(p, t)
    second = rescore(p, t, first)
    assert second.delta2 == pytest.approx(3.0, abs=1.0) and second.rw < 0.6 * first.rw
    fit = local_fit(p, t, second)
    assert fit.params["delta2"] == pytest.approx(3.0, abs=0.5) and fit.params["uiso"] == pytest.approx(0.008, abs=0.001)
    assert fit.params["expansion"] == pytest.approx(1.01, abs=0.001) and fit.rw <= second.rw + 0.01


@pytest.fixture(scope="module")
def pt_result():
    truth = icosahedron("Pt", 4)  # 147 atoms, in the 'Pt' library at radii 5-8 Å
    r, g = simulated(truth, expansion=1.02, scale=0.6, noise=0.01)
    cfg = SolveConfig(radii=(5.0, 8.0), top=4, use_ray=False)
    return solve(r, g, "Pt", cfg, meta={"qmin": 1.0, "qmax": QMAX}, progress=False)


def test_known_metal_candidate_ranked_first(pt_result):
    best = pt_result.best
    assert best.structure_type == "icosahedron" and best.n_atoms == 147
    assert best.params["expansion"] == pytest.approx(1.02, abs=0.002)
    assert best.params["scale"] == pytest.approx(0.6, rel=0.05)
    assert best.rw < 0.1
    assert [c.rw for c in pt_result.candidates] == sorted(c.rw for c in pt_result.candidates)
    assert pt_result.screening[0]["structure_type"] == "icosahedron"
    assert pt_result.config["qmax"] == QMAX  # from the header meta


def test_known_oxide_candidate_ranked_first():
    truth = make_particle("fluorite", "Ce", 6.0)
    r, g = simulated(truth, expansion=0.98, scale=0.05, noise=0.01)
    res = solve(r, g, "CeO2", SolveConfig(radii=(4.0, 6.0), top=3), meta={"qmin": 1.0, "qmax": QMAX}, progress=False)
    assert res.best.structure_type == "fluorite" and res.best.n_atoms == len(truth)
    assert res.best.params["expansion"] == pytest.approx(0.98, abs=0.002)
    assert res.best.lattice_params["a"] == pytest.approx(truth.meta["lattice_params"]["a"] * 0.98, rel=2e-3)
    # the truth is the library's largest fluorite, so larger ones were screened too -- and lost
    n_lib = len(build_library("CeO2", radii=(4.0, 6.0)))
    grown = [s for s in res.screening[:] if s["structure_type"] == "fluorite" and s["n_atoms"] > len(truth)]
    assert len(res.screening) == n_lib + len(grown) and grown


def test_generated_candidates_join_the_ranking():
    truth = make_particle("rocksalt", "Ni", 5.0)
    r, g = simulated(truth, noise=0.005)
    gen = truth.centered()
    gen.meta = {"source": "test"}
    res = solve(r, g, "NiO", SolveConfig(radii=(4.0,), top=2, oxide_types=("rutile", "wurtzite")), extra=[gen],
                meta={"qmin": 1.0, "qmax": QMAX}, progress=False)
    assert res.best.structure_type == "generated" and res.best.family == "generated"
    assert res.best.rw < 0.05
    # without the least-squares refinement every candidate gets the screening model's local fit
    quick = solve(r, g, "NiO", SolveConfig(radii=(4.0,), top=2, refine=False, oxide_types=("rocksalt", "rutile")),
                  meta={"qmin": 1.0, "qmax": QMAX}, progress=False)
    assert {c.method for c in quick.candidates} == {"screen-local"} and quick.best.structure_type == "rocksalt"


def test_report_json_schema(pt_result, tmp_path):
    write_report(pt_result, tmp_path, data_name="sim.gr", n_plots=1)
    report = json.loads((tmp_path / "report.json").read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON {c}"))
    cands = report["candidates"]
    assert len(cands) == len(pt_result.candidates) and [c["rank"] for c in cands] == list(range(1, len(cands) + 1))
    for c in cands:
        for key in REPORT_SCHEMA_KEYS:
            assert key in c
        for key in ("scale", "expansion", "uiso_Pt", "delta2"):  # Uiso per element, as pdf.refine names it
            assert key in c["params"] and key in c["uncertainties"]
        assert (tmp_path / c["xyz"]).is_file()
    assert [c["rw"] for c in cands] == sorted(c["rw"] for c in cands)
    assert (tmp_path / "fit_rank01.png").stat().st_size > 1000 and not (tmp_path / "fit_rank02.png").exists()
    assert report["screening"][0]["rw"] <= report["screening"][-1]["rw"]
    assert "icosahedron" in format_table(pt_result).splitlines()[2]


def test_target_window_and_errors():
    r = np.arange(0, 40, 0.01)
    g = np.sin(r)
    t = prepare_target(r, g, ScreenConfig())
    assert t.r[0] == pytest.approx(1.5) and t.rmax == pytest.approx(30.0)
    assert prepare_target(r, g, ScreenConfig(rmax=12.0)).rmax == pytest.approx(12.0)
    with pytest.raises(ValueError, match="fit window"):
        prepare_target(r[:100], g[:100], ScreenConfig(rmin=1.5))
    with pytest.raises(ValueError, match="qmax"):
        ScreenConfig(qmin=5, qmax=2)
    with pytest.raises(ValueError, match="empty"):
        screen([], t)


@pytest.fixture(scope="module")
def ray_session():
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.mark.ray
def test_ray_path_matches_serial(ray_session):
    lib = build_library("Pt", radii=(5.0,), cluster_types=("fcc_sphere", "icosahedron", "octahedron", "bcc_sphere"))
    r, g = simulated(lib[0], expansion=1.01, scale=0.5)
    t = prepare_target(r, g, ScreenConfig(qmin=1.0, qmax=QMAX))
    serial = screen(lib, t, use_ray=False, progress=False)
    remote = screen(lib, t, use_ray=True, progress=False)
    assert [s.index for s in remote] == [s.index for s in serial]
    assert [s.rw for s in remote] == pytest.approx([s.rw for s in serial], abs=1e-12)
    assert serial[0].index == 0
