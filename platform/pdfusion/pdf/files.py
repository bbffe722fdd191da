"""Read measured or simulated PDFs from disk, put them on a model's r grid, write them back.

Formats read by ``read_pdf``:
- ``.gr`` from xPDFsuite / PDFgetX3: configuration header, ``#### start data``, ``#S`` / ``#L`` lines, then
  columns r G [dr dG];
- plain whitespace-separated ``.gr`` / ``.dat`` / ``.txt`` (``#`` comments allowed), first two columns used;
- ``.csv`` with or without a header line (``r,G``);
- a seed-oxides ``.h5`` (datasets ``r`` and ``pdf``).
Every malformed input raises ValueError naming the file, the line and what was expected, because measured
files arrive from users and a silent misparse would condition the model on garbage.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import numpy as np

START_DATA = "#### start data"
TEXT_SUFFIXES = {".gr", ".dat", ".txt", ".xy", ".fgr"}


def _parse_row(path: Path, lineno: int, line: str, sep: str | None) -> tuple[float, float]:
    parts = [p for p in (line.split(sep) if sep else line.split()) if p.strip() != ""]
    if len(parts) < 2:
        raise ValueError(f"{path}:{lineno}: expected at least two numeric columns (r G), got {line.strip()!r}")
    try:
        r, g = float(parts[0]), float(parts[1])
    except ValueError:
        raise ValueError(f"{path}:{lineno}: expected numbers in the first two columns (r G), got {line.strip()!r}") from None
    if not (math.isfinite(r) and math.isfinite(g)):
        raise ValueError(f"{path}:{lineno}: non-finite value (NaN or inf) in {line.strip()!r}")
    return r, g


def _finish(path: Path, rows: list[tuple[float, float]]) -> tuple[np.ndarray, np.ndarray]:
    if len(rows) < 2:
        raise ValueError(f"{path}: expected at least two data rows (r G), found {len(rows)}")
    arr = np.asarray(rows, dtype=np.float64)
    return arr[:, 0].copy(), arr[:, 1].copy()


def _read_text(path: Path) -> tuple[np.ndarray, np.ndarray]:
    lines = path.read_text(errors="replace").splitlines()
    start = 0
    for k, line in enumerate(lines):
        if line.strip().lower().startswith(START_DATA):
            start = k + 1
            break
    rows = []
    for k in range(start, len(lines)):
        line = lines[k].strip()
        if not line or line.startswith("#"):
            continue
        rows.append(_parse_row(path, k + 1, line, None))
    return _finish(path, rows)


def _read_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    rows = []
    first = True
    for k, raw in enumerate(path.read_text(errors="replace").splitlines()):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if first:
            first = False
            cells = [c.strip() for c in line.split(",")]
            try:
                float(cells[0])
            except ValueError:
                if len(cells) < 2:
                    raise ValueError(f"{path}:{k + 1}: expected a header with two columns like 'r,G', got {line!r}") from None
                continue  # header line
        rows.append(_parse_row(path, k + 1, line, ","))
    return _finish(path, rows)


def _read_h5(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import h5py

    with h5py.File(path, "r") as fh:
        missing = [k for k in ("r", "pdf") if k not in fh]
        if missing:
            raise ValueError(f"{path}: expected datasets 'r' and 'pdf' (seed-oxides format), missing {missing}")
        r = np.asarray(fh["r"][()], dtype=np.float64).reshape(-1)
        g = np.asarray(fh["pdf"][()], dtype=np.float64).reshape(-1)
    if r.shape != g.shape:
        raise ValueError(f"{path}: 'r' has {r.size} points but 'pdf' has {g.size}")
    if not (np.isfinite(r).all() and np.isfinite(g).all()):
        raise ValueError(f"{path}: 'r' or 'pdf' contains NaN or inf")
    return r, g


def read_pdf(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """(r, G) arrays from a .gr/.dat/.txt, .csv or seed-oxides .h5 file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such PDF file")
    suffix = path.suffix.lower()
    if suffix in (".h5", ".hdf5"):
        return _read_h5(path)
    if suffix == ".csv":
        return _read_csv(path)
    if suffix in TEXT_SUFFIXES:
        return _read_text(path)
    raise ValueError(f"{path}: unknown PDF file type {suffix!r}; expected one of .gr .dat .txt .csv .h5")


def interpolate_pdf(r: np.ndarray, g: np.ndarray, r_target: np.ndarray) -> np.ndarray:
    """G linearly interpolated onto ``r_target``; r must be strictly increasing, finite and cover r_target."""
    r = np.asarray(r, dtype=np.float64)
    g = np.asarray(g, dtype=np.float64)
    r_target = np.asarray(r_target, dtype=np.float64)
    if r.ndim != 1 or g.shape != r.shape:
        raise ValueError(f"g: expected a 1-D array matching r's shape {r.shape}, got {g.shape}")
    if r.size < 2:
        raise ValueError(f"r: need at least two points, got {r.size}")
    for name, arr in (("r", r), ("g", g), ("r_target", r_target)):
        if not np.isfinite(arr).all():
            raise ValueError(f"{name}: contains NaN or inf")
    if not np.all(np.diff(r) > 0):
        k = int(np.argmax(~(np.diff(r) > 0)))
        raise ValueError(f"r: must be strictly increasing; r[{k}]={r[k]} >= r[{k + 1}]={r[k + 1]}")
    tol = 1e-9 * max(1.0, float(np.abs(r).max()))
    if r_target.size and (r_target.min() < r[0] - tol or r_target.max() > r[-1] + tol):
        raise ValueError(f"r: data cover [{r[0]}, {r[-1]}] but r_target needs [{r_target.min()}, {r_target.max()}]; "
                         "measure to a larger rmax or simulate with a smaller one")
    return np.interp(r_target, r, g)


def write_pdf_csv(path: str | os.PathLike, r: np.ndarray, g: np.ndarray) -> None:
    """Write 'r,G' CSV atomically (temporary file in the same folder, then os.replace)."""
    path = Path(path)
    r = np.asarray(r, dtype=np.float64).reshape(-1)
    g = np.asarray(g, dtype=np.float64).reshape(-1)
    if r.shape != g.shape:
        raise ValueError(f"g: has {g.size} points but r has {r.size}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write("r,G\n")
            for ri, gi in zip(r, g, strict=True):
                fh.write(f"{ri:.10g},{gi:.10g}\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
