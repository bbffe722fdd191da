"""Turn a request's PDF (JSON arrays or an uploaded .gr/.csv file) into a G(r) on the model's r grid.

Files are parsed by the one reader of the project, :func:`pdfusion.pdf.files.parse_pdf_bytes` (the same one
``pdfusion sample`` and :func:`pdfusion.pdf.files.read_pdf_file` use), arrays are checked by its
:func:`~pdfusion.pdf.files.validate_pdf_arrays` and mapped by :func:`~pdfusion.pdf.files.map_to_grid`, so an
upload, a JSON body and a CLI file are accepted and refused by the same rules. Everything happens in
memory: an upload's file name only selects the format, it is never opened as a path. Every problem is an
`InputError` naming the request field (and the line of an uploaded file), which the HTTP layer turns into
a 422, so bad input can never become a 5xx.
"""

from __future__ import annotations

import logging

import numpy as np

from pdfusion.config import ServeLimits
from pdfusion.pdf.files import PDFValueError, map_to_grid, parse_pdf_bytes, validate_pdf_arrays

log = logging.getLogger("pdfusion.serving")


class InputError(ValueError):
    """Bad request input; `field` is the request field it concerns, `status` the HTTP code to answer."""

    def __init__(self, field: str, message: str, status: int = 422) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.status = status


def parse_upload(data: bytes, filename: str, limits: ServeLimits) -> tuple[np.ndarray, np.ndarray]:
    """(r, G) of an uploaded PDF file's bytes: the HTTP upload path, byte for byte the CLI's reader.

    Any problem (unknown type, not text, a bad line, too many rows, NaN, unsorted r) is
    ``InputError('file', message naming the line and the fix)``."""
    try:
        pdf = parse_pdf_bytes(data, filename, max_points=limits.max_points)
    except ValueError as exc:
        raise InputError("file", str(exc)) from None
    return pdf.r, pdf.g


def check_pdf_arrays(r, g, limits: ServeLimits, origin: str = "") -> tuple[np.ndarray, np.ndarray]:
    """Validate a measured PDF (equal lengths, 2..max_points points, finite, strictly increasing r) with
    :func:`pdfusion.pdf.files.validate_pdf_arrays`, the rule files are checked with.

    `origin` prefixes the field name (e.g. 'file' for an upload) so the error says where the data came from."""
    try:
        r, g, _ = validate_pdf_arrays(r, g, max_points=limits.max_points)
    except PDFValueError as exc:
        raise InputError(f"{origin}.{exc.field}" if origin else exc.field, exc.message) from None
    return r, g


def _g_field(origin: str) -> str:
    return f"{origin}.g" if origin else "g"


def to_model_grid(r: np.ndarray, g: np.ndarray, grid: np.ndarray, normalize: bool,
                  origin: str = "") -> tuple[np.ndarray, bool]:
    """G on the model's grid via :func:`pdfusion.pdf.files.map_to_grid`, the CLI's rule: linear
    interpolation when the grids differ, G = 0 where the data do not reach (logged), refused when the data
    cover less than half the model's r range; scaled to max 1 when the model was trained on max-normalised
    PDFs. Returns (g_model float32, interpolated?).

    Finite-but-unusable curves are refused there, naming `g` (422), before anything overflows: |G| beyond
    ``pdf.files.MAX_ABS_G``; on the model's range all zero, a lone spike, no positive value, or a positive
    side negligible next to the negative one (``pdf.files.MAX_NEGATIVE_RATIO``; max-normalisation would blow
    it up to -1e300). The sampler only ever sees a finite float32 curve of sane size."""
    try:
        mapped = map_to_grid(r, g, grid, normalize=normalize)
    except PDFValueError as exc:
        raise InputError(f"{origin}.{exc.field}" if origin else exc.field, exc.message) from None
    for note in mapped.warnings:
        log.warning("request PDF: %s", note)
    g32 = mapped.g.astype(np.float32)
    if not np.isfinite(g32).all():  # unreachable after map_to_grid's bounds; the sampler never gets inf
        raise InputError(_g_field(origin), "does not fit in float32 after mapping onto the model's grid")
    return g32, mapped.interpolated


# --------------------------------------------------------------------------------------------------
# request bodies: one multipart / JSON reader for POST /v1/sample and POST /v1/solve
# --------------------------------------------------------------------------------------------------
def first_error(exc, prefix: str = "") -> tuple[str, str]:
    """(field, message) of the first problem of a pydantic / FastAPI validation error."""
    errs = exc.errors()
    if not errs:
        return prefix or "body", "invalid request"
    e = errs[0]
    loc = [str(p) for p in e.get("loc", ()) if p not in ("body",)]
    field = ".".join(loc) or prefix or "body"
    msg = e.get("msg", "invalid value")
    if e.get("type") == "extra_forbidden":
        msg = "unknown field; see the schema at /docs"
    if len(errs) > 1:
        msg += f" (and {len(errs) - 1} more problem(s))"
    return field, msg


def validated(schema, data):
    """``schema.model_validate(data)``, a validation error becoming the InputError of its first problem."""
    from pydantic import ValidationError

    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        raise InputError(*first_error(exc)) from None


def is_multipart(request) -> bool:
    """True for multipart/form-data, False for JSON (or no content type); 415 for anything else."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        return True
    if ctype not in ("application/json", ""):
        raise InputError("body", f"unsupported content type {ctype!r}; send application/json or multipart/form-data",
                         status=415)
    return False


async def read_form(request, schema, lists: tuple[str, ...] = ()):
    """(validated ``schema`` of the plain form fields, the 'file' upload) of a multipart request. Fields named in
    ``lists`` are split at commas / spaces; a field given twice, or a file where a value belongs, is refused."""
    from starlette.datastructures import UploadFile
    from starlette.exceptions import HTTPException as StarletteHTTPException

    try:
        form = await request.form(max_files=1, max_fields=len(schema.model_fields) + 1)
    except StarletteHTTPException:
        raise
    except Exception as exc:  # noqa: BLE001 - any multipart parse problem is the client's
        raise InputError("body", f"cannot parse the multipart form: {exc}", status=400) from None
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise InputError("file", "upload a .gr or .csv PDF file in the 'file' form field")
    fields: dict = {}
    for key, value in form.multi_items():
        if key == "file":
            continue
        if not isinstance(value, str):
            raise InputError(key, "must be a plain form value, not a file")
        if key in fields:
            raise InputError(key, "given more than once")
        if value != "":
            fields[key] = value.replace(",", " ").split() if key in lists else value
    return validated(schema, fields), upload


async def read_json(request, schema):
    """The JSON body of ``request`` validated as ``schema`` (400 for a body that is not JSON)."""
    import json

    try:
        obj = json.loads(await request.body())
    except (ValueError, RecursionError):
        raise InputError("body", "is not valid JSON", status=400) from None
    return validated(schema, obj)
