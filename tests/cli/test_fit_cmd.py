"""`pdfusion fit STRUCTURE DATA` through the in-process entry point `pdfusion.cli.main`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from pdfusion.cli import main
from pdfusion.pdf.periodic import Crystal, periodic_pdf
from pdfusion.pdf.realspace import ParticleModel

MEASURED = Path(os.environ.get("PDFUSION_SHARED", Path(__file__).resolve().parents[2].parent / "shared")) / \
    "data" / "measured-examples"
NI_CIF = """data_Ni
_cell_length_a 3.52
_cell_length_b 3.52
_cell_length_c 3.52
_cell_angle_alpha 90
_cell_angle_beta 90
_cell_angle_gamma 90
_symmetry_space_group_name_H-M 'F m -3 m'
_symmetry_Int_Tables_number 225
loop_
_atom_site_label
_atom_site_type_symbol
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
Ni1 Ni 0 0 0
"""


def _write_gr(path: Path, r, g, header: str = "qmax = 25.0\nqmin = 0.5\n") -> Path:
    body = "".join(f"{a:.4f} {b:.8g}\n" for a, b in zip(r, g, strict=True))
    path.write_text(f"[PDF]\n{header}\n#### start data\n#S 1\n#L r G\n{body}")
    return path


def _ni_sphere(radius: float, a: float = 3.52) -> tuple[np.ndarray, np.ndarray]:
    fcc = np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    n = int(radius / a) + 2
    k = np.arange(-n, n + 1)
    shifts = np.array(np.meshgrid(k, k, k, indexing="ij")).reshape(3, -1).T
    pos = ((fcc[None] + shifts[:, None]).reshape(-1, 3)) * a
    pos = pos[np.linalg.norm(pos, axis=1) <= radius + 1e-6]
    return np.full(len(pos), 28), pos


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pdfusion fit: error:"), err
    assert "Traceback" not in err[0]
    return err[0]


def test_periodic_cif_fit_writes_every_output(tmp_path, capsys):
    cif = tmp_path / "ni.cif"
    cif.write_text(NI_CIF)
    r = np.arange(0.0, 20.0, 0.01)
    g = periodic_pdf(Crystal.from_cif(cif), r, lattice=(3.525,) * 3 + (90.0,) * 3, scale=0.5, uiso=0.006,
                     delta2=1.5, qdamp=0.045, qbroad=0.017, qmin=0.5, qmax=25.0).numpy()
    data = _write_gr(tmp_path / "ni.gr", r, g)
    out = tmp_path / "out"
    assert main(["fit", str(cif), str(data), "--periodic", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "Rw" in text and "±" in text and "qbroad" in text
    for suffix in ("refined.xyz", "refined.cif", "fit.json", "fit.csv", "fit.png", "fit.pdf"):
        assert (out / f"ni.{suffix}").stat().st_size > 100, suffix
    doc = json.loads((out / "ni.fit.json").read_text())
    assert doc["model"] == "periodic" and doc["qmax"] == 25.0 and doc["qmin"] == 0.5
    assert doc["params"]["a"] == pytest.approx(3.525, abs=1e-4)
    assert doc["params"]["qbroad"] == pytest.approx(0.017, abs=1e-3)
    assert doc["rw"] < 1e-3 and set(doc["uncertainties"]) == set(doc["free"])
    assert "_atom_site_U_iso_or_equiv" in (out / "ni.refined.cif").read_text()
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temp files
    assert not list(out.glob(".*.tmp*"))  # nor io_utils names (.<name>.<random>.tmp<suffix>)


def test_particle_xyz_fit_with_fix_and_init(tmp_path, capsys):
    z, pos = _ni_sphere(6.0)
    xyz = tmp_path / "ni.xyz"
    xyz.write_text(f"{len(z)}\nNi cluster\n" + "".join(f"Ni {x:.6f} {y:.6f} {w:.6f}\n" for x, y, w in pos))
    r = np.arange(0.0, 15.0, 0.01)
    g = ParticleModel(z, np.round(pos, 6), r, qmin=0.5, qmax=25.0)(scale=0.8, expansion=1.01, uiso=0.006, delta2=1.0,
                                                                     qdamp=0.045).numpy()
    data = _write_gr(tmp_path / "p.gr", r, g)
    out = tmp_path / "o"
    rc = main(["fit", str(xyz), str(data), "--qdamp", "0.045", "--fix", "delta2", "--init", "delta2=1.0",
               "-o", str(out), "--no-plot"])
    assert rc == 0
    doc = json.loads((out / "p.fit.json").read_text())
    assert doc["model"] == "particle" and "delta2" not in doc["free"]
    assert doc["params"]["expansion"] == pytest.approx(1.01, abs=1e-4)
    assert doc["params"]["uiso_Ni"] == pytest.approx(0.006, abs=1e-4)
    assert not (out / "p.fit.png").exists()
    lines = (out / "p.refined.xyz").read_text().splitlines()
    assert int(lines[0]) == len(z)


def test_radius_cuts_a_particle_from_a_cif(tmp_path, capsys):
    cif = tmp_path / "ni.cif"
    cif.write_text(NI_CIF)
    z, pos = _ni_sphere(5.0)
    r = np.arange(0.0, 12.0, 0.01)
    g = ParticleModel(z, pos, r, qmax=25.0)(scale=0.5, uiso=0.005, qdamp=0.04).numpy()
    data = _write_gr(tmp_path / "c.gr", r, g, header="qmax = 25.0\n")
    assert main(["fit", str(cif), str(data), "--radius", "5", "--qdamp", "0.04", "--free", "scale,uiso",
                 "-o", str(tmp_path / "o"), "--no-plot"]) == 0
    doc = json.loads((tmp_path / "o" / "c.fit.json").read_text())
    assert doc["n_atoms"] == len(z) and doc["rw"] < 1e-4


def test_ni_calibrant_command(tmp_path, capsys):
    cif, gr = MEASURED / "Ni.cif", MEASURED / "Ni.gr"
    if not gr.exists():
        pytest.skip(f"reference data not present: {gr}")
    assert main(["fit", str(cif), str(gr), "--periodic", "--rmax", "50", "-o", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / "Ni.fit.json").read_text())
    p = doc["params"]
    assert doc["rw"] <= 0.045 and doc["qmax"] == 25.0
    assert p["qdamp"] == pytest.approx(0.04535, abs=5e-4)
    assert p["qbroad"] == pytest.approx(0.01696, abs=1e-3)
    assert p["a"] == pytest.approx(3.52478, abs=3e-4)
    assert p["uiso_Ni"] == pytest.approx(0.00589, abs=1e-4)


def test_warnings_are_printed_and_the_fit_still_runs(tmp_path, capsys):
    cif = tmp_path / "ni.cif"
    cif.write_text(NI_CIF)
    r = np.arange(0.0, 12.0, 0.01)
    g = periodic_pdf(Crystal.from_cif(cif), r, uiso=0.006, qdamp=0.04, qmax=25.0).numpy()
    g[600] += 50.0  # a spike
    data = _write_gr(tmp_path / "s.gr", r, g, header="qmax = 25.0\n")
    assert main(["fit", str(cif), str(data), "--periodic", "--free", "scale,uiso", "-o", str(tmp_path / "o"),
                 "--no-plot"]) == 0
    err = capsys.readouterr().err
    assert "pdfusion fit: warning: data: 1 isolated spike" in err


@pytest.mark.parametrize("case, match", [
    ("no_qmax", "--qmax"), ("nan", "finite"), ("descending", "strictly increasing"), ("cif_needs_mode", "--periodic"),
    ("duplicates", "apart"), ("missing", "no such"), ("bad_free", "unknown parameter"), ("empty_window", "holds"),
    ("xyz_periodic", "needs a CIF"), ("bad_init", "--init"),
])
def test_garbage_exits_2_with_one_line(tmp_path, capsys, case, match):
    cif = tmp_path / "ni.cif"
    cif.write_text(NI_CIF)
    xyz = tmp_path / "two.xyz"
    xyz.write_text("2\n\nNi 0 0 0\nNi 2.49 0 0\n")
    r = np.arange(0.0, 10.0, 0.01)
    g = np.sin(3 * r) * np.exp(-r / 4)
    data = _write_gr(tmp_path / "d.gr", r, g)
    args = ["fit", str(xyz), str(data)]
    if case == "no_qmax":
        data = _write_gr(tmp_path / "d.gr", r, g, header="composition = Ni\n")
    elif case == "nan":
        g[400] = np.nan
        data = _write_gr(tmp_path / "d.gr", r, g)
    elif case == "descending":
        data = _write_gr(tmp_path / "d.gr", r[::-1], g)
    elif case == "cif_needs_mode":
        args = ["fit", str(cif), str(data)]
    elif case == "duplicates":
        xyz.write_text("3\n\nNi 0 0 0\nNi 0.2 0 0\nNi 2.49 0 0\n")
    elif case == "missing":
        args = ["fit", str(tmp_path / "nope.xyz"), str(data)]
    elif case == "bad_free":
        args += ["--free", "scale,wobble"]
    elif case == "empty_window":
        args += ["--rmin", "20", "--rmax", "30"]
    elif case == "xyz_periodic":
        args += ["--periodic"]
    elif case == "bad_init":
        args += ["--init", "uiso"]
    assert main([*args, "-o", str(tmp_path / "o")]) == 2
    assert match in _one_line_error(capsys)
