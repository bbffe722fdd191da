"""Cut spherical mono-metal oxide nanoparticles from a prototype crystal.

The cut reproduces the seed-oxides generator (checked atom for atom by
``benchmarks/bench_generator_fidelity.py``): every *metal* within ``radius`` of the centre is kept (inclusive),
then every oxygen bonded to a kept metal, a bond being a distance below ``BOND_FACTOR`` (1.4) times the
crystal's shortest metal-oxygen distance. (Measured on the seed data: every seed particle is reproduced
by any factor in (1.14, 1.65); a radius-sum criterion such as ``1.25 * (r_M + r_O)`` is not -- it drops
the oxygens of small metals such as B and adds second-shell oxygens to K and Cs.) So a particle is a
set of complete metal coordination polyhedra: no dangling metals, no free oxygens, and its outer radius exceeds
``radius`` by about one M-O bond. By default the centre is a metal atom (the seed data put one at the origin);
``center=`` chooses another metal atom or any point, for structural variants of one grid point.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from pdfusion.limits import Limits, check_atoms, particle_atoms_estimate
from pdfusion.structures.particle import Particle
from pdfusion.structures.prototypes import element_symbol, get_prototype, min_mo_distance, unit_cell

BOND_FACTOR = 1.4
DEFAULT_MIN_DISTANCE = 1.2


def bond_cutoff(cell) -> float:
    """Largest metal-oxygen distance (Å) counted as a bond in ``cell`` (a :class:`UnitCell`)."""
    return BOND_FACTOR * min_mo_distance(cell)


def lattice_translations(lattice: np.ndarray, reach: float) -> np.ndarray:
    """Integer cell translations covering a sphere of radius ``reach`` around any point of the cell."""
    vol = abs(np.linalg.det(lattice))
    heights = [vol / np.linalg.norm(np.cross(lattice[(i + 1) % 3], lattice[(i + 2) % 3])) for i in range(3)]
    n = [int(math.ceil(reach / h)) + 1 for h in heights]
    grid = np.stack(np.meshgrid(*[np.arange(-k, k + 1) for k in n], indexing="ij"), axis=-1).reshape(-1, 3)
    return grid.astype(np.float64)


def cut_sphere(
    cell_cart: np.ndarray, numbers: np.ndarray, lattice: np.ndarray, center: np.ndarray, radius: float, cutoff: float
) -> tuple[np.ndarray, np.ndarray]:
    """Metals within ``radius`` of ``center`` plus the oxygens within ``cutoff`` of any of them.

    Returns (numbers, positions relative to ``center``), metals first, each sorted by distance.

    Memory grows with the particle, not with its square: the lattice is tiled one slab of translations at
    a time, and the oxygen-metal bond test is a k-d tree query (scipy), so a 12 nm particle of ~80,000
    atoms needs tens of MB."""
    from scipy.spatial import cKDTree

    reach = radius + cutoff + 1e-6
    grid = lattice_translations(lattice, reach)
    parts_pos, parts_z = [], []
    for first in np.unique(grid[:, 0]):  # one slab of translations at a time
        shifts = grid[grid[:, 0] == first] @ lattice
        pos = (cell_cart[None, :, :] + shifts[:, None, :]).reshape(-1, 3) - center
        near = np.einsum("ij,ij->i", pos, pos) <= reach * reach
        parts_pos.append(pos[near])
        parts_z.append(np.tile(numbers, len(shifts))[near])
    pos, z = np.concatenate(parts_pos), np.concatenate(parts_z)
    dist = np.linalg.norm(pos, axis=1)
    metal = z != 8
    keep_m = metal & (dist <= radius + 1e-6)
    m_pos = pos[keep_m]
    o_idx = np.flatnonzero(~metal & (dist <= radius + cutoff + 1e-6))
    if len(m_pos) and len(o_idx):
        d, _ = cKDTree(m_pos).query(pos[o_idx], k=1, distance_upper_bound=cutoff * (1 + 1e-9) + 1e-9)
        o_idx = o_idx[d < cutoff]
    else:
        o_idx = o_idx[:0]
    m_idx = np.flatnonzero(keep_m)
    m_idx = m_idx[np.argsort(dist[m_idx], kind="stable")]
    o_idx = o_idx[np.argsort(dist[o_idx], kind="stable")]
    idx = np.concatenate([m_idx, o_idx])
    return z[idx], pos[idx]


def _resolve_center(cell, proto, center, rng: np.random.Generator | None) -> tuple[np.ndarray, str]:
    cart = cell.cart_coords
    metal_rows = np.flatnonzero(cell.numbers != 8)
    if center is None:
        rows = metal_rows[cell.site_index[metal_rows] == proto.center_site]
        row = rows[np.argmin(np.linalg.norm(cart[rows], axis=1))]
        return cart[row], "atom"
    if isinstance(center, str):
        if center != "atom":
            raise ValueError(f"center: expected None, 'atom' or fractional (x, y, z), got {center!r}")
        rng = rng if rng is not None else np.random.default_rng()
        return cart[int(rng.choice(metal_rows))], "atom"
    c = np.asarray(center, dtype=np.float64).reshape(-1)
    if c.shape != (3,) or not np.all(np.isfinite(c)):
        raise ValueError(f"center: expected fractional coordinates (x, y, z), got {center!r}")
    return c @ cell.lattice, "point"


def make_particle(
    structure_type: str,
    metal: str | int,
    radius: float,
    *,
    lattice: Sequence[float] | float | None = None,
    center: None | str | Sequence[float] = None,
    rng: np.random.Generator | None = None,
    min_distance: float | None = DEFAULT_MIN_DISTANCE,
    max_atoms: int | None = None,
) -> Particle | None:
    """A spherical particle of ``metal`` oxide in ``structure_type`` with metals within ``radius`` (Å).

    ``lattice``: the real ``(a,)`` or ``(a, c)`` in Å (else known compound or radius rule).
    ``center``: ``None`` = a metal atom of the prototype's central Wyckoff site (the seed convention,
    deterministic); ``"atom"`` = a random metal atom of the cell (``rng``); ``(x, y, z)`` = a point in
    fractional cell coordinates. Positions are returned centred on their centroid. ``meta`` holds
    structure_type, formula, radius, metal, ``lattice_params`` ({a[, c], internal parameters}) and
    ``center``; not ``lattice``, which pdfusion reserves for the 3x3 cell of a *periodic* structure.

    Returns ``None`` (a documented drop, not an error) when two atoms are closer than ``min_distance``
    Å -- unphysical cells that an unlucky radius rule can produce; pass ``min_distance=None`` to keep all.
    Raises :class:`PrototypeError` / ``ValueError`` for bad input, naming the argument, and ``ConfigError``
    before cutting when the sphere would hold more than ``max_atoms`` atoms (default
    ``pdfusion.limits.Limits().max_atoms``), estimated from the cell's density.
    """
    proto = get_prototype(structure_type)
    sym = element_symbol(metal)
    if not (isinstance(radius, (int, float, np.floating, np.integer)) and math.isfinite(radius) and radius > 0):
        raise ValueError(f"radius: must be a positive number of Å, got {radius!r}")
    if min_distance is not None and not (math.isfinite(min_distance) and min_distance >= 0):
        raise ValueError(f"min_distance: must be >= 0 Å (0 keeps every particle), got {min_distance!r}")
    cell = unit_cell(proto.name, sym, lattice if lattice is None or isinstance(lattice, (tuple, list)) else (lattice,))
    limit = Limits(max_atoms=max_atoms) if max_atoms is not None else Limits()
    estimate = particle_atoms_estimate(cell.lattice, len(cell.numbers), float(radius), bond_cutoff(cell))
    check_atoms(estimate, limit, f"radius: a {radius:g} Å {proto.name} {sym} particle (estimated)")
    c_cart, center_kind = _resolve_center(cell, proto, center, rng)
    numbers, pos = cut_sphere(cell.cart_coords, cell.numbers, cell.lattice, c_cart, float(radius), bond_cutoff(cell))
    if len(numbers) < 2 or not np.any(numbers != 8):
        raise ValueError(
            f"radius: {radius} Å holds no metal with a bonded oxygen for {proto.name} {sym} "
            f"(a = {cell.parameters['a']:.3f} Å); use a larger radius"
        )
    particle = Particle(
        numbers,
        pos - pos.mean(axis=0),
        {
            "structure_type": proto.name,
            "formula": proto.formula(sym),
            "radius": float(radius),
            "metal": sym,
            "lattice_params": {k: round(float(v), 6) for k, v in cell.parameters.items()},
            "center": center_kind,
        },
    )
    if min_distance is not None and particle.min_distance() < min_distance:
        return None
    return particle


def min_radius(structure_type: str, metal: str | int, lattice: Sequence[float] | None = None) -> float:
    """Smallest radius (Å) worth asking for: the cell's shortest metal-metal distance, below which a
    particle is a single coordination polyhedron (used by config validation)."""
    cell = unit_cell(structure_type, metal, lattice)
    cart = cell.cart_coords[cell.numbers != 8]
    shifts = lattice_translations(cell.lattice, 0.0) @ cell.lattice
    allm = (cart[None, :, :] + shifts[:, None, :]).reshape(-1, 3)
    d = np.linalg.norm(allm[:, None, :] - cart[None, :, :], axis=-1)
    return float(d[d > 1e-6].min())
