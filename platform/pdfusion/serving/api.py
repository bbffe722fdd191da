"""The FastAPI application: routes, validation, error bodies, body-size limit and request timeout.

`create_api` needs only the model's description (`SamplerService.info()`) and an async `sample(job)`
callable, so the same app runs behind Ray Serve (where `sample` calls the batched sampler
deployment) and in-process. Every error, 4xx or 5xx, has one body: `{"error": {"field", "message"}}`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from pdfusion.config import ServeConfig
from pdfusion.inference.bundle import DEFAULTS
from pdfusion.serving.pdf_input import (
    InputError,
    check_pdf_arrays,
    first_error,
    is_multipart,
    parse_upload,
    read_form,
    read_json,
    to_model_grid,
)
from pdfusion.serving.schemas import (
    Bounds,
    ErrorResponse,
    Health,
    ModelInfo,
    SampleResponse,
    form_model,
    form_openapi_schema,
    request_model,
)
from pdfusion.serving.service import SampleJob, estimate_seconds
from pdfusion.serving.solve_route import add_solve_route
from pdfusion.structures.particle import OXYGEN

log = logging.getLogger("pdfusion.serving")
SampleFn = Callable[[SampleJob], Awaitable[dict[str, Any]]]
ProbeFn = Callable[[], Awaitable[dict[str, Any]]]
HEALTH_PROBE_S = 2.0  # a sampler replica that cannot answer its load within this is not ready
RETRY_AFTER_S = 20  # about what Serve needs to restart a dead sampler replica on CPU


def error_response(status: int, field: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"field": field, "message": message}}, status_code=status)


class BodyTooLarge(StarletteHTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body exceeds {limit} bytes")


class BodyTimeout(StarletteHTTPException):
    def __init__(self, limit: float) -> None:
        super().__init__(408, f"the request body did not arrive within {limit:g} s; send it in one go")


class ServiceUnavailable(Exception):
    """The sampler cannot take the request now (its replica died and no other answered): 503 + Retry-After."""

    def __init__(self, message: str, retry_after_s: int = 20) -> None:
        super().__init__(message)
        self.message, self.retry_after_s = message, retry_after_s


class BodyLimits:
    """ASGI middleware: refuse bodies over `max_bytes` (declared Content-Length or bytes actually
    streamed) before the app buffers them, and bodies that have not fully arrived `timeout_s` after the
    app first asked for them (408; a client that never finishes its body is not held open forever)."""

    def __init__(self, app, max_bytes: int, timeout_s: float | None = None) -> None:
        self.app, self.max_bytes, self.timeout_s = app, max_bytes, timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            resp = error_response(413, "body", f"request body exceeds {self.max_bytes} bytes; send a smaller PDF")
            return await resp(scope, receive, send)
        seen = 0
        done = False
        deadline: float | None = None

        async def limited():
            nonlocal seen, done, deadline
            if done or self.timeout_s is None:  # body complete: later receives wait for the disconnect
                message = await receive()
            else:
                loop = asyncio.get_running_loop()
                deadline = deadline if deadline is not None else loop.time() + self.timeout_s
                try:
                    message = await asyncio.wait_for(receive(), timeout=max(deadline - loop.time(), 0.001))
                except TimeoutError:
                    raise BodyTimeout(self.timeout_s) from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
                done = not message.get("more_body", False)
            return message

        return await self.app(scope, limited, send)


def _metal(symbol: str, n_metals: int) -> tuple[str, int]:
    from pymatgen.core import Element

    sym = symbol.strip().capitalize()
    try:
        z = int(Element(sym).Z)
    except (ValueError, KeyError, AttributeError):
        raise InputError("metal", f"{symbol!r} is not an element symbol; give the metal, e.g. 'Ti' or 'Zn'") from None
    if z == OXYGEN:
        raise InputError("metal", "oxygen is not a metal; give the oxide's metal, e.g. 'Ti'")
    if z >= n_metals:
        raise InputError("metal", f"{sym} (Z={z}) is beyond this model's metal table (Z < {n_metals})")
    return sym, z


def _fit_default_guidance(job: SampleJob, cost: dict[str, float], max_atoms: int, refine_steps: int,
                          max_cost_s: float) -> None:
    """A request that left PDF guidance to the model gets the most of the model's guidance that fits this server's
    per-request budget: iterations halved until the estimate fits, then none; the response echoes what was used.
    A request that asked for guidance keeps it and is refused if it does not fit."""
    while job.pdf_guidance > 0 and estimate_seconds(job, cost, max_atoms, refine_steps) > max_cost_s:
        if job.pdf_guidance_iters > 1:
            job.pdf_guidance_iters = max(1, job.pdf_guidance_iters // 2)
        else:
            job.pdf_guidance, job.pdf_guidance_iters = 0.0, 1


def create_api(cfg: ServeConfig, info: dict[str, Any], sample: SampleFn, probe: ProbeFn | None = None) -> FastAPI:
    """Build the HTTP API for one loaded model (see the module docstring). `probe` (optional) asks a sampler
    replica for its load (`{"ongoing", "capacity"}`); `/v1/health` answers 503 when it fails or is slow."""
    bounds = Bounds.from_limits(cfg.limits, info["max_atoms"], info["timesteps"])
    grid = np.asarray(info["r_grid"], dtype=np.float64)
    JsonReq, FormReq = request_model(bounds), form_model(bounds)
    model_ref = {"name": info["name"], "version": info["version"]}
    default_steps = int(min(info["defaults"]["steps"], bounds.max_steps))
    default_guidance = float(min(info["defaults"]["guidance"], bounds.max_guidance))
    # the model's PDF guidance (models/README.md), within this server's bounds
    model_defaults = {**DEFAULTS, **info["defaults"]}  # keys the model does not state: the bundle's defaults
    default_pdf_guidance = float(min(model_defaults["pdf_guidance"], bounds.max_pdf_guidance))
    default_pdf_iters = int(min(model_defaults["pdf_guidance_iters"], bounds.max_pdf_guidance_iters))
    pdf_window = tuple(float(f) for f in model_defaults["pdf_guidance_window"])  # the model's
    restarts = {"restarts": int(model_defaults["restarts"]), "restart_t": int(model_defaults["restart_t"])}
    errors = {code: {"model": ErrorResponse} for code in (400, 408, 413, 415, 422, 500, 503, 504)}
    cost = info.get("cost")  # the sampler replica's measured speed (SamplerService.calibrate); None: no admission
    max_cost_s = cfg.limits.max_cost_s if cfg.limits.max_cost_s is not None else cfg.limits.request_timeout_s / 2
    inflight = {"sample": 0}

    app = FastAPI(
        title="pdfusion sampling service",
        version="1",
        description="Generate nanoparticle structures from an X-ray PDF G(r), ranked by R_wp. "
        "Every error answers `{\"error\": {\"field\", \"message\"}}`.",
    )
    app.add_middleware(BodyLimits, max_bytes=bounds.max_body_bytes, timeout_s=cfg.limits.body_timeout_s)
    add_solve_route(app, cfg)  # POST /v1/solve: pdfusion solve over HTTP (serving/solve_route.py)

    @app.exception_handler(InputError)
    async def _input_error(_: Request, exc: InputError):
        return error_response(exc.status, exc.field, exc.message)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError):
        return error_response(422, *first_error(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        field = {405: "method", 404: "path"}.get(exc.status_code, "body")
        return error_response(exc.status_code, field, str(exc.detail))

    @app.exception_handler(ClientDisconnect)
    async def _client_left(_: Request, exc: ClientDisconnect):
        log.info("client disconnected before its request body arrived")  # nobody to answer; no traceback
        return error_response(400, "body", "client disconnected before the body arrived")

    @app.exception_handler(ServiceUnavailable)
    async def _unavailable(_: Request, exc: ServiceUnavailable):
        resp = error_response(503, "sampler", exc.message)
        resp.headers["Retry-After"] = str(exc.retry_after_s)
        return resp

    @app.exception_handler(Exception)
    async def _server_error(_: Request, exc: Exception):
        log.exception("unhandled error")
        return error_response(500, "server", f"internal error: {type(exc).__name__}")

    @app.get("/v1/health", response_model=Health, responses={503: {"model": Health}})
    async def health():
        """Ready (200) when a sampler replica answers within HEALTH_PROBE_S and has room; otherwise 503 with
        `status` "unavailable" (no replica answered: starting, restarting, dead) or "degraded" (saturated)."""
        if probe is None:
            return {"status": "ok", "model": model_ref, "sampler": None}
        try:
            load = await asyncio.wait_for(probe(), timeout=HEALTH_PROBE_S)
        except Exception as exc:  # noqa: BLE001 - TimeoutError, a dead actor, no replica: all "not ready"
            busy = inflight["sample"] > 0
            reason = (f"the sampler did not answer within {HEALTH_PROBE_S:g} s"
                      if isinstance(exc, TimeoutError) else f"the sampler failed: {type(exc).__name__}")
            body = {"status": "degraded" if busy else "unavailable", "model": model_ref,
                    "sampler": {"ready": False, "reason": reason + (" while busy with requests" if busy else
                                                                    " (no replica running, starting or restarting)"),
                                "ingress_inflight": inflight["sample"]}}
            return JSONResponse(body, status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)})
        saturated = load.get("ongoing", 0) >= load.get("capacity", 1 << 30)
        body = {"status": "degraded" if saturated else "ok", "model": model_ref,
                "sampler": {"ready": not saturated, **load, "ingress_inflight": inflight["sample"],
                            **({"reason": "saturated: every request slot of the replica is taken"}
                               if saturated else {})}}
        if saturated:
            return JSONResponse(body, status_code=503, headers={"Retry-After": "1"})
        return body

    @app.get("/v1/model", response_model=ModelInfo)
    async def model_info():
        return {
            **model_ref,
            "r_min": float(grid[0]), "r_max": float(grid[-1]),
            "r_step": float(grid[1] - grid[0]) if grid.size > 1 else 0.0, "n_r": int(grid.size),
            "defaults": {"guidance": default_guidance, "steps": default_steps, "pdf_guidance": default_pdf_guidance,
                         "pdf_guidance_iters": default_pdf_iters, "pdf_guidance_window": list(pdf_window),
                         **restarts},
            "default_samples": cfg.default_samples,
            "training": info["training"],
            "limits": bounds,
            "cost": {**cost, "max_cost_s": max_cost_s} if cost else None,
        }

    async def _parse(request: Request) -> tuple[Any, np.ndarray, np.ndarray, str]:
        if is_multipart(request):
            params, upload = await read_form(request, FormReq)
            r, g = parse_upload(await upload.read(), upload.filename or "", cfg.limits)  # the CLI's reader
            return params, r, g, "file"
        params = await read_json(request, JsonReq)
        r, g = check_pdf_arrays(params.r, params.g, cfg.limits)
        return params, r, g, ""

    sample_doc = {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": JsonReq.model_json_schema()},
                "multipart/form-data": {"schema": form_openapi_schema(bounds)},
            },
        }
    }

    @app.post("/v1/sample", response_model=SampleResponse, responses=errors, openapi_extra=sample_doc)
    async def sample_route(request: Request):
        """Generate candidate structures for one PDF (JSON arrays or an uploaded .gr/.csv file)."""
        t0 = time.perf_counter()
        params, r, g, origin = await _parse(request)
        symbol, z = _metal(params.metal, info["n_metals"])
        pdf, interpolated = to_model_grid(r, g, grid, info["normalize"], origin=origin)
        job = SampleJob(
            pdf=pdf, metal_z=z,
            n_samples=(params.n_samples if params.n_samples is not None
                       else min(cfg.default_samples, bounds.max_samples)),
            guidance=params.guidance if params.guidance is not None else default_guidance,
            steps=params.steps if params.steps is not None else default_steps,
            n_atoms=params.n_atoms, seed=params.seed, refine=params.refine, return_pdf=params.return_pdf,
            pdf_guidance=default_pdf_guidance if params.pdf_guidance is None else params.pdf_guidance,
            pdf_guidance_iters=default_pdf_iters if params.pdf_guidance_iters is None else params.pdf_guidance_iters,
            pdf_guidance_window=pdf_window, timesteps=int(info["timesteps"]), **restarts,
        )
        if cost and params.pdf_guidance is None and params.pdf_guidance_iters is None:
            _fit_default_guidance(job, cost, bounds.max_atoms, cfg.refine_steps, max_cost_s)
        if cost:  # admit only what fits the timeout on this hardware (the replica's measured speed)
            est = estimate_seconds(job, cost, bounds.max_atoms, cfg.refine_steps)
            if est > max_cost_s:
                field = "n_samples" if job.n_samples > 1 else "steps"
                raise InputError(field, f"n_samples={job.n_samples} x n_atoms={job.n_atoms or bounds.max_atoms} x "
                                        f"steps={job.steps}" + (f" x pdf_guidance_iters={job.pdf_guidance_iters}"
                                                                if job.pdf_guidance > 0 else "")
                                 + (" + refine" if job.refine else "")
                                 + f" would take about {est:.3g} s on this server, over its {max_cost_s:g} s limit "
                                   "per request; ask for fewer samples, atoms or steps")
        remaining = bounds.request_timeout_s - (time.perf_counter() - t0)
        job.deadline = time.time() + remaining  # the sampler stops between steps past it
        inflight["sample"] += 1
        try:
            result = await asyncio.wait_for(sample(job), timeout=max(remaining, 0.001))
        except TimeoutError:
            return error_response(504, "server", f"sampling did not finish within {bounds.request_timeout_s:g} s; "
                                                 "ask for fewer samples/steps or retry later")
        finally:
            inflight["sample"] -= 1
        if result.get("cancelled"):
            return error_response(504, "server", f"sampling did not finish within {bounds.request_timeout_s:g} s "
                                                 "and was stopped; ask for fewer samples/steps or retry later")
        if "error" in result:
            return error_response(500, "sampler", result["error"])
        return {
            "model": model_ref,
            "params": {
                "metal": symbol, "metal_z": z, "n_atoms": job.n_atoms, "n_samples": job.n_samples,
                "guidance": job.guidance, "steps": job.steps, "seed": result.get("seed"), "refine": job.refine,
                "pdf_guidance": job.pdf_guidance, "pdf_guidance_iters": job.pdf_guidance_iters,
                "pdf_guidance_window": list(job.pdf_guidance_window),
                "refine_steps": cfg.refine_steps if job.refine else 0, "interpolated": interpolated,
                "normalized": info["normalize"], "n_points": int(r.size), "r_min": float(r[0]), "r_max": float(r[-1]),
                "n_r": int(grid.size),
            },
            "candidates": result["candidates"],
            "r": grid.round(6).tolist() if job.return_pdf else None,
            "elapsed_s": time.perf_counter() - t0,
        }

    return app
