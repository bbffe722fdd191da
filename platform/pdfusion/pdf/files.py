"""The one reader of PDF files for the CLI, the HTTP service and the library; grid mapping; CSV writing.

Every path into pdfusion -- ``pdfusion sample FILE``, an HTTP upload, ``read_pdf_file`` -- goes through
:func:`parse_pdf_bytes` / :func:`parse_pdf_text` and :func:`validate_pdf_arrays`, so all three accept and
refuse exactly the same files with the same messages. Formats:

- ``.gr`` / ``.fgr`` / ``.dat`` / ``.txt`` / ``.xy`` text from xPDFsuite, PDFgetX2/3, PDFgui, diffpy or any
  program: an optional header (``key = value`` lines, ``[section]`` lines, ``#`` comments), then columns
  ``r G [dr dG]`` (three columns: ``r G dG``) separated by whitespace or commas;
- ``.csv``: the same with commas, with or without an ``r,G`` header row;
- a seed-oxides ``.h5`` (datasets ``r`` and ``pdf``), from disk only (:func:`read_pdf_file`; never from an
  HTTP upload: libhdf5 is not meant to parse untrusted bytes).

Finding the data is diffpy's rule: the line after a ``^#+ start data`` line (any number of ``#``), else the
first line that starts with a number. Later ``#`` lines (``#S 1``, ``#L r G``) are skipped and ``#L`` gives
``meta['columns']``. Header ``key = value`` pairs (also ``# qmax = 15``) become ``meta`` with lower-case
keys and numbers as floats (qmin, qmax, qmaxinst, composition, wavelength, rpoly, ...). Text may be UTF-8
(with or without BOM), UTF-16 with a BOM, or Latin-1; line ends LF, CRLF or CR.

Any r grid is accepted (any rmin, rmax and step, uniform or not) as long as r is finite and strictly
increasing. Every malformed input raises ValueError naming the file, the line and the fix:
non-numeric rows once the data started, NaN/inf, descending or repeated r, rows with a different column
count, a second ``#S`` scan, fewer than two rows, more than ``max_points`` rows (counted while reading,
before anything is allocated) -- measured files arrive from users and a silent misparse would condition
the model on garbage.

:func:`map_to_grid` puts a measured curve on a model's r grid (the one rule of the CLI and HTTP, and the checks that
the mapped curve is usable); :func:`interpolate_pdf` interpolates a computed curve that must cover the target r.
"""

from __future__ import annotations

import io
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePath

import numpy as np

from pdfusion.io_utils import atomic_write

TEXT_SUFFIXES = (".gr", ".fgr", ".dat", ".txt", ".xy", ".csv")
H5_SUFFIXES = (".h5", ".hdf5")
MIN_COVERAGE = 0.5  # map_to_grid refuses data covering less than this fraction of the model's r range
R_TOL = 1e-6  # Å: r values closer than this are the same r (map_to_grid's same grid, interpolate_pdf's range)
_START = re.compile(r"^#+\s*start\s+data\b", re.IGNORECASE)
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*( [A-Za-z0-9_.\-]+){0,3}$")
_MAX_NAME = 120
_COLUMN = {"r": "r", "g": "G", "dg": "dG"}


class PDFValueError(ValueError):
    """A PDF refused by :func:`validate_pdf_arrays` / :func:`map_to_grid` / the parser.

    ``field`` is the array concerned ('r', 'g', 'dg') or 'file' for a text problem; ``message`` the text
    without a field prefix (what the HTTP layer returns); ``index`` the offending point, when there is one."""

    def __init__(self, field: str, message: str, index: int | None = None) -> None:
        super().__init__(message)
        self.field = field
        self.message = message
        self.index = index


@dataclass
class PDFData:
    """One PDF as read: r (Å, float64, strictly increasing), G(r), dG when the file has it, header metadata."""

    r: np.ndarray
    g: np.ndarray
    dg: np.ndarray | None = None
    meta: dict = field(default_factory=dict)
    source: str = ""

    def __iter__(self):  # ``r, g = read_pdf_file(p)`` keeps working like the old tuple
        return iter((self.r, self.g))


# --------------------------------------------------------------------------------------------------
# validation (one rule set for JSON arrays, CLI files and uploads)
# --------------------------------------------------------------------------------------------------
def validate_pdf_arrays(
    r,
    g,
    dg=None,
    *,
    max_points: int | None = None,
    source: str = "",
    lines: Sequence[int] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Check a PDF: 1-D, equal lengths, 2..max_points points, finite values, strictly increasing r.

    Returns float64 copies (r, g, dg). Raises :class:`PDFValueError`; with ``lines`` (the file line of each
    point) and ``source`` (the file name) the message names the file and line, else the array and index."""
    r = np.array(r, dtype=np.float64).reshape(-1)
    g = np.array(g, dtype=np.float64).reshape(-1)
    dg = None if dg is None else np.array(dg, dtype=np.float64).reshape(-1)

    if lines is not None:  # a file: messages name the file and line
        head = f"{source}: "

        def at(i: int, name: str) -> str:
            return f"{source} line {lines[i]}: {_COLUMN[name]}"

        def prev(i: int) -> str:
            return f"r={r[i]:g} on line {lines[i]}"
    else:  # arrays: messages name the array and index (the caller adds the field)
        head = ""

        def at(i: int, name: str) -> str:
            return f"{name}[{i}]"

        def prev(i: int) -> str:
            return f"r[{i}]={r[i]:g}"

    if g.shape != r.shape:
        raise PDFValueError("g", f"{head}has {g.size} G values but {r.size} r values; give one G value per r value")
    if dg is not None and dg.shape != r.shape:
        raise PDFValueError("dg", f"{head}has {dg.size} dG values but {r.size} r values; give one per r value")
    if r.size < 2:
        if lines is not None:
            raise PDFValueError("r", f"{head}found {r.size} data row (r G); a PDF needs at least 2 -- put the "
                                     "columns r G after the header (or after a '#### start data' line)")
        raise PDFValueError("r", f"needs at least 2 points, got {r.size}")
    if max_points is not None and r.size > max_points:
        raise PDFValueError("r", f"{head}has {r.size} points; at most {max_points} are accepted "
                                 "(resample to a coarser r step)")
    for name, arr in (("r", r), ("g", g), ("dg", dg)):
        if arr is None:
            continue
        bad = np.flatnonzero(~np.isfinite(arr))
        if bad.size:
            i = int(bad[0])
            raise PDFValueError(name, f"{at(i, name)} is {arr[i]}; all values must be finite "
                                      "(remove the row or re-export the PDF without NaN/inf)", i)
    bad = np.flatnonzero(np.diff(r) <= 0)
    if bad.size:
        i = int(bad[0])
        kind = "repeats" if r[i + 1] == r[i] else "is smaller than"
        raise PDFValueError("r", f"{at(i + 1, 'r')}={r[i + 1]:g} {kind} the previous {prev(i)}; r must be strictly "
                                 "increasing (sort the rows, remove duplicates, or keep one data set per file)", i + 1)
    return r, g, dg


# --------------------------------------------------------------------------------------------------
# parsing
# --------------------------------------------------------------------------------------------------
def _label(name: str) -> str:
    """The file name as errors show it: printable (an upload's name is the client's), at most ~120 characters."""
    name = "".join(ch if ch.isprintable() else "?" for ch in str(name))
    return name if len(name) <= _MAX_NAME else "..." + name[-_MAX_NAME:]


def _suffix(name: str) -> str:
    return PurePath(str(name).replace("\\", "/")).suffix.lower()


def _header_value(text: str) -> float | str:
    try:
        v = float(text)
    except ValueError:
        return text
    return v if math.isfinite(v) else text


def _header_pair(line: str) -> tuple[str, float | str] | None:
    body = line.lstrip("#;!% \t").strip()
    if "=" not in body:
        return None
    key, _, value = body.partition("=")
    key = key.strip()
    if not _KEY.match(key):
        return None
    return key.lower(), _header_value(value.strip())


def _first_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def decode_pdf_bytes(data: bytes, name: str) -> str:
    """Text of a PDF file: UTF-8 (BOM optional), UTF-16 with BOM, else Latin-1 unless it is binary."""
    label = _label(name)
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError:
            raise ValueError(f"{label}: starts with a UTF-16 mark but is not UTF-16 text; save it as UTF-8 "
                             "text") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    if b"\x00" in data:
        raise ValueError(f"{label}: is binary, not a text PDF file; export G(r) as .gr or .csv text")
    return data.decode("latin-1")


def _check_text_suffix(name: str) -> None:
    suffix = _suffix(name)
    if suffix in H5_SUFFIXES:
        raise ValueError(f"{_label(name)}: an HDF5 file is read from disk only (read_pdf_file, the CLI); "
                         "send G(r) as .gr or .csv text")
    if suffix not in TEXT_SUFFIXES:
        raise ValueError(f"{_label(name)}: unknown PDF file type {suffix or '(no suffix)'!r}; expected one of "
                         f"{' '.join(TEXT_SUFFIXES + H5_SUFFIXES)}")


def parse_pdf_text(text: str, name: str, *, max_points: int | None = None) -> PDFData:
    """Parse the text of a PDF file (see the module docstring for formats and rules).

    ``name`` selects the format by its suffix and labels errors; it is never opened. ``max_points`` bounds
    the number of data rows while reading (before arrays are allocated)."""
    label = _label(name)
    _check_text_suffix(name)
    if text.startswith("\ufeff"):
        text = text[1:]
    meta: dict = {}
    has_marker = any(_START.match(line.strip()) for line in io.StringIO(text, newline=None))
    in_header = True
    sep: str | None = None
    ncols = 0
    first_line = 0
    cols: list[list[float]] = []
    lines: list[int] = []
    for lineno, raw in enumerate(io.StringIO(text, newline=None), start=1):
        line = raw.strip()
        if in_header:
            if has_marker:
                if _START.match(line):
                    in_header = False
                    continue
            elif line and _first_number(re.split(r"[,\s;]+", line, maxsplit=1)[0]):
                in_header = False
            if in_header:
                pair = _header_pair(line)
                if pair is not None:
                    meta.setdefault(pair[0], pair[1])
                elif line.startswith("#L"):
                    meta.setdefault("columns", line[2:].split())
                elif line[:1].isalpha() and "," in line:
                    meta.setdefault("columns", [c.strip() for c in line.split(",")])  # a CSV header row: r,G
                continue
        if not line:
            continue
        if line.startswith("#"):
            if line[1:2] == "L":
                meta.setdefault("columns", line[2:].split())
            elif line[1:2] == "S" and lines:
                raise ValueError(f"{label} line {lineno}: a second data set ('{line[:20]}') starts here; "
                                 "keep one data set per file")
            continue
        line = line.split("#", 1)[0].strip()  # trailing comment
        if not lines and line[:1].isalpha() and not _first_number(re.split(r"[,\s;]+", line, maxsplit=1)[0]):
            meta.setdefault("columns", [c.strip() for c in re.split(r"[,\s]+", line) if c.strip()])
            continue  # a column-name row before the first data row (e.g. 'r,G' or 'r G' after the marker)
        if sep is None:
            sep = "," if "," in line else ""
        cells = [c.strip() for c in line.split(",")] if sep else line.split()
        if cells and cells[-1] == "" and sep:
            cells = cells[:-1]  # a trailing comma
        try:
            values = [float(c) for c in cells]
        except ValueError:
            shown = line if len(line) <= 60 else line[:57] + "..."
            if not lines:
                after = " after 'start data'" if has_marker else ""
                raise ValueError(f"{label} line {lineno}: expected numbers (r G [dr dG]) in the first data row{after}, "
                                 f"got {shown!r}; remove this line or comment it out with '#'") from None
            raise ValueError(f"{label} line {lineno}: expected numbers (r G [dr dG]) in a data row, got {shown!r}; "
                             "remove this line or comment it out with '#'") from None
        if not lines:
            if len(values) < 2:
                raise ValueError(f"{label} line {lineno}: expected at least two numeric columns (r G), got "
                                 f"{line[:60]!r}; a PDF file needs r and G on every row")
            ncols, first_line = len(values), lineno
            cols = [[] for _ in range(min(ncols, 4))]
        elif len(values) != ncols:
            raise ValueError(f"{label} line {lineno}: has {len(values)} columns but the data starting on line "
                             f"{first_line} have {ncols}; give every row the same columns (r G [dr dG])")
        if max_points is not None and len(lines) >= max_points:
            raise ValueError(f"{label} line {lineno}: more than {max_points} data rows; at most {max_points} "
                             "points are accepted (resample to a coarser r step)")
        for c, v in zip(cols, values, strict=False):
            c.append(v)
        lines.append(lineno)
    if not lines:
        where = "after the '#### start data' line" if has_marker else "(no line starts with a number)"
        raise ValueError(f"{label}: found no data rows {where}; a PDF file needs at least 2 rows of r G")
    dg = None
    if ncols == 3:
        dg = cols[2]
    elif ncols >= 4:
        dg = cols[3]
    try:
        r, g, dga = validate_pdf_arrays(cols[0], cols[1], dg, max_points=max_points, source=label, lines=lines)
    except PDFValueError as exc:
        raise ValueError(exc.message) from None
    return PDFData(r=r, g=g, dg=dga, meta=meta, source=PurePath(str(name).replace("\\", "/")).name)


def parse_pdf_bytes(data: bytes, name: str, *, max_points: int | None = None) -> PDFData:
    """A text PDF file's bytes (an upload, or a file read by :func:`read_pdf_file`) parsed in memory."""
    return parse_pdf_text(decode_pdf_bytes(data, name), name, max_points=max_points)


def _read_h5(path: Path, max_points: int | None) -> PDFData:
    import h5py

    try:
        fh = h5py.File(path, "r")
    except OSError as exc:
        raise ValueError(f"{path}: not a readable HDF5 file ({exc}); expected a seed-oxides .h5") from None
    with fh:
        missing = [k for k in ("r", "pdf") if k not in fh]
        if missing:
            raise ValueError(f"{path}: expected datasets 'r' and 'pdf' (seed-oxides format), missing {missing}")
        for key in ("r", "pdf"):
            if max_points is not None and fh[key].size > max_points:
                raise ValueError(f"{path}: '{key}' has {fh[key].size} points; at most {max_points} are accepted")
        r = np.asarray(fh["r"][()], dtype=np.float64).reshape(-1)
        g = np.asarray(fh["pdf"][()], dtype=np.float64).reshape(-1)
    if r.shape != g.shape:
        raise ValueError(f"{path}: 'r' has {r.size} points but 'pdf' has {g.size}")
    try:
        r, g, _ = validate_pdf_arrays(r, g, max_points=max_points)
    except PDFValueError as exc:
        raise ValueError(f"{path}: dataset '{'pdf' if exc.field == 'g' else exc.field}': {exc.message}") from None
    return PDFData(r=r, g=g, dg=None, meta={}, source=path.name)


MAX_ABS_G = 1e10  # |G| beyond this is no PDF in any unit (Å⁻², counts), and squares overflow float64 in a fit
SPIKE_RATIO = 100.0  # a point this many times larger than every point away from it is not a PDF peak
_SPIKE_GAP = 5  # points either side of the largest that may belong to the same peak
# After scaling to max 1, a real G(r) dips to well above -1 (docs/cli.md, "Input checks"); a minimum below
# -MAX_NEGATIVE_RATIO means the positive side is a rounding error, not a PDF.
MAX_NEGATIVE_RATIO = 100.0


def _where(source: str, k: int) -> str:
    return f"{source} point {k}" if source else f"point {k}"


def check_pdf_values(r, g, source: str) -> None:
    """Finite values a fit can use: no lone spike (:func:`check_spikes`), and no |G| above ``MAX_ABS_G``
    (1e308 overflows every sum of squares). Raises :class:`PDFValueError` ('g')."""
    check_spikes(r, g, source)
    check_magnitude(r, g, source)


def check_magnitude(r, g, source: str = "") -> None:
    """Refuse |G| above ``MAX_ABS_G``: such values overflow float32 once interpolated and scaled, and float64
    in a fit's sum of squares (:class:`PDFValueError` 'g', naming the point)."""
    ga = np.abs(np.asarray(g, dtype=np.float64).reshape(-1))
    if ga.size and ga.max() > MAX_ABS_G:
        k = int(np.argmax(ga))
        raise PDFValueError("g",
                            f"{_where(source, k)}: |G| = {ga[k]:g} at r = {float(np.asarray(r).reshape(-1)[k]):g} Å "
                            f"is beyond {MAX_ABS_G:g}; no PDF is this large in any unit, and such values overflow "
                            "once interpolated and scaled (check the columns: r, then G; or rescale)", k)


def check_spikes(r, g, source: str = "") -> None:
    """Refuse a curve whose largest |G| is a lone spike, more than ``SPIKE_RATIO`` x every value more than
    ``_SPIKE_GAP`` points away (a stray ``2.0 1e12`` row). Every PDF peak is many points wide and the
    first peaks of a real G(r) are within a factor of a few of each other, so one such point is a corrupt
    row; scaled to max 1 it would turn the whole target into a single spike (:class:`PDFValueError` 'g')."""
    g = np.abs(np.asarray(g, dtype=np.float64).reshape(-1))
    if g.size <= 2 * _SPIKE_GAP + 2:
        return
    k = int(np.argmax(g))
    rest = np.concatenate([g[: max(0, k - _SPIKE_GAP)], g[k + _SPIKE_GAP + 1:]])
    other = float(rest.max()) if rest.size else 0.0
    if g[k] > 0 and g[k] > SPIKE_RATIO * other:
        times = f"{g[k] / other:.3g} x every other value" if other > 0 else "nonzero where every other value is 0"
        raise PDFValueError("g",
                            f"{_where(source, k)}: G = {g[k]:g} at r = {float(np.asarray(r).reshape(-1)[k]):g} Å is "
                            f"{times}; a lone spike is a corrupt row, not a PDF peak (remove or fix that row)", k)


def read_pdf_file(path: str | os.PathLike, *, max_points: int | None = None, check: bool = True) -> PDFData:
    """Read a PDF file from disk: text formats through :func:`parse_pdf_bytes`, seed-oxides ``.h5`` directly.

    ``check``: refuse absurd magnitudes and a lone spike (:func:`check_pdf_values`); files on disk come from
    users, and this is the CLI's reader."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such PDF file")
    if path.suffix.lower() in H5_SUFFIXES:
        data = _read_h5(path, max_points)
    else:
        _check_text_suffix(str(path))  # refuse before reading a possibly huge file
        if max_points is not None and path.stat().st_size > 200 * max_points + 100_000:
            raise ValueError(f"{path}: {path.stat().st_size:,} bytes is more than {max_points:,} rows of r G can "
                             "take; resample to a coarser r step")
        data = parse_pdf_bytes(path.read_bytes(), str(path), max_points=max_points)
    if check:
        check_pdf_values(data.r, data.g, str(path))
    return data


def read_pdf(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """(r, G) arrays from a PDF file (:func:`read_pdf_file` without dG and metadata)."""
    data = read_pdf_file(path)
    return data.r, data.g


# --------------------------------------------------------------------------------------------------
# grids
# --------------------------------------------------------------------------------------------------
@dataclass
class GridMapping:
    """:func:`map_to_grid`'s result: G on the grid (float64), whether it was interpolated, one-line warnings."""

    g: np.ndarray
    interpolated: bool
    warnings: list[str]


def map_to_grid(r, g, grid, *, normalize: bool, min_coverage: float = MIN_COVERAGE) -> GridMapping:
    """Put a measured G(r) on a model's r grid -- the one rule of ``pdfusion sample``, ``pdfusion solve``'s
    model candidates and the HTTP API (which only add their error type and, for HTTP, the float32 cast).

    - ``r``, ``g`` are checked by :func:`validate_pdf_arrays`, and |G| above ``MAX_ABS_G`` is refused
      (:func:`check_magnitude`: it would overflow once interpolated and scaled).
    - The data must cover at least ``min_coverage`` (default half) of the grid's range, else
      :class:`PDFValueError` ('r'): fitting a model to a curve it mostly never sees is meaningless.
    - Data on the grid itself (every r within ``R_TOL`` of its grid point) are taken as they are. Otherwise
      G is linearly interpolated, and grid points below the data's first r or above its last r (beyond half
      a grid step) get G = 0, with a warning each: G(r) is ~0 below the first peak and beyond a
      nanoparticle's diameter, and a zero contributes nothing the data did not say. When the data's (median)
      step is coarser than the grid's, a warning says so (the model sees straight lines between the points).
    - On the grid the curve must be usable ('g' errors): not zero everywhere, not a lone spike
      (:func:`check_spikes`), and with ``normalize`` a positive maximum and a most negative value at most
      ``MAX_NEGATIVE_RATIO`` times that maximum (else the positive part is negligible and scaling to max 1,
      as the training PDFs were, blows the curve up to -1e300).
    - ``normalize``: scale to max 1."""
    r, g, _ = validate_pdf_arrays(r, g)
    check_magnitude(r, g)
    grid = np.asarray(grid, dtype=np.float64).reshape(-1)
    if grid.size < 2:
        raise ValueError(f"grid: need at least two points, got {grid.size}")
    step = float(grid[1] - grid[0])
    tol = 0.5 * step
    lo, hi = float(grid[0]), float(grid[-1])
    span = hi - lo
    overlap = max(0.0, min(r[-1], hi) - max(r[0], lo))
    frac = overlap / span if span > 0 else 0.0
    if frac < min_coverage - 1e-12:
        raise PDFValueError(
            "r", f"r covers {r[0]:g}–{r[-1]:g} Å, only {frac:.0%} of the model's {lo:g}–{hi:g} Å "
            f"(at least {min_coverage:.0%} needed); give a PDF computed over a wider r range, e.g. rmax ≥ {hi:g} Å",
        )
    notes: list[str] = []
    same = r.size == grid.size and np.allclose(r, grid, rtol=0, atol=R_TOL)
    if same:
        out = g.copy()
    else:
        out = np.interp(grid, r, g)
        below = grid < r[0] - tol
        above = grid > r[-1] + tol
        out[below | above] = 0.0
        if below.any():
            notes.append(f"data start at r = {r[0]:g} Å, above the model's {lo:g} Å: G set to 0 on "
                         f"{lo:g}–{grid[below][-1]:g} Å")
        if above.any():
            notes.append(f"data end at r = {r[-1]:g} Å, below the model's {hi:g} Å: G set to 0 on "
                         f"{grid[above][0]:g}–{hi:g} Å")
        inside = (r >= lo - tol) & (r <= hi + tol)
        steps = np.diff(r[inside]) if inside.sum() >= 2 else np.diff(r)
        data_step = float(np.median(steps))
        if data_step > step * 1.001:
            notes.append(f"data step {data_step:.4g} Å is coarser than the model's {step:.4g} Å: "
                         "G linearly interpolated between data points")
    if not float(np.abs(out).max()) > 0:
        raise PDFValueError("g", f"is zero everywhere on the model's r range {lo:g}–{hi:g} Å; nothing to fit")
    check_spikes(grid, out)
    if normalize:
        peak = float(out.max())
        if not (peak > 0 and math.isfinite(peak)):
            raise PDFValueError("g", f"has no positive value on the model's r range {lo:g}–{hi:g} Å; cannot scale to "
                                     "max 1 (is this G(r)? check the columns and the sign)")
        ratio = -float(out.min()) / peak
        if ratio > MAX_NEGATIVE_RATIO:
            raise PDFValueError("g", f"its most negative value {float(out.min()):.3g} is {ratio:.3g} times its largest "
                                     f"{peak:.3g}: the positive part is negligible, and scaled to max 1 as the model "
                                     "expects the curve would be noise (a G(r) dips to about -0.5 of its maximum; is "
                                     "this G(r)? check the sign and the columns)")
        out = out / peak
    return GridMapping(out, not same, notes)


def covered(r: np.ndarray, r_target: np.ndarray) -> np.ndarray:
    """Mask of the ``r_target`` points inside the data's range [r[0], r[-1]] (to within ``R_TOL``): where
    :func:`interpolate_pdf` may be asked for a value."""
    r, r_target = np.asarray(r, dtype=np.float64), np.asarray(r_target, dtype=np.float64)
    return (r_target >= r[0] - R_TOL) & (r_target <= r[-1] + R_TOL)


def interpolate_pdf(r: np.ndarray, g: np.ndarray, r_target: np.ndarray) -> np.ndarray:
    """G linearly interpolated onto ``r_target``, for curves compared point by point (a simulated G(r) against
    a stored one): r must be strictly increasing, finite and cover r_target (to within ``R_TOL``); nothing is
    filled in or scaled. A measured PDF goes onto a model's grid with :func:`map_to_grid`."""
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
    if not covered(r, r_target).all():
        raise ValueError(f"r: data cover [{r[0]}, {r[-1]}] but r_target needs [{r_target.min()}, {r_target.max()}]; "
                         "measure to a larger rmax or simulate with a smaller one")
    return np.interp(r_target, r, g)


def _atomic_write_lines(path: Path, head: str, r: np.ndarray, g: np.ndarray, sep: str) -> None:
    r = np.asarray(r, dtype=np.float64).reshape(-1)
    g = np.asarray(g, dtype=np.float64).reshape(-1)
    if r.shape != g.shape:
        raise ValueError(f"g: has {g.size} points but r has {r.size}")
    atomic_write(path, head + "".join(f"{ri:.10g}{sep}{gi:.10g}\n" for ri, gi in zip(r, g, strict=True)))


def write_pdf_csv(path: str | os.PathLike, r: np.ndarray, g: np.ndarray) -> None:
    """Write 'r,G' CSV atomically (``pdfusion.io_utils.atomic_write``)."""
    _atomic_write_lines(Path(path), "r,G\n", r, g, ",")


def write_pdf_gr(path: str | os.PathLike, r: np.ndarray, g: np.ndarray, header: dict | None = None) -> None:
    """Write a PDFgui / PDFgetX3-style ``.gr``: ``key = value`` header lines (the parameters that made the
    curve, which :func:`read_pdf_file` returns as ``meta``), ``#### start data``, ``#L r G``, two columns."""
    lines = ["[DEFAULT]"]
    for key, value in (header or {}).items():
        text = " ".join(str(value).split())
        if not _KEY.match(str(key)) or "=" in text:
            raise ValueError(f"header: {key!r} = {value!r} cannot be written as a 'key = value' line")
        lines.append(f"{key} = {text}")
    lines += ["", "#### start data", "#S 1", "#L r G"]
    _atomic_write_lines(Path(path), "\n".join(lines) + "\n", r, g, " ")


def write_pdf(path: str | os.PathLike, r: np.ndarray, g: np.ndarray, header: dict | None = None) -> None:
    """Write G(r) in the format the suffix names: ``.gr`` (:func:`write_pdf_gr`) or ``.csv``."""
    suffix = Path(path).suffix.lower()
    if suffix == ".gr":
        write_pdf_gr(path, r, g, header)
    elif suffix == ".csv":
        write_pdf_csv(path, r, g)
    else:
        raise ValueError(f"{path}: cannot write G(r) as {suffix or '(no suffix)'!r}; name the file .gr or .csv")
