"""Turn a request's PDF (JSON arrays or an uploaded .gr/.csv text) into a G(r) on the model's r grid.

Everything happens in memory: an upload's file name only selects the format, it is never opened as
a path. Every problem is an `InputError` naming the request field (and the line of an uploaded file),
which the HTTP layer turns into a 422, so bad input can never become a 5xx.
"""

from __future__ import annotations

import math

import numpy as np

from pdfusion.config import ServeLimits


class InputError(ValueError):
    """Bad request input; `field` is the request field it concerns, `status` the HTTP code to answer."""

    def __init__(self, field: str, message: str, status: int = 422) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.status = status


def _numbers(line: str, sep: str | None) -> list[float] | None:
    parts = [p for p in (line.split(sep) if sep else line.split()) if p.strip()]
    try:
        return [float(p) for p in parts]
    except ValueError:
        return None


def parse_pdf_text(text: str, name: str, max_points: int = 20000) -> tuple[np.ndarray, np.ndarray]:
    """(r, G) from the text of an xPDFsuite/PDFgetX `.gr` (whitespace columns after a header) or a
    `.csv` (comma columns, optional header row). The first two columns are r (Å) and G(r).

    Header lines (before `#### start data`, comments, `key = value`) are skipped; once data rows have
    started, a non-numeric row is an error naming its line."""
    lower = name.lower()
    if lower.endswith(".csv"):
        sep: str | None = ","
    elif lower.endswith((".gr", ".dat", ".txt")):
        sep = None
    else:
        raise InputError("file", f"unsupported file type {name!r}; upload a .gr or .csv file")
    lines = text.splitlines()
    start = 0
    for i, line in enumerate(lines):
        if line.strip().lower().startswith("#### start data"):
            start = i + 1
            break
    r: list[float] = []
    g: list[float] = []
    for lineno, raw in enumerate(lines[start:], start=start + 1):
        line = raw.strip()
        if not line or line.startswith(("#", "[", ";")):
            continue
        vals = _numbers(line, sep)
        if vals is None or len(vals) < 2:
            if not r:  # still in a header (column names, key = value lines)
                continue
            raise InputError("file", f"line {lineno}: expected at least two numeric columns (r, G), got {line[:60]!r}")
        r.append(vals[0])
        g.append(vals[1])
        if len(r) > max_points:
            raise InputError("file", f"more than {max_points} data rows; send at most {max_points} points")
    if len(r) < 2:
        raise InputError("file", f"{name!r} holds fewer than two (r, G) data rows")
    return np.asarray(r, dtype=np.float64), np.asarray(g, dtype=np.float64)


def check_pdf_arrays(r, g, limits: ServeLimits, origin: str = "") -> tuple[np.ndarray, np.ndarray]:
    """Validate a measured PDF: equal lengths, 2..max_points points, finite values, strictly increasing r.

    `origin` prefixes the field name (e.g. 'file' for an upload) so the error says where the data came from."""
    rf, gf = (f"{origin}.r", f"{origin}.g") if origin else ("r", "g")
    r = np.asarray(r, dtype=np.float64).reshape(-1)
    g = np.asarray(g, dtype=np.float64).reshape(-1)
    if r.shape != g.shape:
        raise InputError(gf, f"has {g.size} values but r has {r.size}; give one G value per r value")
    if r.size < 2:
        raise InputError(rf, f"needs at least 2 points, got {r.size}")
    if r.size > limits.max_points:
        raise InputError(rf, f"has {r.size} points; at most {limits.max_points} are accepted")
    for name, arr in ((rf, r), (gf, g)):
        bad = np.flatnonzero(~np.isfinite(arr))
        if bad.size:
            raise InputError(name, f"value at index {int(bad[0])} is {arr[bad[0]]}; all values must be finite")
    step = np.diff(r)
    bad = np.flatnonzero(step <= 0)
    if bad.size:
        i = int(bad[0])
        raise InputError(rf, f"must be strictly increasing; r[{i}]={r[i]:g} is followed by r[{i + 1}]={r[i + 1]:g}")
    return r, g


def to_model_grid(r: np.ndarray, g: np.ndarray, grid: np.ndarray, normalize: bool, origin: str = "") -> tuple[np.ndarray, bool]:
    """G on the model's grid (linear interpolation when the grids differ), scaled to max 1 when the
    model was trained on max-normalised PDFs. Returns (g_model float32, interpolated?).

    The input must cover the model's r range (to half a grid step): extrapolating a PDF would invent data."""
    rf, gf = (f"{origin}.r", f"{origin}.g") if origin else ("r", "g")
    grid = np.asarray(grid, dtype=np.float64)
    tol = 0.5 * float(grid[1] - grid[0]) if grid.size > 1 else 1e-9
    if r[0] > grid[0] + tol or r[-1] < grid[-1] - tol:
        raise InputError(
            rf, f"covers {r[0]:g}–{r[-1]:g} Å but the model needs {grid[0]:g}–{grid[-1]:g} Å; "
            "send a PDF whose r range includes the model's (see GET /v1/model)",
        )
    same = r.size == grid.size and np.allclose(r, grid, rtol=0, atol=1e-6)
    out = g.copy() if same else np.interp(grid, r, g)
    if normalize:
        peak = float(out.max())
        if not (peak > 0 and math.isfinite(peak)):
            raise InputError(gf, f"has no positive value on the model's r range {grid[0]:g}–{grid[-1]:g} Å; cannot scale to max 1")
        out = out / peak
    return out.astype(np.float32), not same
