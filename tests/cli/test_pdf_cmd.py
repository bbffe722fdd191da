"""`pdfusion pdf STRUCTURE_FILE` through the in-process entry point `pdfusion.cli.main`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pdfusion.cli import main
from pdfusion.config import PDFConfig
from pdfusion.pdf import r_grid, simulate_pdf
from pdfusion.pdf.files import read_pdf


def _write_xyz(path, numbers, positions):
    symbols = {8: "O", 22: "Ti"}
    lines = [str(len(numbers)), "test cluster"]
    lines += [f"{symbols[int(z)]} {x:.6f} {y:.6f} {w:.6f}" for z, (x, y, w) in zip(numbers, positions, strict=True)]
    path.write_text("\n".join(lines) + "\n")


def test_xyz_to_csv_and_plot_matches_library(tmp_path, capsys):
    rng = np.random.default_rng(0)
    pos = rng.normal(scale=2.5, size=(20, 3))
    z = np.where(np.arange(20) % 3 == 0, 22, 8)
    xyz = tmp_path / "c.xyz"
    _write_xyz(xyz, z, pos)
    out, png = tmp_path / "g.csv", tmp_path / "g.png"
    rc = main(["pdf", str(xyz), "--qmax", "25", "--biso", "0.5", "--rmax", "20", "--no-normalize",
               "--out", str(out), "--plot", str(png)])
    assert rc == 0
    assert "20 atoms" in capsys.readouterr().out
    r, g = read_pdf(out)
    cfg = PDFConfig(qmax=25, biso=0.5, rmax=20, normalize=False)
    expected = simulate_pdf(torch.tensor(np.round(pos, 6)), torch.tensor(z), cfg=cfg).numpy()
    assert np.allclose(r, r_grid(cfg).numpy(), atol=1e-9)
    assert np.allclose(g, expected, atol=1e-8 * np.abs(expected).max())
    assert png.stat().st_size > 1000


def test_seed_h5_reports_rwp_against_stored_curve(tmp_path, capsys, seed_h5_dir):
    f = sorted(seed_h5_dir.glob("*.h5"))[0]
    png = tmp_path / "seed.png"
    assert main(["pdf", str(f), "--plot", str(png)]) == 0
    text = capsys.readouterr().out
    score = float(text.split("R_wp vs stored = ")[1].split(";")[0])
    assert score < 1e-3
    assert png.exists()


def test_stdout_csv_without_outputs(tmp_path, capsys):
    xyz = tmp_path / "d.xyz"
    _write_xyz(xyz, [22, 8], [[0, 0, 0], [1.9, 0, 0]])
    assert main(["pdf", str(xyz), "--rmax", "5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "r,G" and len(lines) == 1 + 500


def test_errors_exit_2_with_message(tmp_path, capsys):
    assert main(["pdf", str(tmp_path / "missing.xyz")]) == 2
    assert "no such structure file" in capsys.readouterr().err
    one = tmp_path / "one.xyz"
    _write_xyz(one, [8], [[0, 0, 0]])
    assert main(["pdf", str(one)]) == 2
    assert "at least two atoms" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["pdf", str(one), "--radiation", "electron"])


def _mgo_cif(path):
    from pymatgen.core import Lattice, Structure

    s = Structure.from_spacegroup("Fm-3m", Lattice.cubic(4.21), ["Mg", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    s.to(filename=str(path))
    return path


def test_periodic_cif_is_refused_with_one_line_naming_radius_and_periodic(tmp_path, capsys):
    cif = _mgo_cif(tmp_path / "bulk.cif")
    assert main(["pdf", str(cif), "--out", str(tmp_path / "g.csv")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "bulk.cif" in err and "periodic crystal" in err and "--radius" in err and "--periodic" in err
    assert not (tmp_path / "g.csv").exists()
    assert main(["pdf", str(cif), "--periodic"]) == 2
    assert "pdfusion fit --periodic" in capsys.readouterr().err


def test_radius_cuts_a_particle_from_the_crystal(tmp_path, capsys):
    from pdfusion.structures.io import read_structure
    from pdfusion.structures.particles import make_particle

    cif = _mgo_cif(tmp_path / "bulk.cif")
    out = tmp_path / "g.csv"
    assert main(["pdf", str(cif), "--radius", "5", "--rmax", "12", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    n_atoms = int(text.split(": ")[1].split(" atoms")[0])
    # the same cut as `pdfusion structure rocksalt Mg 5 --lattice 4.21` (metals within 5 Å + bonded oxygens)
    ref = make_particle("rocksalt", "Mg", 5.0, lattice=(4.21,))
    assert n_atoms == len(ref) and "cut from the 8-atom cell" in text
    r, g = read_pdf(out)
    cfg = PDFConfig(rmax=12)
    expected = simulate_pdf(torch.tensor(ref.positions), torch.tensor(ref.numbers), cfg=cfg).numpy()
    np.testing.assert_allclose(g, expected, atol=1e-6)
    # a finite particle written to CIF (vacuum box) is not periodic: simulated as it is, --radius refused
    from pdfusion.structures.io import write_structure

    write_structure(ref, tmp_path / "particle.cif")
    assert read_structure(tmp_path / "particle.cif").meta["periodic"] is False
    assert main(["pdf", str(tmp_path / "particle.cif"), "--rmax", "12", "--out", str(out)]) == 0
    assert f"{len(ref)} atoms" in capsys.readouterr().out
    assert main(["pdf", str(tmp_path / "particle.cif"), "--radius", "4"]) == 2
    assert "finite particle" in capsys.readouterr().err
    assert main(["pdf", str(cif), "--radius", "-1"]) == 2
    assert "--radius" in capsys.readouterr().err


def test_as_cluster_simulates_the_cell_atoms(tmp_path, capsys):
    cif = _mgo_cif(tmp_path / "bulk.cif")
    assert main(["pdf", str(cif), "--as-cluster", "--rmax", "5", "--out", str(tmp_path / "g.csv")]) == 0
    assert "8 atoms (a periodic cell's atoms simulated as a cluster" in capsys.readouterr().out


def test_measured_ni_cif_is_periodic_and_cut(tmp_path, capsys, measured_gr):
    ni = measured_gr.parent / "Ni.cif"
    if not ni.exists():
        pytest.skip("Ni.cif not present")
    assert main(["pdf", str(ni)]) == 2
    assert "--radius" in capsys.readouterr().err
    assert main(["pdf", str(ni), "--radius", "8", "--out", str(tmp_path / "ni.csv")]) == 0
    assert "201 atoms" in capsys.readouterr().out  # fcc shells within 8 Å of an atom (a = 3.52 Å)
