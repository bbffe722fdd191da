"""The one PDF file reader (pdfusion.pdf.files): real measured files with their headers, format variants,
garbage with clear errors, the shared validator and grid mapping, interpolation, atomic CSV writing."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from pdfusion.pdf.files import (
    MAX_NEGATIVE_RATIO,
    PDFData,
    PDFValueError,
    covered,
    interpolate_pdf,
    map_to_grid,
    parse_pdf_bytes,
    parse_pdf_text,
    read_pdf,
    read_pdf_file,
    validate_pdf_arrays,
    write_pdf_csv,
)

# what each measured example's header says (../shared/data/measured-examples/README.md)
MEASURED = {
    "Pt_S1.gr": {"n": 5001, "rmax": 50.0, "qmin": 1.0, "qmax": 22.0, "qmaxinst": 22.0, "composition": "Pt",
                 "wavelength": 0.1, "rpoly": 0.9},
    "Ni.gr": {"n": 6001, "rmax": 60.0, "qmin": 0.5, "qmax": 25.0, "qmaxinst": 25.0, "composition": "Ni",
              "wavelength": 0.1836, "rpoly": 0.9},
    "Fe2O3_3204M_150.gr": {"n": 3001, "rmax": 30.0, "qmin": 1.0, "qmax": 17.0, "qmaxinst": 22.0,
                           "composition": "Fe2O3", "rpoly": 0.9},
}


@pytest.fixture(scope="module")
def shared_gr_files(measured_gr):
    """Every .gr file under ../shared/data (skips when it is absent)."""
    files = sorted(measured_gr.parents[1].rglob("*.gr"))
    assert files
    return files


def test_every_shared_gr_file_loads_with_its_header(shared_gr_files):
    for path in shared_gr_files:
        d = read_pdf_file(path)
        assert isinstance(d, PDFData) and d.source == path.name
        assert d.r.dtype == np.float64 and d.g.dtype == np.float64 and d.r.shape == d.g.shape
        assert d.r.size >= 100 and np.all(np.diff(d.r) > 0) and np.isfinite(d.g).all()
        assert d.meta["columns"][0].startswith("r")
        expected = MEASURED.get(path.name)
        if expected is None:  # a file added to the shared data later: it must at least say its Q range
            assert "qmax" in d.meta, path
            continue
        assert d.r.size == expected["n"] and d.r[0] == 0.0 and d.r[-1] == pytest.approx(expected["rmax"])
        assert d.dg is None
        for key in ("qmin", "qmax", "qmaxinst", "wavelength", "rpoly"):
            if key in expected:
                assert d.meta[key] == pytest.approx(expected[key], abs=0.01), (path.name, key)
        assert d.meta["composition"] == expected["composition"]
        assert d.meta["rstep"] == pytest.approx(0.01)


def test_reads_real_xpdfsuite_file_values(measured_gr):
    r, g = read_pdf(measured_gr)
    assert r.shape == g.shape == (5001,)
    assert np.allclose(np.diff(r), 0.01)
    assert g[1] == pytest.approx(0.00144704) and g[3] == pytest.approx(0.00405798)
    d = read_pdf_file(measured_gr)
    assert d.meta["inputfile"] == "JQ_S1.chi" and d.meta["mode"] == "xray" and d.meta["backgroundfile"] == "JQ_EG.chi"
    r2, g2 = d  # unpacks like the old (r, G) tuple
    assert r2 is d.r and g2 is d.g


def test_crlf_file_with_pdfgetx3_header(shared_gr_files):
    fe = [p for p in shared_gr_files if p.name == "Fe2O3_3204M_150.gr"]
    if not fe:
        pytest.skip("Fe2O3_3204M_150.gr not present")
    assert b"\r\n" in fe[0].read_bytes()  # the file really is CRLF
    d = read_pdf_file(fe[0])
    assert d.meta["version"].startswith("pdfgetx3") and d.meta["qmax"] == 17.0 and d.meta["qmaxinst"] == 22.0


R = np.round(np.arange(0.5, 3.0, 0.5), 3)
G = np.array([0.1, -0.2, 1.5, 0.25, -3.0])
DG = np.array([0.01, 0.02, 0.03, 0.04, 0.05])


def _rows(sep: str, cols: int, eol: str = "\n") -> str:
    out = []
    for r, g, dg in zip(R, G, DG, strict=True):
        vals = [r, g] + ([dg] if cols == 3 else [0.0, dg] if cols == 4 else [])
        out.append(sep.join(f"{v:g}" for v in vals))
    return eol.join(out) + eol


HEAD = "# xPDFsuite Configuration #\n[PDF]\nwavelength = 0.1\ncomposition = TiO2\nQmax = 20.5\nqmaxinst = 22\n\n"
VARIANTS = {
    "marker4.gr": HEAD + "#### start data\n#S 1\n#L r G\n" + _rows(" ", 2),
    "marker5.gr": HEAD + "##### start data\n#S 1\n#L r G dr dG\n" + _rows(" ", 4),
    "marker1.gr": HEAD + "# start data\n" + _rows(" ", 2),
    "bom.gr": "\ufeff" + HEAD + "#### start data\n" + _rows(" ", 2),
    "bom_noheader.gr": "\ufeff" + _rows(" ", 2),
    "crlf.gr": (HEAD + "#### start data\n#S 1\n").replace("\n", "\r\n") + _rows(" ", 2, "\r\n"),
    "cr.gr": (HEAD + "#### start data\n").replace("\n", "\r") + _rows(" ", 2, "\r"),
    "tabs.gr": HEAD + "#### start data\n" + _rows("\t", 2),
    "three.gr": HEAD + "#### start data\n" + _rows("  ", 3),
    "four.dat": "# Qmax = 20.5\n" + _rows(" ", 4),
    "noheader.gr": _rows(" ", 2),
    "qmaxonly.txt": "# Qmax = 20.5\n" + _rows(" ", 2),
    "comma.gr": HEAD + "#### start data\n" + _rows(",", 2),
    "header.csv": "r,G\n" + _rows(",", 2),
    "header4.csv": "r,G,dr,dG\n" + _rows(",", 4),
    "plain.csv": _rows(",", 2),
    "spaced.csv": _rows(", ", 3),
    "upper.GR": HEAD + "#### START DATA\n" + _rows(" ", 2),
    "colnames.gr": HEAD + "#### start data\nr G\n" + _rows(" ", 2),
    "comments.xy": "# made by hand\n" + _rows(" ", 2).replace("\n", "  # row\n", 1) + "# end\n\n",
}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_format_variants_give_the_same_curve(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(VARIANTS[name].encode("utf-8"))
    d = read_pdf_file(path)
    np.testing.assert_array_equal(d.r, R)
    np.testing.assert_array_equal(d.g, G)
    if name in ("marker5.gr", "four.dat", "header4.csv", "three.gr", "spaced.csv"):
        np.testing.assert_array_equal(d.dg, DG)  # columns r G dr dG; with three columns the third is dG
    else:
        assert d.dg is None
    if VARIANTS[name].lstrip("\ufeff").startswith("# xPDFsuite"):
        assert d.meta["qmax"] == 20.5 and d.meta["qmaxinst"] == 22.0 and d.meta["composition"] == "TiO2"
    if name in ("four.dat", "qmaxonly.txt"):
        assert d.meta == {"qmax": 20.5}
    # in memory, from text or bytes, gives the same arrays as from disk
    same = parse_pdf_text(VARIANTS[name], name)
    np.testing.assert_array_equal(same.r, d.r)
    np.testing.assert_array_equal(same.g, d.g)


def test_encodings(tmp_path):
    text = "# Qmax = 20.5 (Å⁻¹)\n" + _rows(" ", 2)
    for enc in ("utf-8", "utf-8-sig", "utf-16", "latin-1"):
        d = parse_pdf_bytes(text.encode(enc, errors="replace"), f"x_{enc}.gr")
        np.testing.assert_array_equal(d.g, G)
    with pytest.raises(ValueError, match=r"bin\.gr: is binary"):
        parse_pdf_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff", "bin.gr")


def test_any_r_grid_is_accepted():
    for r in (np.arange(1.5, 20.0, 0.1257), np.geomspace(0.3, 29.0, 50), np.array([2.0, 2.5])):
        text = "\n".join(f"{float(a)!r} {float(np.sin(a))!r}" for a in r)
        d = parse_pdf_text(text, "grid.gr")
        np.testing.assert_array_equal(d.r, r)
        np.testing.assert_array_equal(d.g, np.sin(r))


@pytest.mark.parametrize(
    ("name", "text", "match"),
    [
        ("bad.gr", "#### start data\n#S 1\n0 0\n0.1 abc\n",
         r"bad\.gr line 4: expected numbers .*'0\.1 abc'.*comment it out"),
        ("late.gr", "0 1\n0.1 2\nabc def\n", r"late\.gr line 3: expected numbers"),
        ("afterstart.gr", "#### start data\n1.5x 2\n",
         r"afterstart\.gr line 2: expected numbers .*first data row after 'start data'"),
        ("one.dat", "1\n2\n", r"one\.dat line 1: expected at least two numeric columns"),
        ("nan.csv", "r,G\n0,1\n0.1,nan\n", r"nan\.csv line 3: G is nan; all values must be finite"),
        ("nanr.gr", "0 1\nnan 2\n", r"nanr\.gr line 2: r is nan"),
        ("inf.gr", "0 1\n0.1 -inf\n", r"inf\.gr line 2: G is -inf"),
        ("infdg.gr", "0 1 0.1\n0.1 2 inf\n", r"infdg\.gr line 2: dG is inf"),
        ("desc.gr", "0 1\n0.2 2\n0.1 3\n", r"desc\.gr line 3: r=0\.1 is smaller than the previous r=0\.2 on line 2"),
        ("dup.gr", "# h\n0 1\n0.2 2\n0.2 3\n", r"dup\.gr line 4: r=0\.2 repeats the previous r=0\.2 on line 3"),
        ("cols.gr", "0 1\n0.1 2 3\n", r"cols\.gr line 2: has 3 columns but the data starting on line 1 have 2"),
        ("scan2.gr", "#S 1\n0 1\n0.1 2\n#S 2\n0 1\n", r"scan2\.gr line 4: a second data set"),
        ("short.gr", "0 1\n", r"short\.gr: found 1 data row .*at least 2"),
        ("empty.gr", "", r"empty\.gr: found no data rows"),
        ("header_only.gr", "[PDF]\nqmax = 20\n#### start data\n#S 1\n", r"header_only\.gr: found no data rows after"),
        ("x.json", "{}", r"x\.json: unknown PDF file type '\.json'"),
        ("noext", "0 1\n1 2\n", r"unknown PDF file type '\(no suffix\)'"),
        ("semi.csv", "0;1\n1;2\n", r"semi\.csv line 1: expected numbers"),
    ],
)
def test_garbage_names_file_line_and_fix(tmp_path, name, text, match):
    p = tmp_path / name
    p.write_text(text)
    with pytest.raises(ValueError, match=match):
        read_pdf_file(p)
    with pytest.raises(ValueError, match=match):
        parse_pdf_text(text, name)


def test_too_many_rows_stop_before_allocation(monkeypatch):
    text = "\n".join(f"{i} 1" for i in range(10))
    with pytest.raises(ValueError, match=r"big\.gr line 4: more than 3 data rows"):
        parse_pdf_text(text, "big.gr", max_points=3)
    assert parse_pdf_text(text, "big.gr", max_points=10).r.size == 10
    # the bound holds while reading: a huge text is refused without building arrays from it

    def no_arrays(*a, **k):
        raise AssertionError("arrays allocated before the row bound was checked")

    import pdfusion.pdf.files as files

    monkeypatch.setattr(files, "validate_pdf_arrays", no_arrays)
    huge = "0 1\n" + "".join(f"{i + 1} 1\n" for i in range(200_000))
    with pytest.raises(ValueError, match="more than 1000 data rows"):
        parse_pdf_text(huge, "huge.gr", max_points=1000)


def test_name_is_never_opened(tmp_path):
    real = tmp_path / "real.gr"
    real.write_text("0 5\n1 6\n")
    d = parse_pdf_text("0 1\n1 2\n", str(real))
    assert d.g.tolist() == [1.0, 2.0] and d.source == "real.gr"
    with pytest.raises(ValueError, match="HDF5 file is read from disk only"):
        parse_pdf_text("", "upload.h5")


def test_reads_seed_h5(seed_h5_dir):
    d = read_pdf_file(sorted(seed_h5_dir.glob("*.h5"))[0])
    assert d.r.shape == d.g.shape == (3000,) and d.g.max() == pytest.approx(1.0) and d.dg is None


def test_reads_generated_h5_and_rejects_bad_ones(tmp_path):
    good, bad, nan, desc = (tmp_path / f"{n}.h5" for n in ("g", "b", "n", "d"))
    with h5py.File(good, "w") as fh:
        fh["r"] = np.arange(5) * 0.1
        fh["pdf"] = np.arange(5.0)
    with h5py.File(bad, "w") as fh:
        fh["r"] = np.arange(5) * 0.1
    with h5py.File(nan, "w") as fh:
        fh["r"] = np.arange(5) * 0.1
        fh["pdf"] = np.array([0, 1, np.nan, 2, 3.0])
    with h5py.File(desc, "w") as fh:
        fh["r"] = np.array([0, 0.2, 0.1, 0.3, 0.4])
        fh["pdf"] = np.arange(5.0)
    assert read_pdf(good)[1].tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match=r"b\.h5.*'pdf'"):
        read_pdf(bad)
    with pytest.raises(ValueError, match=r"n\.h5: dataset 'pdf': g\[2\] is nan"):
        read_pdf(nan)
    with pytest.raises(ValueError, match=r"d\.h5: dataset 'r': .*strictly increasing"):
        read_pdf(desc)
    with pytest.raises(ValueError, match="at most 3"):
        read_pdf_file(good, max_points=3)
    (tmp_path / "fake.h5").write_text("not hdf5")
    with pytest.raises(ValueError, match=r"fake\.h5: not a readable HDF5 file"):
        read_pdf(tmp_path / "fake.h5")


def test_missing_file():
    with pytest.raises(FileNotFoundError):
        read_pdf_file("/nonexistent/file.gr")


@pytest.mark.parametrize(
    ("r", "g", "field", "fragment"),
    [
        ([0, 1, 2], [0, 1], "g", "has 2 G values but 3 r values"),
        ([0], [1], "r", "at least 2"),
        ([0, np.nan], [1, 2], "r", "r[1] is nan; all values must be finite"),
        ([0, 1], [1, np.inf], "g", "g[1] is inf"),
        ([0, 2, 1], [1, 2, 3], "r", "r[2]=1 is smaller than the previous r[1]=2"),
        ([0, 1, 1], [1, 2, 3], "r", "repeats"),
        (np.arange(11.0), np.zeros(11), "r", "at most 10"),
    ],
)
def test_validator_rejects_arrays(r, g, field, fragment):
    with pytest.raises(PDFValueError) as e:
        validate_pdf_arrays(r, g, max_points=10)
    assert e.value.field == field and fragment in e.value.message


GRID = np.round(np.arange(0, 30, 0.01), 6)


def test_map_to_grid_partial_range_fills_zero_and_warns():
    r = np.round(np.arange(1.5, 22.0, 0.05), 6)
    g = 1.0 + 0.1 * r  # linear: interpolation inside the data must be exact
    m = map_to_grid(r, g, GRID, normalize=False)
    inside = (GRID >= 1.5 - 1e-9) & (GRID <= r[-1] + 1e-9)
    np.testing.assert_allclose(m.g[inside], 1.0 + 0.1 * GRID[inside], rtol=1e-12)
    assert np.all(m.g[~inside] == 0.0) and m.interpolated
    assert len(m.warnings) == 3 and all("\n" not in w for w in m.warnings)
    assert "data start at r = 1.5 Å" in m.warnings[0] and "G set to 0 on 0–1.49 Å" in m.warnings[0]
    assert "data end at r = 21.95 Å" in m.warnings[1]
    assert "coarser than the model's 0.01 Å" in m.warnings[2]
    n = map_to_grid(r, g, GRID, normalize=True)
    assert n.g.max() == pytest.approx(1.0)


def test_map_to_grid_same_or_finer_grid_is_silent():
    same = map_to_grid(GRID, np.cos(GRID), GRID, normalize=False)
    assert not same.interpolated and same.warnings == [] and np.array_equal(same.g, np.cos(GRID))
    wide = np.round(np.arange(-0.5, 50, 0.005), 6)
    m = map_to_grid(wide, 2.0 + 0.5 * wide, GRID, normalize=False)
    assert m.interpolated and m.warnings == []
    np.testing.assert_allclose(m.g, 2.0 + 0.5 * GRID, rtol=1e-12)


def test_map_to_grid_refuses_too_little_coverage():
    with pytest.raises(PDFValueError) as e:
        map_to_grid(np.arange(0, 10, 0.01), np.ones(1000), GRID, normalize=False)
    assert e.value.field == "r" and "r covers 0–9.99 Å, only 33%" in e.value.message and "50%" in e.value.message
    assert map_to_grid(np.arange(0, 16, 0.01), np.ones(1600), GRID, normalize=False).warnings  # 53%: accepted
    with pytest.raises(PDFValueError, match="only 0%"):
        map_to_grid(np.arange(40, 50, 0.01), np.ones(1000), GRID, normalize=False)
    with pytest.raises(PDFValueError) as e:
        map_to_grid(GRID, -np.ones_like(GRID), GRID, normalize=True)
    assert e.value.field == "g" and "no positive value" in e.value.message


@pytest.mark.parametrize(("g", "fragment"), [
    (np.zeros_like(GRID), "is zero everywhere on the model's r range"),
    (np.where(np.arange(GRID.size) == 200, 1e5, 0.01), "a lone spike is a corrupt row"),
    (np.where(np.arange(GRID.size) == 200, 1.0, 0.0), "nonzero where every other value is 0"),
    (np.where(np.arange(GRID.size) == 0, 1e-300, -1.0), "the positive part is negligible"),
    (np.where(np.arange(GRID.size) == 50, 1.0, -1e30), "overflow"),
])
def test_map_to_grid_refuses_unusable_curves(g, fragment):
    """The one rule of `pdfusion sample` and the HTTP service: an unusable curve is a 'g' error."""
    with pytest.raises(PDFValueError) as e:
        map_to_grid(GRID, g, GRID, normalize=True)
    assert e.value.field == "g" and fragment in e.value.message


def test_map_to_grid_negative_ratio_bound():
    g = np.sin(GRID) - 1.0 + 1e-3  # most negative -2 + 1e-3, largest 1e-3: ratio ~2000
    with pytest.raises(PDFValueError, match="negligible"):
        map_to_grid(GRID, g, GRID, normalize=True)
    assert map_to_grid(GRID, g, GRID, normalize=False).g.min() < -1.9  # only a normalising model cares
    ok = np.sin(GRID) - 1.0 + 2.0 / MAX_NEGATIVE_RATIO * 1.01  # ratio just under the bound
    assert map_to_grid(GRID, ok, GRID, normalize=True).g.max() == pytest.approx(1.0)


def test_covered_and_interpolate_share_one_tolerance():
    r = np.linspace(1, 9, 81)
    target = np.array([1 - 1e-7, 1.0, 5.0, 9 + 1e-7, 9 + 1e-5])
    assert covered(r, target).tolist() == [True, True, True, True, False]
    assert np.allclose(interpolate_pdf(r, r, target[:4]), np.clip(target[:4], 1, 9))
    with pytest.raises(ValueError, match="r: data cover"):
        interpolate_pdf(r, r, target)


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
    d = read_pdf_file(out)
    assert np.allclose(d.r, r, atol=1e-12) and np.allclose(d.g, g, atol=1e-10) and d.meta == {"columns": ["r", "G"]}
    assert [p.name for p in out.parent.iterdir()] == ["g.csv"]  # no temp file left behind
    with pytest.raises(ValueError, match="g: has"):
        write_pdf_csv(out, r, g[:-1])
