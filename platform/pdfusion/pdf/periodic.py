"""Periodic real-space PDF of a crystal: the attenuated-crystal model of PDFgui / srreal's ``PDFCalculator``.

    from pdfusion.pdf.periodic import Crystal, periodic_pdf
    ni = Crystal.from_cif("Ni.cif")
    g = periodic_pdf(ni, r, uiso=0.0059, delta2=1.7, qdamp=0.045, qbroad=0.017, qmin=0.5, qmax=25.0)

G(r) = scale · env(r) · W[ (1/N) Σ_{i∈cell} Σ_{j≠i} (f_i f_j/⟨f⟩²) N(r − r_ij; σ_ij)/r_ij − 4πρ0 r ]:
pairs of every unit-cell atom i with every atom j of the crystal (images included) within the extended range,
f = X-ray f(Q=0) (≈ Z, as PDFCalculator's lookup) or neutron b, N = atoms per cell (occupancy-weighted),
ρ0 = N / V, σ_ij² = (U_i + U_j)(1 − δ1/r − δ2/r² + Qbroad² r²), W = the [Qmin, Qmax) window (termination
ripples), env = exp(−(Qdamp r)²/2) · sphere(r; spdiameter). Steps and conventions: ``pdfusion.pdf.realspace``.

Pairs are enumerated once and grouped into shells: pairs whose distance is the same for *every* lattice of the
refinable family (cubic: a; tetragonal/hexagonal: a, c; ...) and whose element pair is the same share one
Gaussian, so fcc Ni to 50 Å is ~400 shells instead of ~200,000 pairs. Distances are computed from the metric
tensor of the lattice parameters (a, b, c, α, β, γ), so G is differentiable in them, and in scale, Uiso
(per element), δ1, δ2, Qdamp, Qbroad and spdiameter.

``convention='pdffit2'`` reproduces PDFgui's engine instead (libpdffit2 ``DataSet::determine``): peaks
divided by r rather than by r_ij, no Qmin, the envelopes applied before the Qmax cut, and the Qmax cut made on
the *data* grid, so it does nothing when the data are on the Nyquist grid π/Qmax (as PDFgui fits usually are).
The pair normalisation alone moves a refined lattice parameter by ~σ²/r² (Ni: a +0.0002 Å).

Not modelled: anisotropic ADPs, partially occupied sites shared by two elements, multiple phases.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pdfusion.pdf.formfactors import scattering_factors
from pdfusion.pdf.realspace import (
    DTYPE,
    MIN_DISTANCE,
    WINDOW_SIGMAS,
    as_tensor,
    envelope,
    gaussian_peaks,
    interpolate,
    make_rgrid,
    peak_sigma2,
    q_window,
)
from pdfusion.structures.particles import lattice_translations

LATTICE_NAMES = ("a", "b", "c", "alpha", "beta", "gamma")
DEFAULT_UISO = 0.005  # Å², used when a structure gives none
CONVENTIONS = ("srreal", "pdffit2")
LENGTH_TOL = 1e-4  # relative: lattice lengths this close are symmetry-tied
ANGLE_TOL = 1e-3  # degrees


# --------------------------------------------------------------------------------------------------
# The crystal
# --------------------------------------------------------------------------------------------------
@dataclass
class Crystal:
    """A unit cell: lattice (3, 3) rows = lattice vectors (Å), fractional positions (N, 3), atomic numbers (N,),
    isotropic displacement Uiso (N,) Å² (None: not given), occupancies (N,)."""

    lattice: np.ndarray
    frac: np.ndarray
    numbers: np.ndarray
    uiso: np.ndarray | None = None
    occupancy: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.lattice = np.asarray(self.lattice, dtype=np.float64).reshape(3, 3)
        self.frac = np.asarray(self.frac, dtype=np.float64).reshape(-1, 3)
        self.numbers = np.asarray(self.numbers, dtype=np.int64).reshape(-1)
        n = len(self.numbers)
        if len(self.frac) != n:
            raise ValueError(f"crystal: {n} atomic numbers but {len(self.frac)} positions")
        if n == 0:
            raise ValueError("crystal: the unit cell has no atoms")
        if not (np.all(np.isfinite(self.lattice)) and np.all(np.isfinite(self.frac))):
            raise ValueError("crystal: lattice or positions contain NaN or inf")
        if abs(np.linalg.det(self.lattice)) < 1e-6:
            raise ValueError("crystal: the lattice vectors are degenerate (zero cell volume)")
        if self.numbers.min() < 1 or self.numbers.max() > 118:
            raise ValueError("crystal: atomic numbers must be in 1..118, got "
                             f"{self.numbers.min()}..{self.numbers.max()}")
        self.occupancy = (np.ones(n) if self.occupancy is None
                          else np.asarray(self.occupancy, dtype=np.float64).reshape(-1))
        if len(self.occupancy) != n or not np.all((self.occupancy > 0) & (self.occupancy <= 1)):
            raise ValueError("crystal: occupancies must be one value in (0, 1] per atom")
        if self.uiso is not None:
            self.uiso = np.asarray(self.uiso, dtype=np.float64).reshape(-1)
            if len(self.uiso) != n or not np.all(np.isfinite(self.uiso)):
                raise ValueError("crystal: uiso must hold one finite value per atom")

    # constructors -------------------------------------------------------------------------------
    @classmethod
    def from_cartesian(cls, lattice, positions, numbers, **kw) -> Crystal:
        lattice = np.asarray(lattice, dtype=np.float64).reshape(3, 3)
        frac = np.asarray(positions, dtype=np.float64).reshape(-1, 3) @ np.linalg.inv(lattice)
        return cls(lattice, frac, numbers, **kw)

    @classmethod
    def from_pymatgen(cls, structure) -> Crystal:
        """From a pymatgen ``Structure`` (sites with one element each; occupancy < 1 kept as a weight)."""
        numbers, occ, frac = [], [], []
        for k, site in enumerate(structure):
            species = site.species
            if len(species) != 1:
                raise ValueError(f"crystal: site {k} is shared by {len(species)} elements ({species}); "
                                 "mixed-occupancy sites are not supported -- give one element per site")
            (el, o), = species.items()
            numbers.append(int(el.Z))
            occ.append(float(o))
            frac.append(site.frac_coords)
        return cls(structure.lattice.matrix, np.array(frac), np.array(numbers), occupancy=np.array(occ),
                   meta={"formula": structure.composition.reduced_formula})

    @classmethod
    def from_cif(cls, path: str | Path) -> Crystal:
        """The (symmetry-expanded, conventional) unit cell of a CIF, read with pymatgen."""
        from pymatgen.io.cif import CifParser

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such CIF file")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                structures = CifParser(str(path)).parse_structures(primitive=False)
        except Exception as exc:  # pymatgen raises many types on malformed files
            raise ValueError(f"{path}: not a readable CIF "
                             f"({str(exc).splitlines()[0] if str(exc) else exc!r})") from None
        if not structures:
            raise ValueError(f"{path}: no structure found; expected a data_ block with _cell_* and _atom_site_* loops")
        crystal = cls.from_pymatgen(structures[0])
        crystal.meta["source"] = path.name
        return crystal

    # properties ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.numbers)

    @property
    def cart(self) -> np.ndarray:
        return self.frac @ self.lattice

    @property
    def volume(self) -> float:
        return float(abs(np.linalg.det(self.lattice)))

    @property
    def number_density(self) -> float:
        return float(self.occupancy.sum()) / self.volume

    @property
    def lattice_parameters(self) -> tuple[float, float, float, float, float, float]:
        """(a, b, c, α, β, γ) in Å and degrees."""
        lat = self.lattice
        lengths = np.linalg.norm(lat, axis=1)

        def ang(i, j):
            c = np.dot(lat[i], lat[j]) / (lengths[i] * lengths[j])
            return float(np.degrees(np.arccos(np.clip(c, -1, 1))))

        return (*map(float, lengths), ang(1, 2), ang(0, 2), ang(0, 1))

    def with_lattice_parameters(self, params) -> Crystal:
        """The same fractional structure in the lattice (a, b, c, α, β, γ), in pymatgen's standard orientation."""
        return replace(self, lattice=lattice_matrix(params), meta=dict(self.meta))

    def to_pymatgen(self):
        from pymatgen.core import Element, Lattice, Structure

        species = [{Element.from_Z(int(z)).symbol: float(o)} for z, o in zip(self.numbers, self.occupancy, strict=True)]
        props = {} if self.uiso is None else {"uiso": [float(u) for u in self.uiso]}
        return Structure(Lattice(self.lattice), species, self.frac, site_properties=props or None)

    def cif_text(self) -> str:
        """A CIF of the cell (P1, every atom listed) with _atom_site_U_iso_or_equiv when Uiso is set."""
        from pymatgen.core import Element

        a, b, c, al, be, ga = self.lattice_parameters
        lines = ["data_pdfusion_refined", "_symmetry_space_group_name_H-M   'P 1'", "_symmetry_Int_Tables_number   1",
                 f"_cell_length_a   {a:.6f}", f"_cell_length_b   {b:.6f}", f"_cell_length_c   {c:.6f}",
                 f"_cell_angle_alpha   {al:.6f}", f"_cell_angle_beta   {be:.6f}", f"_cell_angle_gamma   {ga:.6f}",
                 f"_cell_volume   {self.volume:.6f}", "loop_", "_symmetry_equiv_pos_as_xyz", "  'x, y, z'", "loop_",
                 "_atom_site_label", "_atom_site_type_symbol", "_atom_site_fract_x", "_atom_site_fract_y",
                 "_atom_site_fract_z", "_atom_site_occupancy"]
        if self.uiso is not None:
            lines.append("_atom_site_U_iso_or_equiv")
        counts: dict[str, int] = {}
        for k, (z, f, o) in enumerate(zip(self.numbers, self.frac, self.occupancy, strict=True)):
            sym = Element.from_Z(int(z)).symbol
            counts[sym] = counts.get(sym, 0) + 1
            row = f"  {sym}{counts[sym]} {sym} {f[0]:.6f} {f[1]:.6f} {f[2]:.6f} {o:.4f}"
            if self.uiso is not None:
                row += f" {self.uiso[k]:.6f}"
            lines.append(row)
        return "\n".join(lines) + "\n"


def as_crystal(cell) -> Crystal:
    """A :class:`Crystal` from a Crystal, a pymatgen ``Structure`` or a CIF path."""
    if isinstance(cell, Crystal):
        return cell
    if isinstance(cell, (str, Path)):
        return Crystal.from_cif(cell)
    if hasattr(cell, "lattice") and hasattr(cell, "frac_coords"):
        return Crystal.from_pymatgen(cell)
    raise TypeError(f"cell: expected a Crystal, a pymatgen Structure or a CIF path, got {type(cell).__name__}")


def lattice_matrix(params) -> np.ndarray:
    a, b, c, al, be, ga = (float(x) for x in params)
    from pymatgen.core import Lattice

    return Lattice.from_parameters(a, b, c, al, be, ga).matrix


def metric_vector(lat6: Tensor) -> Tensor:
    """(a², b², c², ab cosγ, ac cosβ, bc cosα) of lattice parameters (a, b, c, α, β, γ) (degrees)."""
    a, b, c = lat6[0], lat6[1], lat6[2]
    ca, cb, cg = (torch.cos(torch.deg2rad(lat6[k])) for k in (3, 4, 5))
    return torch.stack([a * a, b * b, c * c, a * b * cg, a * c * cb, b * c * ca])


def cell_volume(lat6: Tensor) -> Tensor:
    a, b, c = lat6[0], lat6[1], lat6[2]
    ca, cb, cg = (torch.cos(torch.deg2rad(lat6[k])) for k in (3, 4, 5))
    return a * b * c * torch.sqrt(torch.clamp(1 - ca**2 - cb**2 - cg**2 + 2 * ca * cb * cg, min=1e-12))


# --------------------------------------------------------------------------------------------------
# Which lattice parameters a refinement may change
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LatticeFamily:
    """Free lattice parameters and ties: ``groups[name]`` = indices into (a, b, c, α, β, γ) set equal to it;
    the other entries stay at the cell's values. ``system`` is the crystal system it came from."""

    system: str
    groups: tuple[tuple[str, tuple[int, ...]], ...]

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.groups]


def lattice_family(crystal: Crystal, mode: str = "lattice") -> LatticeFamily:
    """The refinable lattice parameters of ``crystal``: mode 'lattice' = those its crystal system allows
    (cubic: a; tetragonal, hexagonal: a, c; orthorhombic: a, b, c; monoclinic: + the non-90° angle;
    triclinic: all six; rhombohedral setting: a, alpha), 'expansion' = one isotropic factor, 'triclinic' = all six
    whatever the symmetry."""
    if mode == "expansion":
        return LatticeFamily("isotropic", (("expansion", (0, 1, 2)),))
    if mode == "triclinic":
        return LatticeFamily("triclinic", tuple((name, (k,)) for k, name in enumerate(LATTICE_NAMES)))
    if mode != "lattice":
        raise ValueError(f"lattice mode: must be 'lattice', 'expansion' or 'triclinic', got {mode!r}")
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # spglib's deprecation chatter
            system = SpacegroupAnalyzer(crystal.to_pymatgen(), symprec=1e-3).get_crystal_system()
    except Exception:  # symmetry detection failed (e.g. odd occupancies): refine everything
        system = "triclinic"
    p = np.array(crystal.lattice_parameters)
    lengths, angles = p[:3], p[3:]

    def equal_len(i, j):
        return abs(lengths[i] - lengths[j]) <= LENGTH_TOL * max(lengths[i], lengths[j])

    def is90(k):
        return abs(angles[k] - 90.0) <= ANGLE_TOL

    names = "abc"
    groups: list[tuple[str, tuple[int, ...]]] = []
    if system == "cubic":
        groups = [("a", (0, 1, 2))]
    elif system in ("tetragonal", "hexagonal", "trigonal"):
        if all(equal_len(0, k) for k in (1, 2)):  # rhombohedral setting
            groups = [("a", (0, 1, 2))]
            if not all(is90(k) for k in range(3)):
                groups.append(("alpha", (3, 4, 5)))
        else:
            pair = next(((i, j) for i, j in ((0, 1), (0, 2), (1, 2)) if equal_len(i, j)), None)
            if pair is None:
                groups = [(names[k], (k,)) for k in range(3)]
            else:
                other = ({0, 1, 2} - set(pair)).pop()
                groups = [(names[pair[0]], pair), (names[other], (other,))]
    else:
        groups = [(names[k], (k,)) for k in range(3)]
        if system == "monoclinic":
            groups += [(LATTICE_NAMES[3 + k], (3 + k,)) for k in range(3) if not is90(k)]
        elif system == "triclinic":
            groups += [(LATTICE_NAMES[3 + k], (3 + k,)) for k in range(3)]
    return LatticeFamily(system, tuple(groups))


def family_lattice(lat0: np.ndarray, family: LatticeFamily, values: dict[str, Any]) -> Tensor:
    """(a, b, c, α, β, γ) tensor from the family's free values (missing names keep the cell's values)."""
    entries: list[Any] = [torch.as_tensor(float(v), dtype=DTYPE) for v in lat0]
    for name, idx in family.groups:
        if name not in values:
            continue
        v = as_tensor(values[name])
        for k in idx:
            entries[k] = v * lat0[k] if name == "expansion" else v
    return torch.stack(entries)


# --------------------------------------------------------------------------------------------------
# Shell enumeration
# --------------------------------------------------------------------------------------------------
def _family_samples(lat0: np.ndarray, family: LatticeFamily, n: int, rng) -> np.ndarray:
    """Metric vectors (n + 1, 6) of the cell and of ``n`` random lattices of the family: two pairs have the same
    distance in every lattice of the family iff their squared distances agree in all of these (d² is linear in
    the metric, and the family's metrics span a space of dimension <= n)."""
    out = [metric_vector(torch.as_tensor(lat0, dtype=DTYPE)).numpy()]
    for _ in range(n):
        vals = {}
        for name, idx in family.groups:
            if name == "expansion":
                vals[name] = 1 + rng.uniform(-0.05, 0.05)
            elif idx[0] < 3:  # a length
                vals[name] = lat0[idx[0]] * (1 + rng.uniform(-0.05, 0.05))
            else:  # an angle (degrees)
                vals[name] = lat0[idx[0]] + rng.uniform(-3, 3)
        out.append(metric_vector(family_lattice(lat0, family, vals)).numpy())
    return np.stack(out)


@dataclass
class Shells:
    """Pair shells of a crystal: metric coefficients kvec (K, 6) with d² = kvec · metric_vector(lattice),
    summed pair weight f_i f_j occ_i occ_j (K,), element indices (K,) of both ends."""

    kvec: np.ndarray
    weight: np.ndarray
    ea: np.ndarray
    ec: np.ndarray
    n_pairs: int


def crystal_shells(crystal: Crystal, reach: float, family: LatticeFamily, fzero: np.ndarray,
                   local: np.ndarray, min_distance: float = MIN_DISTANCE) -> Shells:
    """All pairs (i in the cell, j any atom of the crystal, j ≠ i) closer than ``reach`` Å, grouped into shells
    that stay degenerate for every lattice of ``family``."""
    lat = crystal.lattice
    lat0 = np.array(crystal.lattice_parameters)
    shifts = lattice_translations(lat, reach)
    frac = crystal.frac
    n_dof = len(family.groups)
    samples = _family_samples(lat0, family, n_dof, np.random.default_rng(12345))  # (S, 6)
    wt_atom = fzero[local] * crystal.occupancy
    keys, kvecs, weights, eas, ecs = [], [], [], [], []
    n_pairs = 0
    metric0 = samples[0]
    for i in range(len(crystal)):
        delta = (frac[None, :, :] - frac[i][None, None, :] + shifts[:, None, :]).reshape(-1, 3)  # (T·N, 3)
        j = np.tile(np.arange(len(crystal)), len(shifts))
        kv = np.stack([delta[:, 0] ** 2, delta[:, 1] ** 2, delta[:, 2] ** 2, 2 * delta[:, 0] * delta[:, 1],
                       2 * delta[:, 0] * delta[:, 2], 2 * delta[:, 1] * delta[:, 2]], axis=1)
        d2 = kv @ metric0
        self_pair = d2 < 1e-10
        close = (d2 < min_distance**2) & ~self_pair
        if np.any(close):
            k = int(np.flatnonzero(close)[0])
            raise ValueError(f"crystal: atoms {i} and {int(j[k])} (or its periodic image) are {math.sqrt(d2[k]):.3g} Å "
                             f"apart (< {min_distance} Å); remove duplicate atoms or overlapping sites")
        sel = (~self_pair) & (d2 <= reach**2)
        kv, j = kv[sel], j[sel]
        n_pairs += len(j)
        fp = np.round((kv @ samples.T) * 1e6).astype(np.int64)  # distance² fingerprints, 1e-6 Å²
        ea = np.full(len(j), local[i])
        ec = local[j]
        lo, hi = np.minimum(ea, ec), np.maximum(ea, ec)
        key = np.concatenate([lo[:, None], hi[:, None], fp], axis=1)
        uniq, first, inv = np.unique(key, axis=0, return_index=True, return_inverse=True)
        inv = inv.reshape(-1)
        keys.append(uniq)
        kvecs.append(kv[first])
        weights.append(np.bincount(inv, weights=wt_atom[i] * wt_atom[j], minlength=len(uniq)))
        eas.append(lo[first])
        ecs.append(hi[first])
    key = np.concatenate(keys)
    uniq, first, inv = np.unique(key, axis=0, return_index=True, return_inverse=True)
    inv = inv.reshape(-1)
    weight = np.bincount(inv, weights=np.concatenate(weights), minlength=len(uniq))
    return Shells(np.concatenate(kvecs)[first], weight, np.concatenate(eas)[first], np.concatenate(ecs)[first], n_pairs)


# --------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------
class PeriodicModel:
    """G(r) of a crystal at the points ``r`` (PDFCalculator semantics), built once, evaluated many times.

    ``model(scale=, lattice=(6,) tensor | None, uiso=(T,), delta1=, delta2=, qdamp=, qbroad=, spdiameter=None)``
    → (M,) tensor; ``lattice`` defaults to the cell's own parameters. ``mode`` ('lattice' or 'expansion') fixes
    which lattices the shell grouping must stay exact for; ``max_expansion`` (1/smallest length factor) and
    ``max_uiso``/``max_qbroad`` (the widest peak) set how far beyond the grid pairs are enumerated."""

    def __init__(self, cell, r, *, qmin: float = 0.0, qmax: float | None = None, radiation: str = "xray",
                 mode: str = "lattice", dr: float | None = None, max_expansion: float = 1.05,
                 max_uiso: float = 0.05, max_qbroad: float = 0.03, min_distance: float = MIN_DISTANCE,
                 convention: str = "srreal", data_step: float | None = None):
        if convention not in CONVENTIONS:
            raise ValueError(f"convention: must be one of {CONVENTIONS}, got {convention!r}")
        self.crystal = as_crystal(cell)
        self.convention = convention
        if convention == "pdffit2":
            # PDFfit2: no Qmin; its Qmax cut is an FFT on the data grid, a no-op at or beyond that grid's Nyquist
            r_arr = np.asarray(r, dtype=np.float64).reshape(-1)
            step = data_step if data_step is not None else (float(np.median(np.diff(r_arr))) if r_arr.size > 1 else 0.0)
            qmin = 0.0
            if qmax is not None and step > 0 and qmax >= math.pi / step * (1 - 1e-6):
                qmax = None
        self.grid = make_rgrid(r, qmin=qmin, qmax=qmax, dr=dr)
        self.family = lattice_family(self.crystal, mode)
        self.lat0 = np.array(self.crystal.lattice_parameters)
        self.z_types, self.local = np.unique(self.crystal.numbers, return_inverse=True)
        self.local = self.local.reshape(-1)
        f0 = scattering_factors(torch.as_tensor(self.z_types), torch.zeros(1, dtype=DTYPE), radiation)[:, 0].numpy()
        self.fzero = f0
        occ = self.crystal.occupancy
        self.n_atoms = float(occ.sum())
        fbar = float((f0[self.local] * occ).sum()) / self.n_atoms
        self.norm = 1.0 / (self.n_atoms * fbar**2)
        # pairs up to the grid end plus the widest peak tail the parameters may reach (srreal extFromPeakTails)
        tail = WINDOW_SIGMAS * math.sqrt(2 * max_uiso * (1 + (max_qbroad * self.grid.r_end) ** 2))
        self.reach = (self.grid.r_end + max(1.0, tail)) * max_expansion
        self.shells = crystal_shells(self.crystal, self.reach, self.family, f0, self.local, min_distance)
        self._kvec = torch.as_tensor(self.shells.kvec, dtype=DTYPE)
        self._weight = torch.as_tensor(self.shells.weight * self.norm, dtype=DTYPE)
        self._ea = torch.as_tensor(self.shells.ea)
        self._ec = torch.as_tensor(self.shells.ec)
        self._r = torch.as_tensor(self.grid.r, dtype=DTYPE)

    def lattice(self, values: dict[str, Any] | None = None) -> Tensor:
        """(a, b, c, α, β, γ) from free family values such as {'a': 3.52} or {'expansion': 1.01}."""
        return family_lattice(self.lat0, self.family, values or {})

    def grid_pdf(self, *, scale=1.0, lattice: Tensor | None = None, uiso=DEFAULT_UISO, delta1=0.0, delta2=0.0,
                 qdamp=0.0, qbroad=0.0, spdiameter=None) -> Tensor:
        lat6 = torch.as_tensor(self.lat0, dtype=DTYPE) if lattice is None else as_tensor(lattice)
        d2 = self._kvec @ metric_vector(lat6)
        dist = torch.sqrt(torch.clamp(d2, min=1e-12))
        uiso = as_tensor(uiso).reshape(-1)
        if uiso.numel() == 1:
            uiso = uiso.expand(len(self.z_types))
        msd = uiso[self._ea] + uiso[self._ec]
        sigma2, keep = peak_sigma2(dist, msd, delta1, delta2, qbroad)
        pdffit2 = self.convention == "pdffit2"
        g = gaussian_peaks(dist, self._weight, sigma2, keep, self.grid, over_distance=not pdffit2)[0]
        if pdffit2:
            r = self._r
            g = torch.where(r > 0, g / torch.where(r > 0, r, torch.ones_like(r)), torch.zeros_like(g))
        rho0 = self.n_atoms / cell_volume(lat6)
        g = g - 4 * math.pi * rho0 * self._r
        if pdffit2:  # envelopes first, then the Qmax cut
            g = envelope(g, self.grid, scale, qdamp, spdiameter)
            return q_window(g, self.grid) if self.grid.window else g
        if self.grid.window:
            g = q_window(g, self.grid)
        return envelope(g, self.grid, scale, qdamp, spdiameter)

    def __call__(self, **params) -> Tensor:
        return interpolate(self.grid_pdf(**params), self.grid)


def periodic_pdf(cell, r, *, scale=1.0, lattice=None, expansion=None, uiso=DEFAULT_UISO, delta1=0.0, delta2=0.0,
                 qdamp=0.0, qbroad=0.0, spdiameter=None, qmin: float = 0.0, qmax: float | None = None,
                 radiation: str = "xray", convention: str = "srreal") -> Tensor:
    """G(r) of a crystal (Crystal, pymatgen Structure or CIF path) at the points ``r`` (Å).

    ``lattice`` (a, b, c, α, β, γ) replaces the cell's lattice parameters; ``expansion`` scales its lengths;
    ``uiso`` is one value or one per element (sorted by Z). Every parameter may be a torch tensor (the result
    is differentiable in it); ``qmax=None`` means no termination (infinite Qmax). ``convention`` 'srreal'
    (PDFCalculator, default) or 'pdffit2' (PDFgui's engine, see the module docstring)."""
    if expansion is not None and lattice is not None:
        raise ValueError("periodic_pdf: give lattice or expansion, not both")
    crystal = as_crystal(cell)
    lat0 = np.array(crystal.lattice_parameters)
    if expansion is not None:
        grow = float(as_tensor(expansion).detach())
        mode = "expansion"
    elif lattice is not None:
        lattice = as_tensor(lattice).reshape(-1)
        if lattice.numel() != 6:
            raise ValueError(f"lattice: expected (a, b, c, alpha, beta, gamma), got {lattice.numel()} values")
        grow = float(lattice[:3].detach().max()) / float(lat0[:3].min())
        mode = "triclinic"
    else:
        grow, mode = 1.0, "lattice"
    u_max = float(as_tensor(uiso).detach().max())
    model = PeriodicModel(crystal, r, qmin=qmin, qmax=qmax, radiation=radiation, mode=mode,
                          max_expansion=1.05 * max(1.0, grow), max_uiso=max(u_max, 1e-4),
                          max_qbroad=float(as_tensor(qbroad).detach()), convention=convention)
    lat6 = model.lattice({"expansion": expansion}) if expansion is not None else lattice
    return model(scale=scale, lattice=lat6, uiso=uiso, delta1=delta1, delta2=delta2, qdamp=qdamp, qbroad=qbroad,
                 spdiameter=spdiameter)
