"""Issue 22, in-process (no Ray): the HTTP layer's answers to unusable curves on a max-normalised model,
admission by measured cost, /v1/health from the sampler probe, 503 + Retry-After for a lost replica, the
body-read timeout and a client disconnect (raw ASGI), and the sampler service stopping abandoned work
between steps. The same behaviour over real HTTP on Serve is in test_faults.py."""

from __future__ import annotations

import asyncio
import logging

import numpy as np
import pytest
from fastapi.testclient import TestClient
from serving_helpers import serve_cfg

from pdfusion.serving.api import ServiceUnavailable, create_api
from pdfusion.serving.service import SampleJob, estimate_seconds

GRID = np.arange(300) * 0.1


def _info(normalize: bool = True, cost=None, defaults=None) -> dict:
    return {"name": "m", "version": "1", "r_grid": GRID, "normalize": normalize,
            "defaults": defaults or {"guidance": 1.0, "steps": 2}, "max_atoms": 40, "n_metals": 100, "timesteps": 10,
            "training": {}, **({"cost": cost} if cost else {})}


def _client(sample=None, probe=None, normalize=True, cost=None, defaults=None, **limits) -> TestClient:
    seen: list[SampleJob] = []

    async def fake_sample(job: SampleJob):
        seen.append(job)
        if not np.isfinite(job.pdf).all():  # what the real sampler does with a non-finite PDF
            return {"error": "sampling failed: ValueError: pdfs: contain NaN or inf"}
        return {"candidates": [], "seed": None}

    cfg = serve_cfg("unused.pt", limits={"max_atoms": 24, **limits})
    client = TestClient(create_api(cfg, _info(normalize, cost, defaults), sample or fake_sample, probe))
    client.seen = seen  # type: ignore[attr-defined]
    return client


@pytest.mark.parametrize("kind", ["minus one, g[0] = 1e-300", "minus 1e30, one point at 1", "all negative"])
def test_unusable_curve_on_a_normalising_model_is_422_naming_g(kind):
    """The issue's 500s: max-normalisation turned these finite curves into -1e300 / -inf for the sampler."""
    i = np.arange(GRID.size)
    g = {"minus one, g[0] = 1e-300": np.where(i == 0, 1e-300, -1.0),
         "minus 1e30, one point at 1": np.where(i == 50, 1.0, -1e30),
         "all negative": -np.ones(GRID.size)}[kind]
    client = _client()
    resp = client.post("/v1/sample", json={"r": GRID.tolist(), "g": g.tolist(), "metal": "Ti"})
    assert resp.status_code == 422, resp.text
    assert resp.json()["error"]["field"] == "g"
    assert client.seen == []  # refused before the sampler


def test_omitted_pdf_guidance_is_the_models_within_the_bounds():
    """A request that leaves PDF guidance out gets the model's (as the CLI does), capped by the server's limits;
    one that sets it keeps its own."""
    client = _client(defaults={"guidance": 1.0, "steps": 2, "pdf_guidance": 0.3, "pdf_guidance_iters": 20},
                     max_pdf_guidance_iters=8)
    body = {"r": GRID.tolist(), "g": np.sin(GRID).tolist(), "metal": "Ti", "n_samples": 2}
    assert client.post("/v1/sample", json=body).status_code == 200
    assert client.post("/v1/sample", json={**body, "pdf_guidance": 0.0, "pdf_guidance_iters": 2}).status_code == 200
    assert [(j.pdf_guidance, j.pdf_guidance_iters) for j in client.seen] == [(0.3, 8), (0.0, 2)]
    assert client.get("/v1/model").json()["defaults"] == {"guidance": 1.0, "steps": 2, "pdf_guidance": 0.3,
                                                          "pdf_guidance_iters": 8, "pdf_guidance_window": [0.0, 1.0],
                                                          "restarts": 0, "restart_t": 100}


def test_a_late_window_default_fits_the_default_limits_and_is_costed_by_its_guided_steps():
    """A model that guides × 40 on the second half of its steps (as the shipped one guides its last steps): the
    default limits keep all 40 iterations, and the cost counts guided steps only (`samplers.step_plan`), so a
    budget that fits 4 steps x 1 s + 2 guided steps x 40 x 0.1 s = 12 s admits it untouched, where costing every
    step (20 s) would halve it."""
    cost = {"atoms": 24, "step_s": 1.0, "guide_s": 0.1}
    client = _client(cost=cost, max_cost_s=12.0,
                     defaults={"guidance": 1.0, "steps": 4, "pdf_guidance": 0.3, "pdf_guidance_iters": 40,
                               "pdf_guidance_window": [0.5, 1.0]})
    body = {"r": GRID.tolist(), "g": np.sin(GRID).tolist(), "metal": "Ti", "n_samples": 1, "n_atoms": 24}
    resp = client.post("/v1/sample", json=body)
    assert resp.status_code == 200, resp.text
    job = client.seen[-1]
    assert (job.pdf_guidance, job.pdf_guidance_iters, job.pdf_guidance_window) == (0.3, 40, (0.5, 1.0))
    assert estimate_seconds(job, cost, 24) == pytest.approx(4 * 1.0 + 2 * 40 * 0.1)
    assert resp.json()["params"]["pdf_guidance_window"] == [0.5, 1.0]
    assert client.get("/v1/model").json()["defaults"]["pdf_guidance_iters"] == 40
    # the same iterations on every step cost 4 + 4 x 40 x 0.1 = 20 s: the default is halved to 20 (12 s)
    every = _client(cost=cost, max_cost_s=12.0,
                    defaults={"guidance": 1.0, "steps": 4, "pdf_guidance": 0.3, "pdf_guidance_iters": 40})
    assert every.post("/v1/sample", json=body).status_code == 200
    assert every.seen[-1].pdf_guidance_iters == 20


def test_restarts_are_costed_as_the_sampler_runs_them():
    """A model packaged with restarts: T = 10, 4 strided steps (10, 7, 4, 1), one restart to t = 5 reruns
    5, 4, 1, all guided. The cost is 7 steps, 2 + 3 of them guided, as `samplers.step_plan` lists them."""
    from pdfusion.config import SampleConfig
    from pdfusion.diffusion.samplers import step_plan

    assert [(tn, g, r) for tn, _, g, _, r in step_plan([10, 7, 4, 1], SampleConfig(
        steps=4, pdf_guidance_window=(0.5, 1.0), restarts=1, restart_t=5))] == [
        (10, False, False), (7, False, False), (4, True, False), (1, True, False),
        (5, True, True), (4, True, False), (1, True, False)]
    cost = {"atoms": 24, "step_s": 1.0, "guide_s": 0.1}
    client = _client(cost=cost, defaults={"guidance": 1.0, "steps": 4, "pdf_guidance": 0.3, "pdf_guidance_iters": 10,
                                          "pdf_guidance_window": [0.5, 1.0], "restarts": 1, "restart_t": 5})
    body = {"r": GRID.tolist(), "g": np.sin(GRID).tolist(), "metal": "Ti", "n_samples": 1, "n_atoms": 24}
    assert client.post("/v1/sample", json=body).status_code == 200
    job = client.seen[-1]
    assert (job.restarts, job.restart_t, job.timesteps) == (1, 5, 10)
    assert estimate_seconds(job, cost, 24) == pytest.approx(7 * 1.0 + 5 * 10 * 0.1)
    assert client.get("/v1/model").json()["defaults"]["restarts"] == 1


def test_default_pdf_guidance_shrinks_to_fit_the_budget_but_asked_for_guidance_is_refused():
    """Cost per job: steps x (step_s + iters x guide_s). The model's 0.3 x 8 would take 2 x (1 + 8) = 18 s over a
    10 s budget: an unspecified request gets 4 iterations (10 s) instead; one that asks for 8 is refused."""
    cost = {"atoms": 24, "step_s": 1.0, "guide_s": 1.0}
    client = _client(cost=cost, max_cost_s=10.0,
                     defaults={"guidance": 1.0, "steps": 2, "pdf_guidance": 0.3, "pdf_guidance_iters": 8})
    body = {"r": GRID.tolist(), "g": np.sin(GRID).tolist(), "metal": "Ti", "n_samples": 1, "n_atoms": 24}
    resp = client.post("/v1/sample", json=body)
    assert resp.status_code == 200, resp.text
    assert (client.seen[-1].pdf_guidance, client.seen[-1].pdf_guidance_iters) == (0.3, 4)
    assert client.post("/v1/sample", json={**body, "steps": 4}).status_code == 200  # 4 x (1 + 1) = 8 s
    assert (client.seen[-1].pdf_guidance, client.seen[-1].pdf_guidance_iters) == (0.3, 1)
    assert client.post("/v1/sample", json={**body, "steps": 4, "n_samples": 2}).status_code == 200  # 2 x 4 x 1 s
    assert (client.seen[-1].pdf_guidance, client.seen[-1].pdf_guidance_iters) == (0.0, 1)
    resp = client.post("/v1/sample", json={**body, "pdf_guidance_iters": 8})
    assert resp.status_code == 422 and "pdf_guidance_iters=8" in resp.json()["error"]["message"]


def test_admission_refuses_what_would_not_fit_the_timeout():
    """Cost = n_samples x n_atoms x steps at the replica's measured speed; over limits.max_cost_s: 422."""
    cost = {"atoms": 24, "step_s": 1.0, "guide_s": 0.5}
    client = _client(cost=cost, max_cost_s=10.0)
    body = {"r": GRID.tolist(), "g": np.sin(GRID).tolist(), "metal": "Ti", "n_samples": 3, "n_atoms": 24, "steps": 4}
    resp = client.post("/v1/sample", json=body)  # 3 x 24/24 x 4 steps x 1 s = 12 s > 10 s
    assert resp.status_code == 422, resp.text
    err = resp.json()["error"]
    assert err["field"] == "n_samples" and "would take about 12 s" in err["message"] and "10 s limit" in err["message"]
    assert client.post("/v1/sample", json={**body, "n_samples": 2}).status_code == 200  # 8 s
    info = client.get("/v1/model").json()
    assert info["cost"] == {**cost, "max_cost_s": 10.0}
    job = SampleJob(pdf=np.zeros(3), metal_z=22, n_samples=2, guidance=1, steps=4, n_atoms=12, pdf_guidance=0.5,
                    pdf_guidance_iters=2, refine=True)
    assert estimate_seconds(job, cost, 24, refine_steps=10) == pytest.approx(1.0 * (4 * (1.0 + 2 * 0.5) + 10 * 0.5))


def test_health_reports_the_sampler_probe():
    async def ok():
        return {"ongoing": 1, "capacity": 16, "sampling": True}

    async def full():
        return {"ongoing": 16, "capacity": 16, "sampling": True}

    async def dead():
        raise RuntimeError("ActorDiedError")

    async def silent():
        await asyncio.sleep(60)

    resp = _client(probe=ok).get("/v1/health")
    assert resp.status_code == 200 and resp.json()["status"] == "ok" and resp.json()["sampler"]["ready"] is True
    resp = _client(probe=full).get("/v1/health")
    assert resp.status_code == 503 and resp.json()["status"] == "degraded" and "retry-after" in resp.headers
    for probe in (dead, silent):
        resp = _client(probe=probe).get("/v1/health")
        assert resp.status_code == 503 and resp.json()["status"] == "unavailable", resp.text
        assert resp.json()["sampler"]["ready"] is False and resp.headers["retry-after"] == "20"


def test_lost_replica_is_503_with_retry_after():
    async def unavailable(job):
        raise ServiceUnavailable("the sampler replica handling this request stopped; retry", 20)

    resp = _client(sample=unavailable).post("/v1/sample", json={"r": GRID.tolist(), "g": np.sin(GRID).tolist(),
                                                                "metal": "Ti"})
    assert resp.status_code == 503 and resp.headers["retry-after"] == "20"
    assert resp.json()["error"]["field"] == "sampler"


async def _asgi(app, messages: list[dict | None]) -> list[dict]:
    """Run one POST /v1/sample through the ASGI app; `None` in `messages` = the client sends nothing more."""
    sent: list[dict] = []
    queue = list(messages)

    async def receive():
        if not queue or queue[0] is None:
            await asyncio.Event().wait()  # never: a body that never finishes arriving
        return queue.pop(0)

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/v1/sample", "raw_path": b"/v1/sample", "root_path": "", "query_string": b"",
             "headers": [(b"content-type", b"application/json"), (b"content-length", b"5000")],
             "server": ("test", 80), "client": ("test", 1)}
    await asyncio.wait_for(app(scope, receive, send), timeout=60)
    return sent


def test_body_that_never_finishes_is_408():
    client = _client(body_timeout_s=0.2)
    sent = asyncio.run(_asgi(client.app, [{"type": "http.request", "body": b'{"r": [0', "more_body": True}, None]))
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 408
    assert b'"field":"body"' in sent[1]["body"]


def test_client_disconnect_mid_body_logs_no_traceback(caplog):
    client = _client()
    with caplog.at_level(logging.INFO, logger="pdfusion.serving"):
        asyncio.run(_asgi(client.app, [{"type": "http.request", "body": b'{"r": [0', "more_body": True},
                                       {"type": "http.disconnect"}]))
    assert "unhandled error" not in caplog.text and "Traceback" not in caplog.text
    assert "client disconnected" in caplog.text


def test_sampler_service_stops_abandoned_jobs_between_steps(tiny_checkpoint):
    """A job nobody waits for is not sampled; one abandoned mid-loop stops at the next step check."""
    import time

    from pdfusion.serving.service import CANCELLED, SamplerService

    service = SamplerService(serve_cfg(tiny_checkpoint))
    n_r = len(service.bundle.r_grid)
    pdf = np.zeros(n_r, dtype=np.float32)
    pdf[300] = 1.0
    expired = SampleJob(pdf=pdf, metal_z=22, n_samples=2, guidance=1.0, steps=4, n_atoms=8, deadline=time.time() - 1)
    assert service.run_batch([expired]) == [{"error": CANCELLED, "cancelled": True}]
    assert service.stats["cancelled"] == 1 and service.stats["loops"] == 0

    class LeavesAfterThreeChecks(SampleJob):
        checks = 0

        def abandoned(self) -> bool:
            type(self).checks += 1
            return type(self).checks > 3  # admission, chunk, step 1 checks; gone at step 2

    job = LeavesAfterThreeChecks(pdf=pdf, metal_z=22, n_samples=2, guidance=1.0, steps=4, n_atoms=8)
    assert service.run_batch([job]) == [{"error": CANCELLED, "cancelled": True}]
    assert LeavesAfterThreeChecks.checks == 4  # stopped before step 2 of 4
    assert service.stats["cancelled"] == 2
    fine = SampleJob(pdf=pdf, metal_z=22, n_samples=2, guidance=1.0, steps=4, n_atoms=8, deadline=time.time() + 600)
    (res,) = service.run_batch([fine])
    assert len(res["candidates"]) == 2
    cost = service.calibrate(8)
    assert cost["atoms"] == 8 and cost["step_s"] > 0 and cost["guide_s"] > 0
