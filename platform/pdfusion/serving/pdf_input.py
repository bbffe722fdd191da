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


def to_model_grid(r: np.ndarray, g: np.ndarray, grid: np.ndarray, normalize: bool, origin: str = "") -> tuple[np.ndarray, bool]:
    """G on the model's grid via :func:`pdfusion.pdf.files.map_to_grid` (the CLI's rule): linear
    interpolation when the grids differ, G = 0 where the data do not reach (logged), refused when the data
    cover less than half the model's r range; scaled to max 1 when the model was trained on max-normalised
    PDFs. Returns (g_model float32, interpolated?)."""
    try:
        mapped = map_to_grid(r, g, grid, normalize=normalize)
    except PDFValueError as exc:
        raise InputError(f"{origin}.{exc.field}" if origin else exc.field, exc.message) from None
    for note in mapped.warnings:
        log.warning("request PDF: %s", note)
    return mapped.g.astype(np.float32), mapped.interpolated
