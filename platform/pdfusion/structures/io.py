"""Read and write atomic structures: XYZ, extended XYZ, CIF and seed-oxides ``.h5`` files.

Every reader returns a :class:`~pdfusion.structures.particle.Particle`; malformed input raises
``ValueError`` naming the file and the line (text formats) or key (HDF5) and what was expected, because
these files come from users and from other codes. Writers are atomic (``pdfusion.io_utils``) so an
interrupted write never leaves a half file under the final name.

* XYZ / extended XYZ are parsed here (a few lines) rather than through ASE so errors can name the line;
  the extended-XYZ comment line is parsed with ASE's ``key_val_str_to_dict``. Coordinates are written with
  ``repr`` precision, so an XYZ round trip is bit-exact.
* CIF goes through pymatgen. A periodic crystal is returned as its unit-cell atoms (as listed in the file,
  symmetry-expanded) in Cartesian Å with ``meta['lattice']`` (3x3 rows, Å). A finite particle written to
  CIF is placed in a vacuum box (its extent + 10 Å) with its centroid at the box centre, so reading it
  back gives the same structure up to a translation (CIF stores 8-digit fractions: ~1e-6 Å).
  ``meta['periodic']`` tells the two apart (:func:`is_periodic`): True when atoms of neighbouring cells
  touch, i.e. the file is a crystal whose unit cell is not a particle (``pdfusion pdf`` refuses it
  unless told to cut a particle with ``--radius``).
* Seed-oxides ``.h5`` (see ``shared/data/seed-oxides/README.md``): :func:`read_seed_h5` returns a
  :class:`SeedRecord` with the node features, PDF and graph as stored, and metadata parsed from the
  file name; :func:`write_seed_h5` writes the same layout.
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pdfusion.io_utils import atomic_path, atomic_write
from pdfusion.limits import MAX_COORDINATE
from pdfusion.structures.particle import Particle

FORMATS = ("xyz", "extxyz", "cif", "h5")
_EXT = {".xyz": "xyz", ".extxyz": "extxyz", ".exyz": "extxyz", ".cif": "cif", ".h5": "h5", ".hdf5": "h5"}
SEED_KEYS = ("node_attributes", "edge_indices", "edge_attributes", "r", "pdf")
_SEED_NAME = re.compile(r"^(?:graph_)?(?P<type>[A-Za-z0-9]+)_(?P<formula>[A-Za-z0-9]+?)"
                        r"(?:_r(?P<radius>\d+(?:\.\d+)?))?\.h5$")
_CIF_PAD = 10.0  # vacuum (Å) around a finite particle written to CIF


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------
def _fmt_of(path: Path, fmt: str | None) -> str:
    if fmt is not None:
        if fmt not in FORMATS:
            raise ValueError(f"{path}: unknown format {fmt!r}; choose one of {FORMATS}")
        return fmt
    ext = path.suffix.lower()
    if ext not in _EXT:
        raise ValueError(f"{path}: cannot tell the format (of a structure) from the suffix {ext or '(none)'!r}; "
                         f"name the file with one of {' '.join(sorted(_EXT))}")
    return _EXT[ext]


def _symbol_to_z(sym: str, where: str) -> int:
    from pymatgen.core import Element

    s = sym.strip()
    if s.isdigit():
        return int(s)
    try:
        return int(Element(s[:1].upper() + s[1:].lower()).Z)
    except ValueError:
        raise ValueError(f"{where}: unknown element symbol {sym!r}") from None


def _z_to_symbol(z: int) -> str:
    from pymatgen.core import Element

    return Element.from_Z(int(z)).symbol


# --------------------------------------------------------------------------------------------------
# XYZ / extended XYZ
# --------------------------------------------------------------------------------------------------
def _parse_properties(spec: str, where: str) -> tuple[int, int, int]:
    """Column of the species, column of pos[0], and total column count from an extxyz Properties string."""
    parts = spec.split(":")
    if len(parts) % 3:
        raise ValueError(f"{where}: Properties={spec!r} must be name:type:count triples")
    col, species_col, pos_col = 0, None, None
    for name, _typ, count in zip(parts[0::3], parts[1::3], parts[2::3], strict=True):
        if not count.isdigit():
            raise ValueError(f"{where}: Properties={spec!r} has a non-integer count {count!r}")
        if name == "species":
            species_col = col
        elif name == "pos":
            pos_col = col
        col += int(count)
    if species_col is None or pos_col is None:
        raise ValueError(f"{where}: Properties={spec!r} needs both 'species' and 'pos' columns")
    return species_col, pos_col, col


def _parse_comment(comment: str, where: str) -> tuple[dict[str, Any], tuple[int, int, int]]:
    """Extended-XYZ key=value comment line -> (meta, column layout); a plain comment becomes meta['comment']."""
    if "=" not in comment:
        return ({"comment": comment.strip()} if comment.strip() else {}), (0, 1, 4)
    from ase.io.extxyz import key_val_str_to_dict

    try:
        kv = key_val_str_to_dict(comment)
    except Exception as exc:  # ASE raises several types on a malformed line
        raise ValueError(f"{where}: malformed extended-XYZ comment line ({exc})") from None
    layout = _parse_properties(str(kv.pop("Properties", "species:S:1:pos:R:3")), where)
    meta: dict[str, Any] = {}
    for key, val in kv.items():
        if key == "Lattice":
            lat = np.asarray(val, dtype=np.float64).reshape(3, 3)
            meta["lattice"] = lat.tolist()
        elif key == "pbc":
            continue
        elif isinstance(val, np.ndarray):
            meta[key] = val.tolist()
        elif isinstance(val, np.generic):
            meta[key] = val.item()
        else:
            meta[key] = val
    return meta, layout


def _xyz_text(path: Path) -> str:
    """The file's text, or a ValueError naming the file when it is not text (a binary file renamed .xyz)."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        if b"\x00" in data:
            raise ValueError(f"{path}: is a binary file, not XYZ text (byte {exc.start}); give an XYZ text "
                             "file") from None
        return data.decode("latin-1")


def xyz_atom_count(path: str | Path) -> int | None:
    """The atom count on the first line of an XYZ / extended XYZ file (None for other formats or when the
    line is not a count): lets a caller refuse a huge file before reading it."""
    path = Path(path)
    if _EXT.get(path.suffix.lower()) not in ("xyz", "extxyz"):
        return None
    with open(path, "rb") as fh:
        head = fh.readline(64)
    try:
        return int(head.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        return None


def _read_xyz_frames(path: Path) -> list[Particle]:
    lines = _xyz_text(path).splitlines()
    frames: list[Particle] = []
    i = 0
    while i < len(lines):
        if not lines[i].strip():  # trailing blank lines
            i += 1
            continue
        head = lines[i].strip()
        try:
            n = int(head)
        except ValueError:
            raise ValueError(f"{path}:{i + 1}: expected the atom count (an integer) on this line, got "
                             f"{head!r}") from None
        if n < 0:
            raise ValueError(f"{path}:{i + 1}: atom count must be >= 0, got {n}")
        if i + 1 >= len(lines):
            raise ValueError(f"{path}:{i + 2}: expected a comment line after the atom count, found end of file")
        meta, (s_col, p_col, ncol) = _parse_comment(lines[i + 1], f"{path}:{i + 2}")
        if i + 2 + n > len(lines):
            raise ValueError(
                f"{path}:{len(lines) + 1}: atom count line {i + 1} says {n} atoms but the file ends after "
                f"{len(lines) - i - 2} atom lines"
            )
        numbers = np.empty(n, dtype=np.int64)
        pos = np.empty((n, 3), dtype=np.float64)
        for k in range(n):
            ln = i + 2 + k
            tok = lines[ln].split()
            where = f"{path}:{ln + 1}"
            if len(tok) < max(ncol, p_col + 3, s_col + 1):
                raise ValueError(f"{where}: expected {max(ncol, 4)} columns (element x y z), got {len(tok)}: "
                                 f"{lines[ln]!r}")
            numbers[k] = _symbol_to_z(tok[s_col], where)
            for d in range(3):
                try:
                    pos[k, d] = float(tok[p_col + d])
                except ValueError:
                    raise ValueError(f"{where}: column {p_col + d + 1} must be a float coordinate, got "
                                     f"{tok[p_col + d]!r}") from None
                if not abs(pos[k, d]) <= MAX_COORDINATE:
                    raise ValueError(f"{where}: coordinate {tok[p_col + d]} is not within ±{MAX_COORDINATE:g} Å "
                                     "(NaN, inf or absurd; coordinates are in Å)")
        if not np.all(np.isfinite(pos)):
            raise ValueError(f"{path}: frame at line {i + 1} has non-finite coordinates")
        meta.setdefault("source", path.name)
        frames.append(Particle(numbers, pos, meta))
        i += 2 + n
    if not frames:
        raise ValueError(f"{path}:1: empty file; expected an atom count line")
    return frames


def _meta_for_extxyz(meta: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, val in meta.items():
        if key in ("lattice", "Properties", "pbc") or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(key)):
            continue
        if val is None:
            continue
        if isinstance(val, bool | int | float | str) or (isinstance(val, list)
                                                         and all(isinstance(v, int | float) for v in val)):
            out[key] = val
        else:
            out[key] = json.dumps(val, sort_keys=True)
    return out


def xyz_text(numbers, positions, comment: str = "") -> str:
    """Plain XYZ text: the atom count, ``comment`` on one line, then ``symbol x y z`` (Å) at ``repr``
    precision, so reading it back is bit-exact. The one XYZ writer: structure files, ``Candidate.to_xyz``,
    the HTTP answers."""
    lines = [str(len(numbers)), str(comment).replace("\n", " ")]
    lines += [f"{_z_to_symbol(z)} {float(x)!r} {float(y)!r} {float(w)!r}"
              for z, (x, y, w) in zip(numbers, positions, strict=True)]
    return "\n".join(lines) + "\n"


def _write_xyz_text(p: Particle, extended: bool) -> str:
    if extended:
        from ase.io.extxyz import key_val_dict_to_str

        kv: dict[str, Any] = {}
        if "lattice" in p.meta:
            kv["Lattice"] = np.asarray(p.meta["lattice"], dtype=np.float64).reshape(9).tolist()
            kv["pbc"] = "T T T"
        else:
            kv["pbc"] = "F F F"
        kv["Properties"] = "species:S:1:pos:R:3"
        kv.update(_meta_for_extxyz(p.meta))
        if "Lattice" in kv:
            kv["Lattice"] = " ".join(repr(float(v)) for v in kv["Lattice"])
        comment = key_val_dict_to_str(kv)
    else:
        comment = str(p.meta.get("comment", p.meta.get("formula", "")))
    return xyz_text(p.numbers, p.positions, comment)


# --------------------------------------------------------------------------------------------------
# CIF
# --------------------------------------------------------------------------------------------------
def _read_cif(path: Path) -> Particle:
    from pymatgen.io.cif import CifParser

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            structures = CifParser(str(path)).parse_structures(primitive=False)
    except Exception as exc:
        raise ValueError(f"{path}: not a readable CIF ({exc}); expected a data_ block with _cell_* and _atom_site_* "
                         "loops") from None
    if not structures:
        raise ValueError(f"{path}: no structure found; expected a data_ block with _cell_* and _atom_site_* loops")
    s = structures[0]
    if not s.is_ordered:
        raise ValueError(f"{path}: partially occupied sites are not supported; give an ordered structure")
    numbers = np.array([site.specie.Z for site in s], dtype=np.int64)
    meta = {"lattice": s.lattice.matrix.tolist(), "source": path.name, "formula": s.composition.reduced_formula}
    particle = Particle(numbers, np.array(s.cart_coords, dtype=np.float64), meta)
    particle.meta["periodic"] = is_periodic(particle)
    return particle


PERIODIC_GAP = 5.0  # Å: atoms of neighbouring cells closer than this (or 1.5 x the bond length) = a crystal


def is_periodic(particle: Particle, gap: float = PERIODIC_GAP) -> bool:
    """Whether ``particle`` (with ``meta['lattice']``) is a periodic crystal rather than a finite particle in a
    vacuum box: True when an atom is closer than max(``gap``, 1.5 x the median nearest-neighbour distance
    within the listed atoms) to an atom of a neighbouring cell, or when the cell holds a single atom.
    False without a lattice. Exact for any cell shape (pymatgen's periodic neighbour list)."""
    lattice = particle.meta.get("lattice")
    if lattice is None:
        return False
    if len(particle) < 2:
        return True
    from pymatgen.core import Lattice, Structure
    from scipy.spatial import cKDTree

    pos = np.asarray(particle.positions, dtype=np.float64)
    d_nn = float(np.median(cKDTree(pos).query(pos, k=2)[0][:, 1]))
    cutoff = max(float(gap), 1.5 * d_nn)
    s = Structure(Lattice(np.asarray(lattice, dtype=np.float64).reshape(3, 3)), particle.numbers.tolist(), pos,
                  coords_are_cartesian=True)
    _, _, images, dist = s.get_neighbor_list(cutoff)
    cross = np.any(images != 0, axis=1) & (dist > 1e-8)
    return bool(cross.any())


def _write_cif_text(p: Particle) -> str:
    from pymatgen.core import Lattice, Structure
    from pymatgen.io.cif import CifWriter

    if "lattice" in p.meta:
        lattice = Lattice(np.asarray(p.meta["lattice"], dtype=np.float64).reshape(3, 3))
        pos = p.positions
    else:  # finite particle: a vacuum box centred on the centroid
        extent = p.positions.max(axis=0) - p.positions.min(axis=0) if len(p) else np.zeros(3)
        box = extent + _CIF_PAD
        lattice = Lattice.from_parameters(*box, 90, 90, 90)
        pos = p.positions - (p.positions.mean(axis=0) if len(p) else 0) + box / 2
    species = [_z_to_symbol(z) for z in p.numbers]
    s = Structure(lattice, species, pos, coords_are_cartesian=True)
    return str(CifWriter(s))


# --------------------------------------------------------------------------------------------------
# seed-oxides .h5
# --------------------------------------------------------------------------------------------------
@dataclass
class SeedRecord:
    """One seed-oxides file: the particle (Z from column 0, xyz from columns 4:7) and everything stored."""

    particle: Particle
    node_attributes: np.ndarray  # (N, 7) float64: Z, atomic radius pm, density g/cm3, electron affinity eV, x, y, z
    r: np.ndarray  # (n_r,)
    pdf: np.ndarray  # (n_r,)
    edge_index: np.ndarray  # (2, E) int64
    edge_attr: np.ndarray  # (E,) float64 bond lengths
    meta: dict[str, Any] = field(default_factory=dict)


def parse_seed_name(name: str) -> dict[str, Any]:
    """``graph_<Type>_<Formula>_r<R>.h5`` or ``<Type>_<Formula>.h5`` -> structure_type, formula, radius, source."""
    m = _SEED_NAME.match(name)
    if m is None:
        raise ValueError(
            f"{name}: file name does not follow the seed-oxides pattern "
            "'graph_<Type>_<Formula>_r<R>.h5' or '<Type>_<Formula>.h5'"
        )
    radius = m.group("radius")
    return {
        "structure_type": m.group("type"),
        "formula": m.group("formula"),
        "radius": float(radius) if radius is not None else None,
        "source": name,
    }


def _seed_array(h5, key: str, path: Path, ndim: int, dtype=None) -> np.ndarray:
    if key not in h5:
        raise ValueError(f"{path}: missing key {key!r}; a seed-oxides file needs {list(SEED_KEYS)}")
    arr = h5[key][()]
    if not isinstance(arr, np.ndarray) or arr.ndim != ndim:
        shape = getattr(arr, "shape", ())
        raise ValueError(f"{path}: key {key!r} must be a {ndim}-D array, got shape {shape}")
    if dtype is not None:
        arr = arr.astype(dtype, copy=False)
    return arr


def read_seed_h5(path: str | Path) -> SeedRecord:
    """Read one seed-oxides ``.h5`` file, validating keys and shapes; metadata from the file name."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        h5 = h5py.File(path, "r")
    except OSError as exc:
        raise ValueError(f"{path}: not a readable HDF5 file ({exc})") from None
    with h5:
        na = _seed_array(h5, "node_attributes", path, 2)
        r = _seed_array(h5, "r", path, 1)
        pdf = _seed_array(h5, "pdf", path, 1)
        ei = _seed_array(h5, "edge_indices", path, 2)
        ea = _seed_array(h5, "edge_attributes", path, 1)
    if na.shape[1] != 7:
        raise ValueError(f"{path}: key 'node_attributes' must have shape (N, 7), got {na.shape}")
    if r.shape != pdf.shape:
        raise ValueError(f"{path}: keys 'r' {r.shape} and 'pdf' {pdf.shape} must have the same length")
    if ei.shape[0] != 2 or ei.shape[1] != ea.shape[0]:
        raise ValueError(f"{path}: key 'edge_indices' must be (2, E) with E = len(edge_attributes), got {ei.shape} and "
                         f"{ea.shape}")
    if not np.all(np.isfinite(na)) or not np.all(np.isfinite(pdf)) or not np.all(np.isfinite(r)):
        raise ValueError(f"{path}: 'node_attributes', 'r' or 'pdf' contains NaN or inf")
    z = na[:, 0]
    if not np.array_equal(z, np.round(z)):
        raise ValueError(f"{path}: key 'node_attributes' column 0 must hold integer atomic numbers")
    try:
        meta = parse_seed_name(path.name)
    except ValueError:
        meta = {"structure_type": None, "formula": None, "radius": None, "source": path.name}
    particle = Particle(z.astype(np.int64), na[:, 4:7].copy(), dict(meta))
    if meta["formula"] is None:
        meta["formula"] = particle.formula
    try:
        meta["metal"] = _z_to_symbol(particle.metal)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    particle.meta = dict(meta)
    return SeedRecord(particle, na, r, pdf, ei.astype(np.int64, copy=False), ea, meta)


def write_seed_h5(record: SeedRecord, path: str | Path) -> None:
    """Write a :class:`SeedRecord` in the seed-oxides layout (atomically), e.g. for tools that read that format."""
    import h5py

    na = np.asarray(record.node_attributes, dtype=np.float64)
    # a leftover temp file ends in .tmp, not .h5: it is never read as one more file of a seed folder
    with atomic_path(path, suffix=".tmp") as tmp:
        with h5py.File(tmp, "w") as h5:
            h5["node_attributes"] = na
            h5["atomic_number"] = na[:, 0]
            h5["atomic_radius"] = na[:, 1]
            h5["density"] = na[:, 2]
            h5["electron_affinity"] = na[:, 3]
            h5["edge_indices"] = np.asarray(record.edge_index, dtype=np.int64).reshape(2, -1)
            h5["edge_attributes"] = np.asarray(record.edge_attr, dtype=np.float64)
            h5["r"] = np.asarray(record.r)
            h5["pdf"] = np.asarray(record.pdf)


# --------------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------------
def read_structures(path: str | Path, fmt: str | None = None) -> list[Particle]:
    """All frames of a (multi-frame) XYZ file; a one-element list for CIF and seed ``.h5``."""
    path = Path(path)
    kind = _fmt_of(path, fmt)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if kind in ("xyz", "extxyz"):
        return _read_xyz_frames(path)
    if kind == "cif":
        return [_read_cif(path)]
    return [read_seed_h5(path).particle]


def read_structure(path: str | Path, fmt: str | None = None) -> Particle:
    """Read one structure from XYZ, extended XYZ, CIF or seed-oxides ``.h5`` (format from the extension)."""
    frames = read_structures(path, fmt)
    if len(frames) != 1:
        raise ValueError(f"{path}: contains {len(frames)} frames (structures); one is expected here -- "
                         "split the file into one structure per file")
    return frames[0]


def write_structure(particle: Particle, path: str | Path, fmt: str | None = None) -> Path:
    """Write ``particle`` as xyz / extxyz / cif (format from ``fmt`` or the extension), atomically."""
    path = Path(path)
    kind = _fmt_of(path, fmt)
    if kind == "h5":
        raise ValueError(f"{path}: structures are written as .xyz, .extxyz or .cif; .h5 is the seed-oxides "
                         "dataset layout (pdfusion.structures.io.write_seed_h5), not a structure file")
    if kind == "cif":
        text = _write_cif_text(particle)
    else:
        text = _write_xyz_text(particle, extended=kind == "extxyz")
    atomic_write(path, text)
    return path
