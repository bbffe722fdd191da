"""Parsing and validation of request PDFs, without Ray: formats, errors naming field and line,
interpolation against closed forms."""

from __future__ import annotations

import numpy as np
import pytest

from pdfusion.config import ConfigError, ServeConfig, ServeLimits
from pdfusion.pdf.files import read_pdf_file
from pdfusion.serving.app import serve_config_from_args
from pdfusion.serving.pdf_input import InputError, check_pdf_arrays, parse_upload, to_model_grid
from pdfusion.serving.service import SampleJob, batch_cost

LIMITS = ServeLimits(max_points=1000)
BIG = ServeLimits()  # the default limits a deployment runs with


def _gr_text(r, g) -> str:
    head = "# xPDFsuite Configuration #\n[PDF]\nwavelength = 0.1\nrmax = 50.0\n\n#### start data\n#S 1\n#L r G\n"
    return head + "\n".join(f"{a:.4f} {b:.8g}" for a, b in zip(r, g, strict=True)) + "\n"


def test_parse_upload_gr_and_csv_roundtrip():
    r = np.round(np.arange(0, 5, 0.01), 4)
    g = np.sin(3 * r) * np.exp(-r / 4)
    r1, g1 = parse_upload(_gr_text(r, g).encode(), "sample.gr", LIMITS)
    np.testing.assert_allclose(r1, r, atol=1e-9)
    np.testing.assert_allclose(g1, g, rtol=1e-7, atol=1e-12)
    csv = "r,G\n" + "\n".join(f"{a},{float(b)!r}" for a, b in zip(r, g, strict=True))
    r2, g2 = parse_upload(csv.encode(), "sample.CSV", LIMITS)
    np.testing.assert_array_equal(r2, r)
    np.testing.assert_array_equal(g2, g)


def _same_as_cli(path, limits=BIG):
    """The HTTP upload path (parse_upload, then the array check api.py applies) vs the CLI/library reader."""
    http_r, http_g = parse_upload(path.read_bytes(), path.name, limits)
    http_r, http_g = check_pdf_arrays(http_r, http_g, limits, origin="file")
    cli = read_pdf_file(path)
    assert http_r.dtype == cli.r.dtype == np.float64 and http_g.dtype == cli.g.dtype
    assert http_r.tobytes() == cli.r.tobytes() and http_g.tobytes() == cli.g.tobytes()
    return cli


def test_http_and_cli_read_measured_files_byte_identically(measured_gr):
    files = sorted(measured_gr.parents[1].rglob("*.gr"))
    assert files
    for path in files:
        _same_as_cli(path)


VARIANTS = {
    "bom_crlf.gr": "\ufeff[PDF]\r\nqmax = 20\r\n##### start data\r\n#S 1\r\n0 0.5\r\n0.1 0.25\r\n0.2 -0.125\r\n",
    "tabs4.gr": "#### start data\n0\t0.5\t0\t0.01\n0.1\t0.25\t0\t0.01\n0.2\t-0.125\t0\t0.01\n",
    "noheader.dat": "0 0.5\n0.1 0.25\n0.2 -0.125\n",
    "comma.csv": "r,G,dG\n0,0.5,0.1\n0.1,0.25,0.1\n0.2,-0.125,0.1\n",
}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_http_and_cli_agree_on_variants(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(VARIANTS[name].encode())
    cli = _same_as_cli(path)
    assert cli.g.tolist() == [0.5, 0.25, -0.125]


GARBAGE = {
    "bad.gr": "0 1\n0.1 2\nabc def\n",
    "nan.gr": "0 1\n0.1 nan\n",
    "desc.csv": "0,1\n0.2,2\n0.1,3\n",
    "short.gr": "# only a header\n0 1\n",
    "x.exe": "0 1\n1 2\n",
    "bin.gr": "\x00\x01\x02\xff",
}


@pytest.mark.parametrize("name", sorted(GARBAGE))
def test_http_and_cli_refuse_the_same_files_with_the_same_message(tmp_path, name):
    path = tmp_path / name
    data = GARBAGE[name].encode("latin-1")
    path.write_bytes(data)
    with pytest.raises(InputError) as http:
        parse_upload(data, name, BIG)
    with pytest.raises(ValueError) as cli:
        read_pdf_file(path)
    assert http.value.field == "file" and http.value.status == 422
    assert http.value.message == str(cli.value).replace(str(path), name)


def test_parse_upload_errors_name_file_and_line():
    with pytest.raises(InputError) as e:
        parse_upload(b"0 1\n0.1 2\nabc def\n", "x.gr", LIMITS)
    assert e.value.field == "file" and "x.gr line 3" in e.value.message
    with pytest.raises(InputError, match="unknown PDF file type"):
        parse_upload(b"0 1\n", "../../etc/passwd", LIMITS)
    with pytest.raises(InputError, match="read from disk only"):
        parse_upload(b"\x89HDF\r\n", "seed.h5", LIMITS)
    with pytest.raises(InputError, match="found no data rows"):
        parse_upload(b"# only a header\n", "x.gr", LIMITS)
    with pytest.raises(InputError, match="more than 3 data rows"):
        parse_upload("\n".join(f"{i} 1" for i in range(10)).encode(), "x.gr", ServeLimits(max_points=3))


@pytest.mark.parametrize(
    ("r", "g", "field", "fragment"),
    [
        ([0, 1, 2], [0, 1], "g", "has 2 G values but 3 r values"),
        ([0], [1], "r", "at least 2"),
        ([0, np.nan], [1, 2], "r", "finite"),
        ([0, 1], [1, np.inf], "g", "finite"),
        ([0, 2, 1], [1, 2, 3], "r", "r[2]=1 is smaller than the previous r[1]=2; r must be strictly increasing"),
        ([0, 1, 1], [1, 2, 3], "r", "strictly increasing"),
        (np.arange(1001.0), np.zeros(1001), "r", "at most 1000"),
    ],
)
def test_check_arrays_rejects(r, g, field, fragment):
    with pytest.raises(InputError) as e:
        check_pdf_arrays(r, g, LIMITS)
    assert e.value.field == field and fragment in e.value.message
    assert e.value.status == 422
    with pytest.raises(InputError) as e:
        check_pdf_arrays(r, g, LIMITS, origin="file")
    assert e.value.field == f"file.{field}"


def test_interpolation_is_exact_for_linear_g_and_normalises():
    grid = np.arange(0, 30, 0.01)
    r = np.linspace(-0.5, 50, 777)  # a coarser, shifted grid covering the model's
    g = 2.0 + 0.5 * r  # linear: interpolation must be exact
    out, interpolated = to_model_grid(r, g, grid, normalize=False)
    assert interpolated and out.shape == grid.shape and out.dtype == np.float32
    np.testing.assert_allclose(out, 2.0 + 0.5 * grid, rtol=1e-6)
    out, _ = to_model_grid(r, g, grid, normalize=True)
    assert out.max() == pytest.approx(1.0) and out.argmax() == grid.size - 1
    same, interpolated = to_model_grid(grid, np.cos(grid), grid, normalize=False)
    assert not interpolated
    np.testing.assert_allclose(same, np.cos(grid), rtol=1e-6)


def test_partial_range_is_mapped_with_zeros_and_logged(caplog):
    grid = np.arange(0, 30, 0.01)
    r = np.arange(1.0, 20.0, 0.02)
    with caplog.at_level("WARNING", logger="pdfusion.serving"):
        out, interpolated = to_model_grid(r, np.ones_like(r), grid, normalize=False)
    assert interpolated and out[grid < 0.99].max() == 0 and out[grid > 20.0].max() == 0
    assert out[(grid > 1.0) & (grid < 19.9)].min() == 1.0
    msgs = [rec.getMessage() for rec in caplog.records]
    assert any("data start at r = 1 Å" in m for m in msgs) and any("data end at r = 19.98 Å" in m for m in msgs)
    assert any("coarser than the model's 0.01 Å" in m for m in msgs)


def test_interpolation_refuses_too_little_coverage():
    grid = np.arange(0, 30, 0.01)
    with pytest.raises(InputError) as e:
        to_model_grid(np.linspace(20.0, 50, 100), np.ones(100), grid, normalize=False)
    assert e.value.field == "r" and "r covers 20–50 Å, only 33% of the model's 0–29.99 Å" in e.value.message
    with pytest.raises(InputError) as e:
        to_model_grid(np.linspace(0, 10, 100), np.ones(100), grid, normalize=False, origin="file")
    assert e.value.field == "file.r"
    with pytest.raises(InputError) as e:
        to_model_grid(grid, -np.ones_like(grid), grid, normalize=True)
    assert e.value.field == "g" and "no positive value" in e.value.message


def test_batch_cost_closes_batches_on_candidates():
    jobs = [SampleJob(pdf=np.zeros(3), metal_z=22, n_samples=8, guidance=1.0, steps=2) for _ in range(3)]
    assert batch_cost(jobs, max_requests=16, max_candidates=24) == 3
    assert batch_cost(jobs, max_requests=16, max_candidates=23) == 17


def test_serve_config_from_args_parses_cli_strings(tmp_path):
    cfg = serve_config_from_args({"model": "/m.pt", "max_replicas": "3", "limits.max_samples": "8",
                                  "default_samples": "2"})
    assert cfg.max_replicas == 3 and cfg.limits.max_samples == 8 and cfg.limits.max_steps == ServeLimits().max_steps
    path = tmp_path / "serve.yaml"
    path.write_text("model: /a.pt\nlimits: {max_samples: 6}\nmax_batch_size: 4\n")
    cfg = serve_config_from_args({"config": str(path), "max_batch_size": 2})
    assert (cfg.model, cfg.limits.max_samples, cfg.max_batch_size) == ("/a.pt", 6, 2)
    with pytest.raises(ConfigError, match="max_batch_candidates"):
        ServeConfig(model="/m.pt", max_batch_candidates=4)
    with pytest.raises(ConfigError, match="unknown key"):
        serve_config_from_args({"model": "/m.pt", "replicas": 2})
