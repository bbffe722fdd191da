"""The candidate library for `pdfusion solve`: which structures a measured PDF is compared with.

The composition decides the families: a metal-only composition ("Pt") gives the metal particle motifs of
:mod:`pdfusion.structures.clusters`; an oxide ("Fe2O3", "CeO2") gives every oxide prototype of
:mod:`pdfusion.structures.prototypes` cut with :func:`pdfusion.structures.particles.make_particle`, ordered so
that prototypes whose M:O ratio matches the formula come first (each carries its ``stoichiometry_mismatch``);
when the family is uncertain (an oxide of a noble metal, or less oxygen than M2O) both are included.
Every family is built across a radius grid. Each candidate is a Particle whose ``meta`` holds
``structure_type``, ``family``, ``label`` (unique), ``radius``, ``diameter`` (Å) and ``lattice_params``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pdfusion.config import SolveConfig
from pdfusion.structures.clusters import cluster_series
from pdfusion.structures.particle import Particle
from pdfusion.structures.particles import make_particle
from pdfusion.structures.prototypes import PROTOTYPES, canonical_type

__all__ = ["DEFAULT_RADII", "FAMILIES", "NOBLE_METALS", "ParsedComposition", "build_library", "default_families",
           "parse_composition"]

DEFAULT_RADII: tuple[float, ...] = SolveConfig.radii
FAMILIES = ("oxide", "metal")
# metals whose nanoparticles are usually metallic even when the sample formula names oxygen
NOBLE_METALS = frozenset({"Au", "Ag", "Pt", "Pd", "Ir", "Rh", "Ru", "Os", "Re"})


@dataclass(frozen=True)
class ParsedComposition:
    """A sample composition reduced to what the library needs: metals (symbol -> amount) and oxygen."""

    formula: str
    metals: dict[str, float]
    oxygen: float

    @property
    def metal(self) -> str:
        """The majority metal (prototypes hold one metal; a mixed oxide is screened as its majority metal)."""
        return max(self.metals.items(), key=lambda kv: (kv[1], kv[0]))[0]

    @property
    def is_oxide(self) -> bool:
        return self.oxygen > 0

    @property
    def o_per_metal(self) -> float:
        return self.oxygen / sum(self.metals.values())


def parse_composition(text: str) -> ParsedComposition:
    """Parse "Fe2O3", "CeO2", "Pt", "CoFe2O4"; raises ValueError naming the composition for anything else
    (unknown element, non-oxide anions, no metal)."""
    from pymatgen.core import Composition, Element

    if not isinstance(text, str) or not text.strip():
        raise ValueError("composition: give a formula such as CeO2, Fe2O3 or Pt")
    try:
        comp = Composition(text.strip())
        amounts = {Element(el): float(amt) for el, amt in comp.get_el_amt_dict().items()}
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"composition: cannot parse {text!r} as a formula (e.g. CeO2, Fe2O3, Pt): {exc}") from None
    metals: dict[str, float] = {}
    oxygen = 0.0
    for e, amt in amounts.items():
        el = e.symbol
        if el == "O":
            oxygen = float(amt)
        elif e.is_metal or e.is_metalloid or el in ("B", "Si", "Ge"):
            metals[el] = float(amt)
        else:
            raise ValueError(f"composition: {text!r} contains {el}; pdfusion's libraries hold metals and their "
                             "oxides only (e.g. CeO2, Fe2O3, Pt)")
    if not metals:
        raise ValueError(f"composition: {text!r} has no metal; give e.g. CeO2, Fe2O3 or Pt")
    return ParsedComposition(comp.reduced_formula, metals, oxygen)


def default_families(comp: ParsedComposition) -> tuple[str, ...]:
    """'metal' for a metal-only composition, 'oxide' for an oxide, both when unsure (noble-metal oxide, or
    less oxygen than M2O)."""
    if not comp.is_oxide:
        return ("metal",)
    if comp.metal in NOBLE_METALS or comp.o_per_metal < 0.5:
        return ("oxide", "metal")
    return ("oxide",)


def _oxide_candidates(comp: ParsedComposition, radii: Sequence[float], types: Sequence[str] | None,
                      max_mismatch: float | None, max_atoms: int) -> list[Particle]:
    names = list(PROTOTYPES) if types is None else [canonical_type(t) for t in types]
    target = comp.o_per_metal if comp.is_oxide else None

    def mismatch(name: str) -> float:
        m, o = PROTOTYPES[name].formula_unit
        return 0.0 if target is None else abs(o / m - target) / max(target, 1e-9)

    names = sorted(names, key=lambda n: (round(mismatch(n), 6), names.index(n)))
    if max_mismatch is not None:
        names = [n for n in names if mismatch(n) <= max_mismatch + 1e-9]
    out = []
    for name in names:
        seen: set[int] = set()
        for radius in radii:
            try:
                p = make_particle(name, comp.metal, float(radius))
            except ValueError:  # radius too small for this cell: no metal with a bonded oxygen
                continue
            if p is None or len(p) > max_atoms or len(p) in seen:
                continue
            seen.add(len(p))
            outer = float(np.linalg.norm(p.positions, axis=1).max())
            p.meta.update(family="oxide", diameter=round(2 * outer, 4), outer_radius=round(outer, 4),
                          prototype_o_per_metal=round(PROTOTYPES[name].formula_unit[1]
                                                      / PROTOTYPES[name].formula_unit[0], 4),
                          stoichiometry_mismatch=round(mismatch(name), 4))
            out.append(p)
    return out


def build_library(composition: str | ParsedComposition, radii: Sequence[float] = DEFAULT_RADII, *,
                  families: Sequence[str] | None = None, oxide_types: Sequence[str] | None = None,
                  cluster_types: Sequence[str] | None = None, max_mismatch: float | None = None,
                  max_atoms: int = 6000) -> list[Particle]:
    """Candidate particles for ``composition`` across ``radii`` (Å). ``families``: subset of ('oxide',
    'metal'), default :func:`default_families`; ``oxide_types`` / ``cluster_types`` restrict the prototypes;
    ``max_mismatch`` drops oxide prototypes whose O/M ratio differs from the formula's by more than this
    fraction; ``max_atoms`` skips larger particles (screening cost grows as N^2)."""
    comp = parse_composition(composition) if isinstance(composition, str) else composition
    radii = sorted({float(r) for r in radii})
    if not radii or not all(math.isfinite(r) and r > 0 for r in radii):
        raise ValueError(f"radii: need positive radii in Å, got {list(radii)}")
    fams = default_families(comp) if families is None else tuple(str(f).lower() for f in families)
    bad = [f for f in fams if f not in FAMILIES]
    if bad:
        raise ValueError(f"families: unknown {bad}; choose from {list(FAMILIES)}")
    out: list[Particle] = []
    if "oxide" in fams:
        out += _oxide_candidates(comp, radii, oxide_types, max_mismatch, max_atoms)
    if "metal" in fams:
        for p in cluster_series(comp.metal, cluster_types, radii, max_atoms=max_atoms):
            p.meta.setdefault("stoichiometry_mismatch", 0.0 if not comp.is_oxide else 1.0)
            p.meta["outer_radius"] = p.meta["radius"]
            out.append(p)
    for p in out:
        p.meta["label"] = f"{p.meta['structure_type']}_{p.meta['metal']}_{len(p)}"
        p.meta["n_atoms"] = len(p)
        if len(comp.metals) > 1:
            p.meta["note"] = f"mixed-metal composition {comp.formula} screened as {comp.metal}"
    if not out:
        raise ValueError(f"library: no candidates for {comp.formula} with radii {radii} and families {list(fams)}")
    return out
