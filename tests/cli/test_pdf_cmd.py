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
