"""Parsing and validation of request PDFs, without Ray: formats, errors naming field and line,
interpolation against closed forms."""

from __future__ import annotations

import numpy as np
import pytest

from pdfusion.config import ConfigError, ServeConfig, ServeLimits
from pdfusion.serving.app import serve_config_from_args
from pdfusion.serving.pdf_input import InputError, check_pdf_arrays, parse_pdf_text, to_model_grid
from pdfusion.serving.service import SampleJob, batch_cost

LIMITS = ServeLimits(max_points=1000)


def _gr_text(r, g) -> str:
    head = "# xPDFsuite Configuration #\n[PDF]\nwavelength = 0.1\nrmax = 50.0\n\n#### start data\n#S 1\n#L r G\n"
    return head + "\n".join(f"{a:.4f} {b:.8g}" for a, b in zip(r, g, strict=True)) + "\n"


def test_parse_gr_and_csv_roundtrip():
    r = np.round(np.arange(0, 5, 0.01), 4)
    g = np.sin(3 * r) * np.exp(-r / 4)
    r1, g1 = parse_pdf_text(_gr_text(r, g), "sample.gr")
    np.testing.assert_allclose(r1, r, atol=1e-9)
    np.testing.assert_allclose(g1, g, rtol=1e-7, atol=1e-12)
    csv = "r,G\n" + "\n".join(f"{a},{float(b)!r}" for a, b in zip(r, g, strict=True))
    r2, g2 = parse_pdf_text(csv, "sample.CSV")
    np.testing.assert_array_equal(r2, r)
    np.testing.assert_array_equal(g2, g)


def test_parse_errors_name_file_and_line():
    with pytest.raises(InputError) as e:
        parse_pdf_text("0 1\n0.1 2\nabc def\n", "x.gr")
    assert e.value.field == "file" and "line 3" in e.value.message
    with pytest.raises(InputError, match="unsupported file type"):
        parse_pdf_text("0 1\n", "../../etc/passwd")
    with pytest.raises(InputError, match="fewer than two"):
        parse_pdf_text("# only a header\n", "x.gr")
    with pytest.raises(InputError, match="more than 3 data rows"):
        parse_pdf_text("\n".join(f"{i} 1" for i in range(10)), "x.gr", max_points=3)


@pytest.mark.parametrize(
    ("r", "g", "field", "fragment"),
    [
        ([0, 1, 2], [0, 1], "g", "has 2 values but r has 3"),
        ([0], [1], "r", "at least 2"),
        ([0, np.nan], [1, 2], "r", "finite"),
        ([0, 1], [1, np.inf], "g", "finite"),
        ([0, 2, 1], [1, 2, 3], "r", "strictly increasing; r[1]=2"),
        ([0, 1, 1], [1, 2, 3], "r", "strictly increasing"),
        (np.arange(1001.0), np.zeros(1001), "r", "at most 1000"),
    ],
)
def test_check_arrays_rejects(r, g, field, fragment):
    with pytest.raises(InputError) as e:
        check_pdf_arrays(r, g, LIMITS)
    assert e.value.field == field and fragment in e.value.message
    assert e.value.status == 422


def test_interpolation_is_exact_for_linear_g_and_normalises():
    grid = np.arange(0, 30, 0.01)
    r = np.linspace(-0.5, 50, 777)  # a coarser, shifted grid covering the model's
    g = 2.0 + 0.5 * r  # linear: interpolation must be exact
    out, interpolated = to_model_grid(r, g, grid, normalize=False)
    assert interpolated and out.shape == grid.shape
    np.testing.assert_allclose(out, 2.0 + 0.5 * grid, rtol=1e-6)
    out, _ = to_model_grid(r, g, grid, normalize=True)
    assert out.max() == pytest.approx(1.0) and out.argmax() == grid.size - 1
    same, interpolated = to_model_grid(grid, np.cos(grid), grid, normalize=False)
    assert not interpolated
    np.testing.assert_allclose(same, np.cos(grid), rtol=1e-6)


def test_interpolation_refuses_to_extrapolate():
    grid = np.arange(0, 30, 0.01)
    with pytest.raises(InputError) as e:
        to_model_grid(np.linspace(1.0, 50, 100), np.ones(100), grid, normalize=False)
    assert e.value.field == "r" and "needs 0–29.99" in e.value.message
    with pytest.raises(InputError, match="needs"):
        to_model_grid(np.linspace(0, 20, 100), np.ones(100), grid, normalize=False, origin="file")
    with pytest.raises(InputError) as e:
        to_model_grid(grid, -np.ones_like(grid), grid, normalize=True)
    assert e.value.field == "g" and "no positive value" in e.value.message


def test_batch_cost_closes_batches_on_candidates():
    jobs = [SampleJob(pdf=np.zeros(3), metal_z=22, n_samples=8, guidance=1.0, steps=2) for _ in range(3)]
    assert batch_cost(jobs, max_requests=16, max_candidates=24) == 3
    assert batch_cost(jobs, max_requests=16, max_candidates=23) == 17


def test_serve_config_from_args_parses_cli_strings(tmp_path):
    cfg = serve_config_from_args({"model": "/m.pt", "max_replicas": "3", "limits.max_samples": "8", "default_samples": "2"})
    assert cfg.max_replicas == 3 and cfg.limits.max_samples == 8 and cfg.limits.max_steps == ServeLimits().max_steps
    path = tmp_path / "serve.yaml"
    path.write_text("model: /a.pt\nlimits: {max_samples: 6}\nmax_batch_size: 4\n")
    cfg = serve_config_from_args({"config": str(path), "max_batch_size": 2})
    assert (cfg.model, cfg.limits.max_samples, cfg.max_batch_size) == ("/a.pt", 6, 2)
    with pytest.raises(ConfigError, match="max_batch_candidates"):
        ServeConfig(model="/m.pt", max_batch_candidates=4)
    with pytest.raises(ConfigError, match="unknown key"):
        serve_config_from_args({"model": "/m.pt", "replicas": 2})
