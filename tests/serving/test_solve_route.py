"""POST /v1/solve in-process (FastAPI TestClient, no model, no Ray): JSON arrays and a .gr upload through
the CLI's reader and solve code; errors in the app's one error body."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from pdfusion.config import PDFConfig, ServeConfig, ServeLimits
from pdfusion.pdf import r_grid, simulate_pdf
from pdfusion.serving.api import create_api
from pdfusion.structures.particles import make_particle


async def _no_sampling(job):  # /v1/solve never calls the sampler
    raise AssertionError("the sampler must not be called by /v1/solve")


@pytest.fixture(scope="module")
def client():
    info = {"name": "m", "version": "1", "r_grid": np.arange(100) * 0.1, "normalize": False,
            "defaults": {"guidance": 1.0, "steps": 2}, "max_atoms": 40, "n_metals": 100, "timesteps": 10,
            "training": {}}
    cfg = ServeConfig(model="unused.pt", limits=ServeLimits(request_timeout_s=120.0))
    return TestClient(create_api(cfg, info, _no_sampling))


@pytest.fixture(scope="module")
def zno():
    truth = make_particle("wurtzite", "Zn", 6.0)
    cfg = PDFConfig(rmin=0.0, rmax=20.0, rstep=0.02, qmin=1.0, qmax=20.0, qdamp=0.04, biso=8 * math.pi**2 * 0.006,
                    normalize=False)
    g = simulate_pdf(torch.as_tensor(truth.positions * 1.01)[None], torch.as_tensor(truth.numbers)[None], None, cfg)[0]
    return truth, r_grid(cfg).numpy(), 0.3 * g.numpy()


def test_json_solve(client, zno):
    truth, r, g = zno
    body = {"r": r.round(4).tolist(), "g": g.tolist(), "composition": "ZnO", "qmin": 1.0, "qmax": 20.0, "top": 2,
            "radii": [4.0, 6.0], "return_curves": True}
    resp = client.post("/v1/solve", json=body)
    assert resp.status_code == 200, resp.text
    out = resp.json()
    best = out["candidates"][0]
    assert best["structure_type"] == "wurtzite" and best["n_atoms"] == len(truth) and best["rw"] < 0.1
    assert best["params"]["expansion"] == pytest.approx(1.01, abs=0.003) and "uncertainties" in best
    assert best["xyz"].splitlines()[0] == str(len(truth)) and len(best["curves"]["gcalc"]) == len(best["curves"]["r"])
    assert [c["rw"] for c in out["candidates"]] == sorted(c["rw"] for c in out["candidates"])


def test_upload_reads_the_header(client, zno):
    _, r, g = zno
    text = "[PDF]\ncomposition = ZnO\nqmin = 1.0\nqmax = 20.0\n\n#### start data\n#S 1\n" + \
        "\n".join(f"{a:.4f} {b:.8g}" for a, b in zip(r, g, strict=True))
    resp = client.post("/v1/solve", files={"file": ("zno.gr", text.encode())},
                       data={"top": "1", "radii": "6", "refine": "false"})
    assert resp.status_code == 200, resp.text
    out = resp.json()
    assert out["composition"] == "ZnO" and out["config"]["qmax"] == 20.0
    assert out["candidates"][0]["structure_type"] == "wurtzite"


@pytest.mark.parametrize("body, field", [
    ({"composition": "NaCl"}, "composition"),
    ({"composition": None}, "composition"),
    ({"composition": "ZnO", "top": 0}, "top"),
    ({"composition": "ZnO", "radii": [100.0]}, "radii"),
    ({"composition": "ZnO", "bogus": 1}, "bogus"),
])
def test_errors_name_the_field(client, zno, body, field):
    _, r, g = zno
    resp = client.post("/v1/solve", json={"r": r.tolist(), "g": g.tolist(), **body})
    assert resp.status_code == 422, resp.text
    assert resp.json()["error"]["field"] == field


def test_timeout_is_504(zno):
    _, r, g = zno
    info = {"name": "m", "version": "1", "r_grid": np.arange(100) * 0.1, "normalize": False,
            "defaults": {"guidance": 1.0, "steps": 2}, "max_atoms": 40, "n_metals": 100, "timesteps": 10,
            "training": {}}
    cfg = ServeConfig(model="unused.pt", limits=ServeLimits(request_timeout_s=0.01))
    resp = TestClient(create_api(cfg, info, _no_sampling)).post(
        "/v1/solve", json={"r": r.tolist(), "g": g.tolist(), "composition": "ZnO", "radii": [4.0], "top": 1})
    assert resp.status_code == 504 and resp.json()["error"]["field"] == "server"
