"""Off-library particles: the shapes and imperfections a library of perfect spherical cuts does not hold.

Why: every seed-oxides particle is a perfect sphere cut around a metal atom, so a library lookup already
answers those PDFs; measured nanoparticles are faceted or elongated, cut anywhere in the cell, miss surface
atoms, relax at the surface and strain against their core. This module builds such particles on top of the
prototype crystals of :mod:`pdfusion.structures.prototypes` with the cut rule of
:mod:`pdfusion.structures.particles` (every metal inside the shape, plus every oxygen bonded to a kept metal:
complete coordination polyhedra), then applies, in this fixed order:

1. the cut: sphere, ellipsoid (``axis_ratios``, any ``orientation``) or faceted ({100} and/or {111} planes),
   centred on a metal atom or anywhere in the cell (``center``);
2. surface vacancies: a fraction of the under-coordinated atoms (:func:`surface_atoms`) removed in a seeded
   random order, a removal
   refused when it would push M:O outside ``mo_bound`` of the formula (a small perfect cut is O-rich, since
   its polyhedra are complete, so there only removals that move M:O toward the formula pass); oxygens left
   without a metal go with their metal;
3. core-shell strain: radii beyond ``core_fraction`` of the outer radius stretched by ``strain``
   (continuous at the interface: the shell has another lattice spacing, no gap);
4. surface relaxation and disorder: a radial shift ``relax_amplitude`` and random displacements
   ``surface_sigma``, both decaying as exp(-depth / ``decay_length``), depth = distance (before strain) to the
   nearest under-coordinated atom (so it follows any shape);
5. a thermal snapshot: i.i.d. Gaussian displacements ``thermal_sigma`` on every atom.

Every parameter is a field of :class:`pdfusion.config.VariantConfig`; :func:`make_variant` is a pure function
of it (its ``seed`` drives steps 2, 4 and 5), and the particle's ``meta['variant_params']`` holds it, so
``make_variant(variant_from_meta(p.meta))`` rebuilds ``p`` exactly. :func:`sample_variant` draws one from a
:class:`pdfusion.config.VariantMixConfig`.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.spatial import cKDTree

from pdfusion.config import VariantConfig, VariantMixConfig, from_dict, to_dict
from pdfusion.structures.particle import OXYGEN, Particle
from pdfusion.structures.particles import DEFAULT_MIN_DISTANCE, bond_cutoff, lattice_translations
from pdfusion.structures.prototypes import (
    PROTOTYPES,
    canonical_type,
    element_symbol,
    get_prototype,
    unit_cell,
)

__all__ = ["VariantConfig", "VariantMixConfig", "facet_normals", "facet_volume", "is_off_library", "make_variant",
           "mo_deviation", "sample_variant", "surface_atoms", "variant_from_meta"]

SQRT3 = math.sqrt(3.0)


# --------------------------------------------------------------------------------------------------
# shapes
# --------------------------------------------------------------------------------------------------
def _rotation(q: tuple[float, float, float, float]) -> np.ndarray:
    """3x3 rotation of the unit quaternion (w, x, y, z); columns are the ellipsoid's axes."""
    w, x, y, z = (float(v) for v in q)
    n = math.sqrt(w * w + x * x + y * y + z * z)
    w, x, y, z = w / n, x / n, y / n, z / n
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def facet_normals(lattice: np.ndarray, family: str) -> np.ndarray:
    """Unit normals (k, 3) of the Miller planes {100} (6) or {111} (8) of a cell (rows = lattice vectors):
    h b1 + k b2 + l b3 of the reciprocal lattice, so they are crystal facets in any cell."""
    recip = np.linalg.inv(lattice).T
    if family == "100":
        hkl = np.concatenate([np.eye(3), -np.eye(3)])
    elif family == "111":
        hkl = np.array([[i, j, k] for i in (1, -1) for j in (1, -1) for k in (1, -1)], dtype=np.float64)
    else:
        raise ValueError(f"family: expected '100' or '111', got {family!r}")
    n = hkl @ recip
    return n / np.linalg.norm(n, axis=1, keepdims=True)


def _shape_test(vc: VariantConfig, lattice: np.ndarray):
    """(inside(pos) -> bool mask, largest distance of the shape from its centre)."""
    r = float(vc.radius)
    if vc.shape == "sphere":
        return (lambda p: np.linalg.norm(p, axis=1) <= r + 1e-6), r
    if vc.shape == "ellipsoid":
        rot = _rotation(vc.orientation)
        semi = r * np.asarray(vc.axis_ratios, dtype=np.float64)
        return (lambda p: (((p @ rot) / semi) ** 2).sum(axis=1) <= 1.0 + 1e-9), float(semi.max())
    planes = []
    if vc.facet_100 is not None:
        planes.append((facet_normals(lattice, "100"), vc.facet_100 * r))
    if vc.facet_111 is not None:
        planes.append((facet_normals(lattice, "111"), vc.facet_111 * r))

    def inside(p: np.ndarray) -> np.ndarray:
        ok = np.ones(len(p), dtype=bool)
        for normals, d in planes:
            ok &= (p @ normals.T <= d + 1e-6).all(axis=1)
        return ok

    normals = np.concatenate([n for n, _ in planes])
    offsets = np.concatenate([np.full(len(n), d) for n, d in planes])
    return inside, _polytope_reach(normals, offsets)


def _polytope_vertices(normals: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Vertices (k, 3) of the polytope normals @ x <= offsets (every feasible triple-plane intersection)."""
    from itertools import combinations

    verts = []
    for i, j, k in combinations(range(len(normals)), 3):
        a = normals[[i, j, k]]
        if abs(np.linalg.det(a)) < 1e-9:
            continue
        x = np.linalg.solve(a, offsets[[i, j, k]])
        if np.all(normals @ x <= offsets + 1e-6):
            verts.append(x)
    if not verts:
        raise ValueError("facet_100/facet_111: the planes do not enclose a bounded particle")
    return np.asarray(verts)


def _polytope_reach(normals: np.ndarray, offsets: np.ndarray) -> float:
    """Largest |x| over the polytope: its farthest vertex."""
    return float(np.linalg.norm(_polytope_vertices(normals, offsets), axis=1).max())


def facet_volume(lattice: np.ndarray, facet_100: float | None, facet_111: float | None) -> float:
    """Volume of the {100}/{111} polyhedron of a cell with those plane distances (Å^3 for distances in Å)."""
    from scipy.spatial import ConvexHull

    normals, offsets = [], []
    for fam, d in (("100", facet_100), ("111", facet_111)):
        if d is not None:
            n = facet_normals(lattice, fam)
            normals.append(n)
            offsets.append(np.full(len(n), float(d)))
    return float(ConvexHull(_polytope_vertices(np.concatenate(normals), np.concatenate(offsets))).volume)


def _center_cart(cell, proto, center) -> tuple[np.ndarray, str]:
    if center is None:  # the seed convention: the metal of the central Wyckoff site nearest the origin
        cart = cell.cart_coords
        rows = np.flatnonzero((cell.numbers != OXYGEN) & (cell.site_index == proto.center_site))
        return cart[rows[np.argmin(np.linalg.norm(cart[rows], axis=1))]], "atom"
    return np.asarray(center, dtype=np.float64) @ cell.lattice, "point"


def _cut(vc: VariantConfig):
    """Metals inside the shape plus the oxygens bonded to them. Returns (numbers, positions relative to the
    centre, bulk coordination of each kept atom, bond cutoff, cell, centre kind)."""
    proto = get_prototype(vc.structure_type)
    cell = unit_cell(proto.name, element_symbol(vc.metal))
    cutoff = bond_cutoff(cell)
    centre, kind = _center_cart(cell, proto, vc.center)
    inside, extent = _shape_test(vc, cell.lattice)
    reach = extent + 2 * cutoff + 1e-6
    shifts = lattice_translations(cell.lattice, reach) @ cell.lattice
    pos = (cell.cart_coords[None, :, :] + shifts[:, None, :]).reshape(-1, 3) - centre
    z = np.tile(cell.numbers, len(shifts))
    near = np.linalg.norm(pos, axis=1) <= reach
    pos, z = pos[near], z[near]
    metal = z != OXYGEN
    keep_m = metal & inside(pos)
    tree_m = cKDTree(pos[keep_m])
    o_idx = np.flatnonzero(~metal)
    if keep_m.any() and o_idx.size:
        d, _ = tree_m.query(pos[o_idx], k=1, distance_upper_bound=cutoff)
        o_idx = o_idx[d < cutoff]
    else:
        o_idx = o_idx[:0]
    m_idx = np.flatnonzero(keep_m)
    idx = np.concatenate([m_idx, o_idx])
    # bulk coordination: M-O bonds in the surrounding crystal (everything within `reach`)
    tree_all_m, tree_all_o = cKDTree(pos[metal]), cKDTree(pos[~metal])
    sel = pos[idx]
    is_m = z[idx] != OXYGEN
    bulk = np.where(is_m, _count(tree_all_o, sel, cutoff), _count(tree_all_m, sel, cutoff))
    return z[idx], sel, bulk, cutoff, cell, kind


def _count(tree: cKDTree, pts: np.ndarray, cutoff: float) -> np.ndarray:
    return np.asarray(tree.query_ball_point(pts, cutoff - 1e-9, return_length=True), dtype=np.int64)


def _coordination(numbers: np.ndarray, pos: np.ndarray, cutoff: float) -> np.ndarray:
    """M-O bonds per atom inside the particle (metals count oxygens, oxygens count metals)."""
    is_m = numbers != OXYGEN
    out = np.zeros(len(numbers), dtype=np.int64)
    if is_m.any() and (~is_m).any():
        out[is_m] = _count(cKDTree(pos[~is_m]), pos[is_m], cutoff)
        out[~is_m] = _count(cKDTree(pos[is_m]), pos[~is_m], cutoff)
    return out


# --------------------------------------------------------------------------------------------------
# imperfections
# --------------------------------------------------------------------------------------------------
def surface_atoms(numbers: np.ndarray, pos: np.ndarray, bulk: np.ndarray, cutoff: float) -> np.ndarray:
    """Under-coordinated atoms (bool mask): oxygens with fewer metal bonds than in the crystal, and metals
    bonded to such an oxygen. (The cut keeps every metal's polyhedron complete, so a surface metal misses
    no oxygen; it shows as the owner of an unsaturated one.)"""
    coord = _coordination(numbers, pos, cutoff)
    is_m = numbers != OXYGEN
    open_o = ~is_m & (coord < bulk)
    out = open_o | (is_m & (coord < bulk))
    if open_o.any() and is_m.any():
        near = cKDTree(pos[open_o]).query(pos[is_m], k=1, distance_upper_bound=cutoff)[0] < cutoff
        out[np.flatnonzero(is_m)[near]] = True
    return out


def formula_mo(structure_type: str) -> float:
    """Metals per oxygen of a prototype's formula unit."""
    m, o = PROTOTYPES[canonical_type(structure_type)].formula_unit
    return m / o


def mo_deviation(numbers: np.ndarray, structure_type: str) -> float:
    """|M:O / M:O(formula) - 1| of a particle (inf without oxygen)."""
    numbers = np.asarray(numbers)
    n_o = int(np.sum(numbers == OXYGEN))
    if n_o == 0:
        return math.inf
    return abs((len(numbers) - n_o) / n_o / formula_mo(structure_type) - 1.0)


def _vacancies(vc: VariantConfig, numbers: np.ndarray, pos: np.ndarray, bulk: np.ndarray, cutoff: float,
               rng: np.random.Generator) -> np.ndarray:
    """Keep-mask after removing up to round(fraction x under-coordinated) surface atoms (see module doc)."""
    keep = np.ones(len(numbers), dtype=bool)
    coord = _coordination(numbers, pos, cutoff)
    under = np.flatnonzero(surface_atoms(numbers, pos, bulk, cutoff))
    n_target = int(round(vc.vacancy_fraction * under.size))
    if n_target == 0:
        return keep
    is_m = numbers != OXYGEN
    ideal = formula_mo(vc.structure_type)
    n_m, n_o = int(is_m.sum()), int((~is_m).sum())
    tree = cKDTree(pos)
    neighbours = tree.query_ball_point(pos, cutoff - 1e-9)
    n_metal_nb = np.where(is_m, 0, coord)  # metals bonded to each oxygen, updated as metals go

    def dev(m: int, o: int) -> float:
        return abs(m / o / ideal - 1.0) if o > 0 else math.inf

    removed = 0
    for i in rng.permutation(under):
        if removed >= n_target:
            break
        if not keep[i]:
            continue
        if is_m[i]:
            orphans = [j for j in neighbours[i] if keep[j] and not is_m[j] and n_metal_nb[j] == 1]
            m_after, o_after = n_m - 1, n_o - len(orphans)
        else:
            orphans, m_after, o_after = [], n_m, n_o - 1
        if m_after < 1 or o_after < 1 or dev(m_after, o_after) > max(vc.mo_bound, dev(n_m, n_o)) + 1e-12:
            continue
        keep[i] = False
        if is_m[i]:
            for j in neighbours[i]:
                if not is_m[j]:
                    n_metal_nb[j] -= 1
            keep[orphans] = False
        n_m, n_o = m_after, o_after
        removed += 1
    return keep


def _depth(numbers: np.ndarray, pos: np.ndarray, bulk: np.ndarray, cutoff: float) -> np.ndarray:
    """Distance (Å) of every atom to the nearest under-coordinated one (0 on the surface)."""
    surface = surface_atoms(numbers, pos, bulk, cutoff)
    if not surface.any():
        return np.full(len(numbers), np.inf)
    d, _ = cKDTree(pos[surface]).query(pos, k=1)
    return d


def make_variant(vc: VariantConfig, *, min_distance: float | None = DEFAULT_MIN_DISTANCE) -> Particle | None:
    """The particle ``vc`` describes (positions centred on their centroid), or ``None`` when two atoms end up
    closer than ``min_distance`` Å (a documented drop, as :func:`~pdfusion.structures.particles.make_particle`).

    ``meta``: structure_type, formula, radius, metal, lattice_params, center ('atom' | 'point') like a plain
    cut, plus ``variant_params`` (``to_dict(vc)``), ``vacancies`` (atoms removed) and ``mo_deviation``."""
    numbers, pos, bulk, cutoff, cell, kind = _cut(vc)
    if len(numbers) < 2 or not np.any(numbers != OXYGEN) or not np.any(numbers == OXYGEN):
        raise ValueError(f"radius: {vc.radius} Å holds no metal with a bonded oxygen for {vc.structure_type} "
                         f"{vc.metal} as a {vc.shape} cut; use a larger radius")
    n_cut = len(numbers)
    if vc.vacancy_fraction > 0:
        keep = _vacancies(vc, numbers, pos, bulk, cutoff, np.random.default_rng([int(vc.seed), 1]))
        numbers, pos, bulk = numbers[keep], pos[keep], bulk[keep]
    pos = pos - pos.mean(axis=0)
    # metals first, each by distance, before any displacement: row i is the same lattice site with or without them
    order = np.lexsort((np.round(np.linalg.norm(pos, axis=1), 9), numbers == OXYGEN))
    numbers, pos, bulk = numbers[order], pos[order], bulk[order]
    dist = np.linalg.norm(pos, axis=1)
    unit = pos / np.where(dist > 0, dist, 1.0)[:, None]
    surface_terms = vc.relax_amplitude != 0 or vc.surface_sigma > 0
    fall = np.exp(-_depth(numbers, pos, bulk, cutoff) / vc.decay_length) if surface_terms else None
    if vc.strain != 0:
        r_core = vc.core_fraction * float(dist.max())
        new = dist + vc.strain * np.clip(dist - r_core, 0.0, None)
        pos = unit * new[:, None]
    if surface_terms:
        noise = np.random.default_rng([int(vc.seed), 2]).normal(0.0, 1.0, size=pos.shape)
        pos = pos + unit * (vc.relax_amplitude * fall)[:, None] + noise * (vc.surface_sigma * fall)[:, None]
    if vc.thermal_sigma > 0:
        pos = pos + np.random.default_rng([int(vc.seed), 3]).normal(0.0, vc.thermal_sigma, size=pos.shape)
    proto = get_prototype(vc.structure_type)
    sym = element_symbol(vc.metal)
    particle = Particle(numbers, pos - pos.mean(axis=0), {
        "structure_type": proto.name,
        "formula": proto.formula(sym),
        "radius": float(vc.radius),
        "metal": sym,
        "lattice_params": {k: round(float(v), 6) for k, v in cell.parameters.items()},
        "center": kind,
        "variant_params": to_dict(vc),
        "vacancies": int(n_cut - len(numbers)),
        "mo_deviation": round(mo_deviation(numbers, proto.name), 6),
    })
    if min_distance is not None and particle.min_distance() < min_distance:
        return None
    return particle


def variant_from_meta(meta: dict) -> VariantConfig:
    """The :class:`VariantConfig` a particle's (or dataset row's) metadata records."""
    params = meta.get("variant_params")
    if not isinstance(params, dict):
        raise ValueError("meta: no 'variant_params'; this structure was not made by structures.variants")
    return from_dict(VariantConfig, params)


# --------------------------------------------------------------------------------------------------
# drawing parameters
# --------------------------------------------------------------------------------------------------
def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    lo, hi = bounds
    return float(rng.uniform(lo, hi)) if hi > lo else float(lo)


def sample_variant(structure_type: str, metal: str, radius: float, rng: np.random.Generator,
                   mix: VariantMixConfig) -> VariantConfig:
    """One :class:`VariantConfig` for a grid point, every draw from ``rng`` in a fixed order (so one seed
    gives one variant whatever the mix: a fraction of 0 still consumes its draws)."""
    u = rng.random(8)
    shape = "ellipsoid" if u[0] < mix.ellipsoid else "faceted" if u[0] < mix.ellipsoid + mix.faceted else "sphere"
    half = math.log(mix.axis_ratio_max) / 2
    logs = rng.uniform(-half, half, size=3)
    ratios = np.exp(logs - logs.mean())
    quat = rng.normal(size=4)
    quat = quat / np.linalg.norm(quat)
    t111 = _uniform(rng, mix.facet_111_over_100)
    centre = rng.random(3)
    vac = _uniform(rng, mix.vacancy_range)
    strain, core = _uniform(rng, mix.strain_range), _uniform(rng, mix.core_fraction_range)
    relax, surf, decay = (_uniform(rng, mix.relax_range), _uniform(rng, mix.surface_sigma_range),
                          _uniform(rng, mix.decay_range))
    thermal = _uniform(rng, mix.thermal_range)
    seed = int(rng.integers(2**31 - 1))
    ellipsoid, faceted = shape == "ellipsoid", shape == "faceted"
    f100 = f111 = None
    if faceted:  # scaled to the sphere's volume, so `radius` is the volume-equivalent radius
        lattice = unit_cell(structure_type, element_symbol(metal)).lattice
        f100 = float((4 * math.pi / 3 / facet_volume(lattice, 1.0, t111)) ** (1 / 3))
        f111 = f100 * t111
    return VariantConfig(
        structure_type=canonical_type(structure_type), metal=element_symbol(metal), radius=float(radius), shape=shape,
        axis_ratios=tuple(float(a) for a in ratios) if ellipsoid else (1.0, 1.0, 1.0),
        orientation=tuple(float(q) for q in quat) if ellipsoid else (1.0, 0.0, 0.0, 0.0),
        facet_100=f100, facet_111=f111,
        center=tuple(float(c) for c in centre) if u[1] < mix.off_centre else None,
        vacancy_fraction=vac if u[2] < mix.vacancies else 0.0, mo_bound=mix.mo_bound,
        strain=strain if u[3] < mix.strain else 0.0, core_fraction=core,
        relax_amplitude=relax if u[4] < mix.relaxation else 0.0,
        surface_sigma=surf if u[4] < mix.relaxation else 0.0, decay_length=decay,
        thermal_sigma=thermal if u[5] < mix.thermal else 0.0, seed=seed,
    )


def is_off_library(vc: VariantConfig) -> bool:
    """True unless ``vc`` is a perfect sphere centred on a metal atom (what a spherical-cut library holds)."""
    return not (vc.shape == "sphere" and vc.center is None and vc.vacancy_fraction == 0 and vc.strain == 0
                and vc.relax_amplitude == 0 and vc.surface_sigma == 0 and vc.thermal_sigma == 0)
