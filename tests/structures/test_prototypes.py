"""Prototypes: every one builds for many metals with the right stoichiometry; aliases; lattice rule
checked against lattices measured from the seed-oxides files; lattice overrides; the bond rule."""

from __future__ import annotations

import math

import h5py
import numpy as np
import pytest

from pdfusion.structures.prototypes import (
    KNOWN_LATTICES,
    PROTOTYPES,
    PrototypeError,
    canonical_type,
    lattice_parameters,
    metal_radius_pm,
    min_mo_distance,
    rule_lattice,
    unit_cell,
)

METALS = ("Ti", "Zn", "Mg", "Cs", "B", "Pt", "La")
SEED_TYPES = ("antifluorite", "cdi2", "fluorite", "rocksalt", "reo3", "rutile", "spinel", "wurtzite")


def test_at_least_twelve_prototypes_including_the_seed_eight():
    assert set(SEED_TYPES) <= set(PROTOTYPES)
    assert len(PROTOTYPES) >= 12


@pytest.mark.parametrize("name", sorted(PROTOTYPES))
@pytest.mark.parametrize("metal", METALS)
def test_unit_cell_stoichiometry_and_geometry(name, metal):
    cell = unit_cell(name, metal)
    m, o = PROTOTYPES[name].formula_unit
    n_m = int((cell.numbers != 8).sum())
    n_o = int((cell.numbers == 8).sum())
    assert n_m * o == n_o * m, f"{name}: {n_m} metals, {n_o} oxygens"
    # no two atoms of the periodic crystal closer than 1.2 A, and M-O bonds of a sane length
    frac = cell.frac_coords
    d = frac[:, None, :] - frac[None, :, :]
    d -= np.round(d)
    dist = np.linalg.norm(d @ cell.lattice, axis=-1) + np.eye(len(frac)) * 99
    assert dist.min() > 1.2
    assert 1.3 < min_mo_distance(cell) < 3.6


@pytest.mark.parametrize(
    "alias, name",
    [("AntiFlourite", "antifluorite"), ("antifluorite", "antifluorite"), ("ANTI-FLUORITE", "antifluorite"),
     ("Flourite", "fluorite"), ("NaCl", "rocksalt"), ("rock_salt", "rocksalt"), ("cdi2", "cdi2"),
     ("ReO3", "reo3"), ("RUTILE", "rutile"), ("Spinel", "spinel"), ("Wurtzite", "wurtzite"),
     ("zinc blende", "zincblende"), ("CsCl", "cscl"), ("Al2O3", "corundum"), ("PbO", "litharge")],
)
def test_aliases(alias, name):
    assert canonical_type(alias) == name


def test_unknown_type_and_metal_errors_name_the_field():
    with pytest.raises(PrototypeError, match="structure_type"):
        canonical_type("perovskite-ish")
    with pytest.raises(PrototypeError, match="metal"):
        unit_cell("rutile", "Xx")
    with pytest.raises(PrototypeError, match="metal"):
        unit_cell("rutile", "O")


def test_lattice_override():
    assert lattice_parameters("rocksalt", "Ti", (4.5,))["a"] == 4.5
    cell = unit_cell("rutile", "Ti", (4.6, 3.0))
    assert np.allclose(np.diag(cell.lattice), [4.6, 4.6, 3.0])
    # a alone for a non-cubic cell keeps the rule's c/a
    rule = rule_lattice("wurtzite", "Zn")
    got = lattice_parameters("wurtzite", "Zn", (3.0,))
    assert math.isclose(got["c"] / got["a"], rule["c"] / rule["a"])
    with pytest.raises(PrototypeError, match="lattice"):
        lattice_parameters("rocksalt", "Ti", (4.0, 5.0))
    with pytest.raises(PrototypeError, match="lattice"):
        lattice_parameters("rutile", "Ti", (-1.0, 3.0))


def test_rule_is_linear_in_metal_radius_and_known_compounds_use_real_lattices():
    # Ag and Au have the same metallic radius, so the same rule lattice
    assert metal_radius_pm("Ag") == metal_radius_pm("Au")
    assert rule_lattice("fluorite", "Ag") == rule_lattice("fluorite", "Au")
    assert lattice_parameters("rocksalt", "Ti")["a"] == KNOWN_LATTICES[("rocksalt", "Ti")]["a"] == 4.177
    bigger = rule_lattice("cdi2", "Cs")
    smaller = rule_lattice("cdi2", "Ni")
    assert bigger["a"] > smaller["a"] and bigger["c"] > smaller["c"]


@pytest.mark.parametrize("name, like", [("zincblende", "wurtzite"), ("cscl", "fluorite"), ("corundum", "rocksalt"),
                                        ("cuprite", "zincblende"), ("litharge", "wurtzite")])
def test_bond_rule_matches_reference_bond(name, like):
    """A prototype without a fitted line gets the shortest M-O bond of its reference prototype (at the
    reference's radius-rule lattice), for any metal."""
    for metal in ("Zn", "Cu", "Sr", "Ti"):
        ref = min_mo_distance(unit_cell(like, metal, _rule(like, metal)))
        assert math.isclose(min_mo_distance(unit_cell(name, metal)), ref, rel_tol=1e-9)


def _rule(name, metal):
    par = rule_lattice(name, metal)
    return (par["a"],) if PROTOTYPES[name].system == "cubic" else (par["a"], par["c"])


@pytest.mark.seed
def test_rule_reproduces_seed_lattices(seed_h5_dir):
    """Cubic cell lengths measured from seed files (closed forms of the M-O distance) equal the rule's."""
    cases = {"NaCl": ("Ag", lambda d: 2 * d), "Flourite": ("Zn", lambda d: 4 * d / math.sqrt(3)),
             "AntiFlourite": ("Cs", lambda d: 4 * d / math.sqrt(3)), "ReO3": ("W", lambda d: 2 * d)}
    formula = {"NaCl": "{}O", "Flourite": "{}O2", "AntiFlourite": "{}2O", "ReO3": "{}O3"}
    for seed_type, (metal, a_of_d) in cases.items():
        with h5py.File(seed_h5_dir / f"graph_{seed_type}_{formula[seed_type].format(metal)}_r6.h5") as f:
            na = f["node_attributes"][:]
        z, pos = na[:, 0], na[:, 4:7]
        d = np.linalg.norm(pos[z != 8][:, None] - pos[z == 8][None], axis=-1).min()
        assert math.isclose(a_of_d(d), lattice_parameters(seed_type, metal)["a"], abs_tol=2e-4), seed_type
