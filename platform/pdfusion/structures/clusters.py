"""Metal nanoparticle prototypes: bulk-cut fcc / hcp / bcc spheres and the classic cluster motifs
(icosahedra, Ino and Marks decahedra, cuboctahedra, octahedra, truncated octahedra) for any metal.

Sphere cuts are made here from the bulk lattice (an atom at the centre, every atom within ``radius``
kept). The polyhedral motifs come from :mod:`ase.cluster` (imported lazily), whose ``latticeconstant``
is the fcc cube edge ``a`` (nearest-neighbour distance ``a / sqrt(2)``). Every builder returns a
:class:`~pdfusion.structures.particle.Particle` centred on its centroid with ``meta`` holding
``structure_type``, ``family`` ("metal"), ``metal``, ``formula``, ``radius`` (largest atom distance from
the centroid, Å), ``diameter`` (2 x radius), ``lattice_params`` ({"a"[, "c"]}) and the motif's size
parameters.

Lattice constants: :data:`KNOWN_METALS` (room-temperature bulk values) for the common metals, else ASE's
reference state, else an fcc cell with the nearest-neighbour distance 2 x the metallic radius. A motif
whose lattice differs from the metal's own (an fcc icosahedron of bcc Fe, an hcp sphere of Pt) keeps the
metal's nearest-neighbour distance; the PDF fit's isotropic expansion then adjusts the size.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from pdfusion.structures.particle import Particle
from pdfusion.structures.prototypes import element_symbol

__all__ = [
    "CLUSTER_TYPES", "KNOWN_METALS", "MetalLattice", "bulk_sphere", "cluster_series", "cuboctahedron",
    "decahedron", "icosahedron", "make_cluster", "metal_lattice", "octahedron", "truncated_octahedron",
]

SQRT2 = math.sqrt(2.0)
IDEAL_C_OVER_A = math.sqrt(8.0 / 3.0)

# structure_type -> short description (the order is the library's order)
CLUSTER_TYPES: dict[str, str] = {
    "fcc_sphere": "sphere cut from the fcc lattice",
    "hcp_sphere": "sphere cut from the hcp lattice",
    "bcc_sphere": "sphere cut from the bcc lattice",
    "icosahedron": "Mackay icosahedron (ase.cluster.Icosahedron)",
    "ino_decahedron": "Ino decahedron, no re-entrance (ase.cluster.Decahedron r=0)",
    "marks_decahedron": "Marks decahedron, re-entrant grooves (ase.cluster.Decahedron r>=1)",
    "cuboctahedron": "cuboctahedron (ase.cluster.Octahedron, length = 2 cutoff + 1)",
    "octahedron": "regular octahedron (ase.cluster.Octahedron, cutoff 0)",
    "truncated_octahedron": "regular truncated octahedron (ase.cluster.Octahedron, length = 3 cutoff + 1)",
}


@dataclass(frozen=True)
class MetalLattice:
    """A metal's bulk lattice: symmetry ('fcc' | 'bcc' | 'hcp'), a (Å), c (Å, hcp only)."""

    symmetry: str
    a: float
    c: float | None = None

    @property
    def nn_distance(self) -> float:
        """Nearest-neighbour distance (Å)."""
        if self.symmetry == "fcc":
            return self.a / SQRT2
        if self.symmetry == "bcc":
            return self.a * math.sqrt(3.0) / 2.0
        c = self.c if self.c is not None else self.a * IDEAL_C_OVER_A  # hcp: in-plane or between layers
        return min(self.a, math.sqrt(self.a**2 / 3 + c**2 / 4))


# Room-temperature bulk lattice constants (Å; CRC / Wyckoff values). Pt 3.92, Au 4.08, Ni 3.524 fcc.
KNOWN_METALS: dict[str, MetalLattice] = {
    "Pt": MetalLattice("fcc", 3.9242), "Au": MetalLattice("fcc", 4.0782), "Ag": MetalLattice("fcc", 4.0853),
    "Pd": MetalLattice("fcc", 3.8907), "Ni": MetalLattice("fcc", 3.5240), "Cu": MetalLattice("fcc", 3.6149),
    "Ir": MetalLattice("fcc", 3.8390), "Rh": MetalLattice("fcc", 3.8034), "Al": MetalLattice("fcc", 4.0495),
    "Pb": MetalLattice("fcc", 4.9508), "Fe": MetalLattice("bcc", 2.8665), "Cr": MetalLattice("bcc", 2.8846),
    "Mo": MetalLattice("bcc", 3.1470), "W": MetalLattice("bcc", 3.1652), "V": MetalLattice("bcc", 3.0240),
    "Nb": MetalLattice("bcc", 3.3004), "Ta": MetalLattice("bcc", 3.3013),
    "Co": MetalLattice("hcp", 2.5071, 4.0695), "Ru": MetalLattice("hcp", 2.7059, 4.2815),
    "Os": MetalLattice("hcp", 2.7344, 4.3173), "Ti": MetalLattice("hcp", 2.9508, 4.6855),
    "Zn": MetalLattice("hcp", 2.6649, 4.9468), "Mg": MetalLattice("hcp", 3.2094, 5.2108),
}  # fmt: skip


def metal_lattice(metal: str | int) -> MetalLattice:
    """The bulk lattice of ``metal``: :data:`KNOWN_METALS`, else ASE's reference state (fcc/bcc/hcp only),
    else fcc with a nearest-neighbour distance of twice pymatgen's metallic (or atomic) radius."""
    sym = element_symbol(metal)
    if sym in KNOWN_METALS:
        return KNOWN_METALS[sym]
    try:
        from ase.data import atomic_numbers, reference_states

        ref = reference_states[atomic_numbers[sym]] or {}
    except ImportError:  # pragma: no cover - ase is a dependency
        ref = {}
    sym_kind = ref.get("symmetry")
    if sym_kind in ("fcc", "bcc") and ref.get("a"):
        return MetalLattice(sym_kind, float(ref["a"]))
    if sym_kind == "hcp" and ref.get("a"):
        return MetalLattice("hcp", float(ref["a"]), float(ref["a"]) * float(ref.get("c/a", IDEAL_C_OVER_A)))
    from pymatgen.core import Element

    el = Element(sym)
    radius = el.metallic_radius or el.atomic_radius
    if radius is None:
        raise ValueError(f"metal: no lattice constant known for {sym}; pass a=... explicitly")
    return MetalLattice("fcc", 2.0 * float(radius) * SQRT2)


def _lattice_for(kind: str, metal: str, a: float | None, c: float | None) -> MetalLattice:
    """The lattice a motif of ``kind`` ('fcc' | 'bcc' | 'hcp') is built on: the user's a (and c), else the
    metal's own lattice if it has this symmetry, else one with the metal's nearest-neighbour distance."""
    if a is not None:
        if not (math.isfinite(a) and a > 0):
            raise ValueError(f"a: lattice constant must be a positive number of Å, got {a!r}")
        if kind == "hcp":
            return MetalLattice("hcp", float(a), float(c) if c is not None else float(a) * IDEAL_C_OVER_A)
        return MetalLattice(kind, float(a))
    own = metal_lattice(metal)
    if own.symmetry == kind:
        return own
    d = own.nn_distance
    if kind == "fcc":
        return MetalLattice("fcc", d * SQRT2)
    if kind == "bcc":
        return MetalLattice("bcc", 2.0 * d / math.sqrt(3.0))
    return MetalLattice("hcp", d, d * IDEAL_C_OVER_A)


def _finish(positions: np.ndarray, metal: str, structure_type: str, lattice: MetalLattice, **extra) -> Particle:
    from pymatgen.core import Element

    pos = np.asarray(positions, dtype=np.float64)
    pos = pos - pos.mean(axis=0)
    radius = float(np.linalg.norm(pos, axis=1).max()) if len(pos) else 0.0
    lat = {"a": round(lattice.a, 6)}
    if lattice.c is not None:
        lat["c"] = round(lattice.c, 6)
    meta = {
        "structure_type": structure_type, "family": "metal", "metal": metal, "formula": metal,
        "radius": round(radius, 4), "diameter": round(2 * radius, 4), "lattice_params": lat,
        "nn_distance": round(lattice.nn_distance, 6), **extra,
    }
    return Particle(np.full(len(pos), Element(metal).Z, dtype=np.int64), pos, meta)


# --------------------------------------------------------------------------------------------------
# bulk-cut spheres
# --------------------------------------------------------------------------------------------------
def _cell_and_basis(lat: MetalLattice) -> tuple[np.ndarray, np.ndarray]:
    a = lat.a
    if lat.symmetry == "fcc":
        return np.eye(3) * a, np.array([[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]], dtype=float)
    if lat.symmetry == "bcc":
        return np.eye(3) * a, np.array([[0, 0, 0], [0.5, 0.5, 0.5]], dtype=float)
    c = lat.c if lat.c is not None else a * IDEAL_C_OVER_A
    cell = np.array([[a, 0, 0], [-a / 2, a * math.sqrt(3) / 2, 0], [0, 0, c]])
    return cell, np.array([[0, 0, 0], [1 / 3, 2 / 3, 0.5]], dtype=float)


def bulk_sphere(metal: str | int, radius: float, lattice: str | None = None, *, a: float | None = None,
                c: float | None = None) -> Particle:
    """Every atom within ``radius`` Å of a lattice atom of the bulk ``lattice`` ('fcc' | 'hcp' | 'bcc';
    default the metal's own), structure_type ``{lattice}_sphere``."""
    sym = element_symbol(metal)
    if not (isinstance(radius, (int, float, np.integer, np.floating)) and math.isfinite(radius) and radius > 0):
        raise ValueError(f"radius: must be a positive number of Å, got {radius!r}")
    kind = lattice or metal_lattice(sym).symmetry
    if kind not in ("fcc", "hcp", "bcc"):
        raise ValueError(f"lattice: expected 'fcc', 'hcp' or 'bcc', got {lattice!r}")
    lat = _lattice_for(kind, sym, a, c)
    cell, basis = _cell_and_basis(lat)
    heights = [abs(np.linalg.det(cell)) / np.linalg.norm(np.cross(cell[(i + 1) % 3], cell[(i + 2) % 3]))
               for i in range(3)]
    n = [int(math.ceil(radius / h)) + 1 for h in heights]
    grid = np.stack(np.meshgrid(*[np.arange(-k, k + 1) for k in n], indexing="ij"), -1).reshape(-1, 3)
    pos = ((grid[:, None, :] + basis[None, :, :]).reshape(-1, 3)) @ cell
    pos = pos[np.linalg.norm(pos, axis=1) <= radius + 1e-6]
    if len(pos) < 2:
        raise ValueError(f"radius: {radius} Å holds fewer than two {sym} atoms; use a larger radius")
    return _finish(pos, sym, f"{kind}_sphere", lat, cut_radius=float(radius))


# --------------------------------------------------------------------------------------------------
# ase.cluster motifs (all on the fcc lattice)
# --------------------------------------------------------------------------------------------------
def _ase_positions(atoms) -> np.ndarray:
    return np.asarray(atoms.get_positions(), dtype=np.float64)


def _positive_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return int(value)


def icosahedron(metal: str | int, shells: int, *, a: float | None = None) -> Particle:
    """Mackay icosahedron with ``shells`` shells (13, 55, 147, 309 ... atoms for 2, 3, 4, 5)."""
    from ase.cluster import Icosahedron

    sym = element_symbol(metal)
    shells = _positive_int("shells", shells, 1)
    lat = _lattice_for("fcc", sym, a, None)
    return _finish(_ase_positions(Icosahedron(sym, shells, latticeconstant=lat.a)), sym, "icosahedron", lat,
                   shells=shells)


def decahedron(metal: str | int, p: int, q: int, r: int = 0, *, a: float | None = None) -> Particle:
    """Decahedron (ase.cluster.Decahedron): ``p`` atoms along the (100) facet edge normal to the 5-fold
    axis, ``q`` along it, ``r`` the Marks re-entrance depth; r = 0 is an Ino decahedron, r >= 1 Marks."""
    from ase.cluster import Decahedron

    sym = element_symbol(metal)
    p, q, r = _positive_int("p", p, 1), _positive_int("q", q, 1), _positive_int("r", r, 0)
    lat = _lattice_for("fcc", sym, a, None)
    kind = "marks_decahedron" if r > 0 else "ino_decahedron"
    return _finish(_ase_positions(Decahedron(sym, p, q, r, latticeconstant=lat.a)), sym, kind, lat, p=p, q=q, r=r)


def _octahedron(metal, length: int, cutoff: int, kind: str, a: float | None) -> Particle:
    from ase.cluster import Octahedron

    sym = element_symbol(metal)
    lat = _lattice_for("fcc", sym, a, None)
    atoms = Octahedron(sym, length, cutoff, latticeconstant=lat.a)
    return _finish(_ase_positions(atoms), sym, kind, lat, length=length, cutoff=cutoff)


def cuboctahedron(metal: str | int, shells: int, *, a: float | None = None) -> Particle:
    """Cuboctahedron with ``shells`` shells around a central atom (13, 55, 147 atoms for 2, 3, 4)."""
    shells = _positive_int("shells", shells, 2)
    return _octahedron(metal, 2 * shells - 1, shells - 1, "cuboctahedron", a)


def octahedron(metal: str | int, length: int, *, a: float | None = None) -> Particle:
    """Regular octahedron with ``length`` atoms along each edge (19, 44, 85 ... for 3, 4, 5)."""
    return _octahedron(metal, _positive_int("length", length, 2), 0, "octahedron", a)


def truncated_octahedron(metal: str | int, cutoff: int, *, a: float | None = None) -> Particle:
    """Regular truncated octahedron (edge length 3 cutoff + 1, ``cutoff`` layers cut at each vertex;
    38, 201, 586 atoms for 1, 2, 3)."""
    cutoff = _positive_int("cutoff", cutoff, 1)
    return _octahedron(metal, 3 * cutoff + 1, cutoff, "truncated_octahedron", a)


def make_cluster(structure_type: str, metal: str | int, size: float | int | Sequence[int], *,
                 a: float | None = None) -> Particle:
    """One metal particle of ``structure_type`` (a key of :data:`CLUSTER_TYPES`). ``size``: the radius (Å)
    for spheres; shells (icosahedron, cuboctahedron); edge length (octahedron); cutoff (truncated
    octahedron); (p, q, r) for decahedra."""
    kind = str(structure_type).lower()
    if kind in ("fcc_sphere", "hcp_sphere", "bcc_sphere"):
        return bulk_sphere(metal, float(size), kind.split("_")[0], a=a)
    if kind == "icosahedron":
        return icosahedron(metal, int(size), a=a)
    if kind == "cuboctahedron":
        return cuboctahedron(metal, int(size), a=a)
    if kind == "octahedron":
        return octahedron(metal, int(size), a=a)
    if kind == "truncated_octahedron":
        return truncated_octahedron(metal, int(size), a=a)
    if kind in ("ino_decahedron", "marks_decahedron"):
        if isinstance(size, (int, np.integer)):
            p, q, r = int(size), int(size), 0 if kind == "ino_decahedron" else 1
        else:
            p, q, r = (list(size) + [0, 0])[:3]
        if (kind == "marks_decahedron") != (r > 0):
            raise ValueError(f"size: {kind} needs r {'>= 1' if kind == 'marks_decahedron' else '= 0'}, got {size!r}")
        return decahedron(metal, p, q, r, a=a)
    raise ValueError(f"structure_type: unknown metal cluster {structure_type!r}; choose one of {sorted(CLUSTER_TYPES)}")


# --------------------------------------------------------------------------------------------------
# a size series for a library
# --------------------------------------------------------------------------------------------------
def _size_parameters(kind: str, limit: int = 40) -> Iterable:
    """Candidate size parameters of a motif, smallest first (the caller stops past the largest radius)."""
    if kind == "icosahedron" or kind == "cuboctahedron":
        yield from range(2, limit)
    elif kind == "octahedron":
        yield from range(3, limit)
    elif kind == "truncated_octahedron":
        yield from range(1, limit)
    elif kind == "ino_decahedron":
        for p in range(2, limit):
            yield (p, p, 0)
            yield (p, max(1, p - 1), 0)
    elif kind == "marks_decahedron":
        for p in range(2, limit):
            yield (p, max(1, p - 1), 1)
            if p >= 3:
                yield (p, max(1, p - 2), 2)


def cluster_series(metal: str | int, types: Sequence[str] | None = None,
                   radii: Sequence[float] = (5, 7.5, 10, 12.5, 15),
                   *, max_atoms: int = 6000) -> list[Particle]:
    """Metal particles of every structure type in ``types`` (default all of :data:`CLUSTER_TYPES`) whose
    radius lies within the span of ``radii`` (spheres: cut at each radius; motifs: every size with a
    radius between 0.85 x min(radii) and 1.1 x max(radii)), at most ``max_atoms`` atoms each; duplicates
    (same type and atom count) are dropped."""
    types = list(CLUSTER_TYPES) if types is None else [str(t).lower() for t in types]
    unknown = [t for t in types if t not in CLUSTER_TYPES]
    if unknown:
        raise ValueError(f"types: unknown metal cluster type(s) {unknown}; choose from {list(CLUSTER_TYPES)}")
    radii = sorted(float(r) for r in radii)
    if not radii or radii[0] <= 0:
        raise ValueError(f"radii: need positive radii in Å, got {radii}")
    lo, hi = 0.85 * radii[0], 1.1 * radii[-1]
    out: list[Particle] = []
    for kind in types:
        seen: set[int] = set()
        if kind.endswith("_sphere"):
            for radius in radii:
                p = bulk_sphere(metal, radius, kind.split("_")[0])
                if len(p) <= max_atoms and len(p) not in seen:
                    seen.add(len(p))
                    out.append(p)
            continue
        misses = 0
        for size in _size_parameters(kind):
            p = make_cluster(kind, metal, size)
            radius = p.meta["radius"]
            if radius > hi or len(p) > max_atoms:
                misses += 1
                if misses >= 2:  # two in a row past the limit (decahedra alternate two series)
                    break
                continue
            misses = 0
            if radius >= lo and len(p) not in seen:
                seen.add(len(p))
                out.append(p)
    return out
