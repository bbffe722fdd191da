"""The solve library: composition parsing, family choice, stoichiometry order, labels."""

from __future__ import annotations

import pytest

from pdfusion.inference.library import build_library, default_families, parse_composition
from pdfusion.structures.clusters import CLUSTER_TYPES
from pdfusion.structures.prototypes import PROTOTYPES


def test_parse_composition():
    c = parse_composition("Fe2O3")
    assert c.metals == {"Fe": 2.0} and c.oxygen == 3.0 and c.is_oxide and c.metal == "Fe"
    assert c.o_per_metal == pytest.approx(1.5)
    pt = parse_composition(" Pt ")
    assert not pt.is_oxide and pt.metal == "Pt"
    assert parse_composition("CoFe2O4").metal == "Fe"  # the majority metal
    for bad, what in (("NaCl", "Cl"), ("", "formula"), ("Qq2", "parse"), ("O2", "no metal")):
        with pytest.raises(ValueError, match="composition") as exc:
            parse_composition(bad)
        assert what in str(exc.value)


def test_default_families():
    assert default_families(parse_composition("Pt")) == ("metal",)
    assert default_families(parse_composition("CeO2")) == ("oxide",)
    assert default_families(parse_composition("PtO2")) == ("oxide", "metal")  # noble metal: unsure
    assert default_families(parse_composition("Cu4O")) == ("oxide", "metal")  # less O than M2O


def test_oxide_library_has_every_prototype_matching_stoichiometry_first():
    lib = build_library("CeO2", radii=(4.0, 6.0))
    types = [p.meta["structure_type"] for p in lib]
    assert set(types) == set(PROTOTYPES)  # all 13
    assert all(p.meta["family"] == "oxide" for p in lib)
    # MO2 prototypes (fluorite, rutile, CdI2) come before the others
    mismatch = [p.meta["stoichiometry_mismatch"] for p in lib]
    assert mismatch == sorted(mismatch)
    assert ({p.meta["structure_type"] for p in lib if p.meta["stoichiometry_mismatch"] == 0}
            == {"fluorite", "rutile", "cdi2"})
    assert all(set(p.numbers.tolist()) == {58, 8} for p in lib)
    labels = [p.meta["label"] for p in lib]
    assert len(labels) == len(set(labels))
    for p in lib:
        assert p.meta["n_atoms"] == len(p) and p.meta["diameter"] > 0


def test_metal_library_and_filters():
    lib = build_library("Pt", radii=(5.0, 7.0))
    assert {p.meta["structure_type"] for p in lib} <= set(CLUSTER_TYPES)
    assert {p.meta["family"] for p in lib} == {"metal"}
    only = build_library("Fe2O3", radii=(5.0,), max_mismatch=0.2)
    assert {p.meta["structure_type"] for p in only} == {"corundum", "spinel"}  # O/M 1.5 and 1.33
    both = build_library("Fe2O3", radii=(5.0,), families=("oxide", "metal"), cluster_types=("icosahedron",))
    assert {p.meta["family"] for p in both} == {"oxide", "metal"}
    with pytest.raises(ValueError, match="families"):
        build_library("Pt", radii=(5.0,), families=("sulfide",))
    with pytest.raises(ValueError, match="radii"):
        build_library("Pt", radii=(-1.0,))


def test_inference_keeps_its_layer():
    """structures -> pdf -> data -> diffusion -> inference -> evaluation: no import of the layers above."""
    import re
    from pathlib import Path

    import pdfusion.inference

    for path in Path(pdfusion.inference.__file__).parent.glob("*.py"):
        text = path.read_text()
        assert not re.search(r"pdfusion\.(evaluation|training|serving|tuning|cli)\b", text), path.name
