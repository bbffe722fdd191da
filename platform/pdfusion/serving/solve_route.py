"""`POST /v1/solve`: the HTTP face of `pdfusion solve` -- which structure is this measured particle?

The same reader as the CLI (:func:`pdfusion.pdf.files.parse_pdf_bytes` for an upload, whose header gives
Qmin/Qmax and the composition; :func:`~pdfusion.pdf.files.validate_pdf_arrays` for JSON arrays) and the same
solve code (:func:`pdfusion.inference.solve`): library of oxide prototypes / metal motifs -> screen -> refine
the best -> ranked candidates with refined parameters, uncertainties, Rw and XYZ text. The library only: the
served model's samples are `POST /v1/sample`'s. One solve runs at a time per replica (a few CPU-seconds to
a minute); a request waits for its turn within the request timeout, then gets 504.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator

from pdfusion.config import ServeConfig, SolveConfig
from pdfusion.inference.library import parse_composition
from pdfusion.inference.solve import solve
from pdfusion.pdf.files import parse_pdf_bytes
from pdfusion.serving.pdf_input import InputError, check_pdf_arrays, is_multipart, read_form, read_json
from pdfusion.serving.schemas import no_bool
from pdfusion.structures.io import xyz_text

MAX_TOP = 10
MAX_RADII = 12
MAX_RADIUS = 25.0  # Å; larger particles cost more than a request should


class SolveOptions(BaseModel):
    """The options of `pdfusion solve` a request may set (form fields or JSON keys)."""

    model_config = ConfigDict(extra="forbid")
    composition: str | None = Field(None, max_length=64, description="e.g. CeO2, Fe2O3, Pt; default: the file header's")
    top: int = Field(5, ge=1, le=MAX_TOP, description="candidates refined and returned")
    radii: list[float] | None = Field(None, max_length=MAX_RADII, description="library radii (Å)")
    families: list[str] | None = Field(None, max_length=2, description="'oxide' and/or 'metal'")
    rmin: float = Field(1.5, ge=0.0, le=20.0)
    rmax: float | None = Field(None, gt=0.0, le=60.0)
    qmin: float | None = Field(None, ge=0.0, le=10.0)
    qmax: float | None = Field(None, gt=0.0, le=60.0)
    qdamp: float = Field(0.04, ge=0.0, le=1.0)
    qbroad: float = Field(0.0, ge=0.0, le=1.0)
    refine: bool = Field(True, description="least-squares refinement of the best (else the screening fit)")
    return_curves: bool = Field(False, description="include r, G_obs and G_calc of each candidate")
    _numbers = field_validator("top", "radii", "rmin", "rmax", "qmin", "qmax", "qdamp", "qbroad",
                               mode="before")(no_bool)


class SolveJSON(SolveOptions):
    r: list[float] = Field(..., min_length=2)
    g: list[float] = Field(..., min_length=2)
    _arrays = field_validator("r", "g", mode="before")(no_bool)


def _candidate_out(c, return_curves: bool) -> dict[str, Any]:
    out = c.to_dict()
    out["xyz"] = xyz_text(c.structure.numbers, c.structure.positions,
                          f"pdfusion solve rank {c.rank} {c.structure_type} Rw={c.rw:.5f}")
    if return_curves:
        out["curves"] = {"r": c.r.round(6).tolist(), "gobs": c.gobs.tolist(), "gcalc": c.gcalc.tolist()}
    return out


def add_solve_route(app: FastAPI, cfg: ServeConfig) -> None:
    """Register `POST /v1/solve` on ``app`` (errors through the app's InputError handler)."""
    gate = asyncio.Semaphore(1)
    limits = cfg.limits

    async def parse(request: Request) -> tuple[SolveOptions, np.ndarray, np.ndarray, dict[str, Any]]:
        if is_multipart(request):
            opts, upload = await read_form(request, SolveOptions, lists=("radii", "families"))
            try:
                pdf = parse_pdf_bytes(await upload.read(), upload.filename or "", max_points=limits.max_points)
            except ValueError as exc:
                raise InputError("file", str(exc)) from None
            r, g = check_pdf_arrays(pdf.r, pdf.g, limits, origin="file")
            return opts, r, g, dict(pdf.meta or {})
        body = await read_json(request, SolveJSON)
        r, g = check_pdf_arrays(body.r, body.g, limits)
        return SolveOptions.model_validate(body.model_dump(exclude={"r", "g"})), r, g, {}

    @app.post("/v1/solve", responses={code: {"description": "error"} for code in (400, 413, 415, 422, 504)})
    async def solve_route(request: Request):
        """Rank candidate structures (oxide prototypes, metal motifs) for one measured PDF; each with refined
        scale, expansion, Uiso, delta2 (+ uncertainties), Rw, size and XYZ text."""
        t0 = time.perf_counter()
        opts, r, g, meta = await parse(request)
        composition = opts.composition or (meta.get("composition") if isinstance(meta.get("composition"), str)
                                           else None)
        if not composition:
            raise InputError("composition", "the file header names no composition; give one, e.g. CeO2, Fe2O3 or Pt")
        try:
            parse_composition(composition)
            radii = tuple(sorted(float(x) for x in opts.radii)) if opts.radii else None
            if radii and (radii[0] <= 0 or radii[-1] > MAX_RADIUS):
                raise InputError("radii", f"need radii in (0, {MAX_RADIUS:g}] Å, got {list(radii)}")
            scfg = SolveConfig(top=opts.top, rmin=opts.rmin, rmax=opts.rmax, qmin=opts.qmin, qmax=opts.qmax,
                               qdamp=opts.qdamp, qbroad=opts.qbroad, refine=opts.refine, use_ray=False,
                               families=tuple(opts.families) if opts.families else None, max_radius=MAX_RADIUS,
                               **({"radii": radii} if radii else {}))
        except InputError:
            raise
        except ValueError as exc:
            field = str(exc).split(":", 1)[0] if ":" in str(exc) else "body"
            raise InputError(field if field.isidentifier() else "body", str(exc)) from None

        def run():
            return solve(r, g, composition, scfg, meta=meta, progress=False)

        remaining = limits.request_timeout_s - (time.perf_counter() - t0)
        try:
            await asyncio.wait_for(gate.acquire(), timeout=max(remaining, 0.001))
        except TimeoutError:
            return _timeout(limits.request_timeout_s)
        # the gate opens when the work ends, not when a timed-out request gives up on it (a thread cannot be
        # stopped; the next solve must not run beside it)
        work = asyncio.ensure_future(asyncio.to_thread(run))
        work.add_done_callback(lambda _: gate.release())
        try:
            remaining = limits.request_timeout_s - (time.perf_counter() - t0)
            result = await asyncio.wait_for(asyncio.shield(work), timeout=max(remaining, 0.001))
        except TimeoutError:
            return _timeout(limits.request_timeout_s)
        except ValueError as exc:  # the data or window do not allow a fit: the client's
            msg = str(exc)
            field = msg.split(":", 1)[0] if ":" in msg and msg.split(":", 1)[0].isidentifier() else "body"
            raise InputError(field, msg) from None
        return {
            "composition": result.composition, "window": result.window, "timings_s": result.timings,
            "config": result.config, "n_library": len(result.screening),
            "candidates": [_candidate_out(c, opts.return_curves) for c in result.candidates],
            "screening": result.screening[:20], "elapsed_s": time.perf_counter() - t0,
        }


def _timeout(limit: float):
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": {"field": "server", "message": f"solve did not finish within {limit:g} s; use "
                                   "fewer radii, a shorter window or retry later"}}, status_code=504)
