"""Reading measured/simulated PDF files, interpolation onto a grid, atomic CSV writing."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from pdfusion.pdf.files import interpolate_pdf, read_pdf, write_pdf_csv


def test_reads_real_xpdfsuite_file(measured_gr):
    r, g = read_pdf(measured_gr)
    assert r.shape == g.shape == (5001,)
    assert r[0] == 0.0 and r[-1] == pytest.approx(50.0)
    assert np.allclose(np.diff(r), 0.01)
    assert g[1] == pytest.approx(0.00144704) and g[3] == pytest.approx(0.00405798)


def test_reads_gr_with_header_and_start_marker(tmp_path):
    p = tmp_path / "x.gr"
    p.write_text("[PDF]\nwavelength = 0.1\nqmax = 20\n\n#### start data\n#S 1\n#L r G dr dG\n"
                 "0.0 0.0 0 0\n0.5 1.5 0 0\n1.0 -2.0 0 0\n")
    r, g = read_pdf(p)
    assert r.tolist() == [0.0, 0.5, 1.0] and g.tolist() == [0.0, 1.5, -2.0]


def test_reads_plain_columns_and_csv_with_or_without_header(tmp_path):
    (tmp_path / "a.dat").write_text("# comment\n1 2\n2 3\n\n3 4\n")
    (tmp_path / "b.csv").write_text("r,G\n1,2\n2,3\n3,4\n")
    (tmp_path / "c.csv").write_text("1,2\n2,3\n3,4\n")
    for name in ("a.dat", "b.csv", "c.csv"):
        r, g = read_pdf(tmp_path / name)
        assert r.tolist() == [1.0, 2.0, 3.0] and g.tolist() == [2.0, 3.0, 4.0], name


def test_reads_seed_h5(tmp_path, seed_h5_dir):
    r, g = read_pdf(sorted(seed_h5_dir.glob("*.h5"))[0])
    assert r.shape == g.shape == (3000,) and g.max() == pytest.approx(1.0)


def test_reads_generated_h5_and_rejects_missing_keys(tmp_path):
    good, bad = tmp_path / "g.h5", tmp_path / "b.h5"
    with h5py.File(good, "w") as fh:
        fh["r"] = np.arange(5) * 0.1
        fh["pdf"] = np.arange(5.0)
    with h5py.File(bad, "w") as fh:
        fh["r"] = np.arange(5) * 0.1
    assert read_pdf(good)[1].tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match=r"b\.h5.*'pdf'"):
        read_pdf(bad)


@pytest.mark.parametrize(
    ("name", "text", "match"),
    [
        ("bad.gr", "#### start data\n#S 1\n0 0\n0.1 abc\n", r"bad\.gr:4: expected numbers"),
        ("one.dat", "1\n2\n", r"one\.dat:1: expected at least two numeric columns"),
        ("nan.csv", "r,G\n0,1\n0.1,nan\n", r"nan\.csv:3: non-finite"),
        ("short.gr", "0 1\n", r"short\.gr: expected at least two data rows"),
        ("x.json", "{}", r"unknown PDF file type"),
    ],
)
def test_malformed_files_name_file_and_line(tmp_path, name, text, match):
    p = tmp_path / name
    p.write_text(text)
    with pytest.raises(ValueError, match=match):
        read_pdf(p)


def test_missing_file():
    with pytest.raises(FileNotFoundError):
        read_pdf("/nonexistent/file.gr")


def test_interpolate_is_exact_for_linear_data_and_checks_inputs():
    r = np.linspace(0, 10, 101)
    target = np.linspace(1, 9, 17)
    assert np.allclose(interpolate_pdf(r, 2 * r + 1, target), 2 * target + 1)
    with pytest.raises(ValueError, match="r: must be strictly increasing"):
        interpolate_pdf(r[::-1], r, target)
    g = r.copy()
    g[3] = np.nan
    with pytest.raises(ValueError, match="g: contains NaN"):
        interpolate_pdf(r, g, target)
    with pytest.raises(ValueError, match="r: data cover"):
        interpolate_pdf(r, r, np.linspace(0, 12, 5))


def test_write_csv_round_trip_atomic(tmp_path):
    r = np.arange(0, 3, 0.01)
    g = np.sin(r) * 0.123456789
    out = tmp_path / "sub" / "g.csv"
    write_pdf_csv(out, r, g)
    assert out.read_text().splitlines()[0] == "r,G"
    r2, g2 = read_pdf(out)
    assert np.allclose(r2, r, atol=1e-12) and np.allclose(g2, g, atol=1e-10)
    assert [p.name for p in out.parent.iterdir()] == ["g.csv"]  # no temp file left behind
    with pytest.raises(ValueError, match="g: has"):
        write_pdf_csv(out, r, g[:-1])
