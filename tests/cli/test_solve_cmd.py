"""`pdfusion solve` end to end: a simulated .gr in, a ranked report out; a measured file; clear errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from pdfusion.cli import main
from pdfusion.config import PDFConfig
from pdfusion.pdf import r_grid, simulate_pdf
from pdfusion.structures.particles import make_particle


def write_gr(path, r, g, header: str):
    path.write_text(header + "\n".join(f"{a:.4f} {b:.8f}" for a, b in zip(r, g, strict=True)) + "\n")
    return path


@pytest.fixture(scope="module")
def ceo2_gr(tmp_path_factory):
    truth = make_particle("fluorite", "Ce", 6.0)
    cfg = PDFConfig(rmin=0.0, rmax=25.0, rstep=0.01, qmin=1.0, qmax=20.0, qdamp=0.04, biso=8 * math.pi**2 * 0.005,
                    normalize=False)
    g = simulate_pdf(torch.as_tensor(truth.positions * 1.01)[None], torch.as_tensor(truth.numbers)[None], None, cfg)[0]
    g = g.numpy() * 0.2 + np.random.default_rng(1).normal(0, 0.003, g.shape)
    r = r_grid(cfg).numpy()
    folder = tmp_path_factory.mktemp("gr")
    header = ("[PDF]\ncomposition = CeO2\nqmin = 1.0\nqmax = 20.0\n\n"
              "#### start data\n#S 1\n#L r($\\AA$)  G($\\AA^{-2}$)\n")
    with_header = write_gr(folder / "ceo2.gr", r, g, header)
    bare = write_gr(folder / "bare.gr", r, g, "")
    return with_header, bare, len(truth)


def test_solve_end_to_end(ceo2_gr, tmp_path, capsys):
    path, _, n_true = ceo2_gr
    out = tmp_path / "out"
    code = main(["solve", str(path), "--radii", "4", "6", "--top", "3", "--quiet", "-o", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "fluorite" in printed and "Rw" in printed
    report = json.loads((out / "report.json").read_text())
    assert report["composition"] == "CeO2"  # from the header
    best = report["candidates"][0]
    assert best["structure_type"] == "fluorite" and best["n_atoms"] == n_true
    assert best["params"]["expansion"] == pytest.approx(1.01, abs=0.002)
    assert best["rw"] < 0.1
    assert report["config"]["qmax"] == 20.0
    for c in report["candidates"]:
        assert (out / c["xyz"]).is_file() and (out / c["plot"]).is_file()
    first = (out / best["xyz"]).read_text().splitlines()
    assert int(first[0]) == n_true and "Rw=" in first[1]


def test_missing_composition_is_one_line(ceo2_gr, tmp_path, capsys):
    _, bare, _ = ceo2_gr
    code = main(["solve", str(bare), "-o", str(tmp_path / "x"), "--quiet"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--composition" in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()


def test_bad_composition_is_one_line(ceo2_gr, tmp_path, capsys):
    path, _, _ = ceo2_gr
    assert main(["solve", str(path), "--composition", "NaCl", "-o", str(tmp_path / "y"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "composition" in err


def test_measured_pt_file(measured_gr, tmp_path):
    """The measured Pt_S1.gr (skipped when ../shared is absent): a small library still finds an fcc-type
    metal particle; composition and Qmax come from the header."""
    out = tmp_path / "pt"
    code = main(["solve", str(measured_gr), "--radii", "8", "10", "--top", "2", "--no-plot", "--quiet", "-o", str(out)])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["composition"] == "Pt" and report["config"]["qmax"] == pytest.approx(22.0, abs=0.01)
    best = report["candidates"][0]
    assert best["family"] == "metal" and best["rw"] < 0.4
    assert best["params"]["expansion"] == pytest.approx(1.0, abs=0.02)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A 10-step model on TiO6 octahedra (7 atoms, within the tiny model's max_atoms): untrained samples, but
    the --model path runs end to end."""
    from pdfusion_testdata import train_tiny_checkpoint

    particles = [(p.numbers, p.positions, 22) for p in (make_particle("rocksalt", "Ti", r) for r in (2.0, 2.5, 2.8))]
    return train_tiny_checkpoint(tmp_path_factory.mktemp("model") / "tiny.pt", particles,
                                 PDFConfig(rmax=10.0, rstep=0.05, qmax=20.0))


def test_model_candidates_are_ranked_with_the_library(tiny_checkpoint, ceo2_gr, tmp_path):
    path, _, _ = ceo2_gr
    out = tmp_path / "m"
    code = main(["solve", str(path), "--model", str(tiny_checkpoint), "-k", "3", "--radii", "5", "--top", "2",
                 "--families", "oxide", "--no-plot", "--quiet", "-o", str(out)])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    gen = [s for s in report["screening"] if s["family"] == "generated"]
    assert len(gen) == 3 and all(s["structure_type"] == "generated" for s in gen)
    kinds = [c["family"] for c in report["candidates"]]
    assert "generated" in kinds and report["model"] == str(tiny_checkpoint)
    assert report["candidates"][0]["family"] == "oxide"  # an untrained model does not beat the library
