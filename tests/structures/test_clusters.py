"""Metal cluster prototypes: magic numbers, nearest-neighbour distances, elements, size series."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial import cKDTree

from pdfusion.structures.clusters import (
    CLUSTER_TYPES,
    KNOWN_METALS,
    bulk_sphere,
    cluster_series,
    cuboctahedron,
    decahedron,
    icosahedron,
    make_cluster,
    metal_lattice,
    octahedron,
    truncated_octahedron,
)


def nn_distance(p) -> float:
    d, _ = cKDTree(p.positions).query(p.positions, k=2)
    return float(np.median(d[:, 1]))


@pytest.mark.parametrize("shells, n", [(2, 13), (3, 55), (4, 147)])
def test_magic_numbers(shells, n):
    assert len(icosahedron("Pt", shells)) == n
    assert len(cuboctahedron("Pt", shells)) == n


def test_polyhedra_counts():
    assert len(octahedron("Au", 4)) == 44
    assert len(truncated_octahedron("Au", 1)) == 38
    assert len(truncated_octahedron("Au", 2)) == 201
    assert len(decahedron("Au", 3, 3, 0)) == 55
    assert decahedron("Au", 3, 2, 1).meta["structure_type"] == "marks_decahedron"
    assert decahedron("Au", 3, 2, 0).meta["structure_type"] == "ino_decahedron"


@pytest.mark.parametrize("metal, a", [("Pt", 3.9242), ("Au", 4.0782), ("Ni", 3.524)])
def test_fcc_nearest_neighbour_is_a_over_sqrt2(metal, a):
    assert KNOWN_METALS[metal].a == pytest.approx(a, abs=1e-3)
    p = bulk_sphere(metal, 8.0)
    assert p.meta["structure_type"] == "fcc_sphere"
    assert nn_distance(p) == pytest.approx(a / math.sqrt(2), abs=1e-9)
    # the fcc motifs share the bulk nearest-neighbour distance (icosahedra: between shells)
    assert nn_distance(cuboctahedron(metal, 3)) == pytest.approx(a / math.sqrt(2), abs=1e-6)
    assert nn_distance(bulk_sphere(metal, 8.0, a=4.0)) == pytest.approx(4.0 / math.sqrt(2), abs=1e-9)


def test_bcc_and_hcp_spheres():
    fe = bulk_sphere("Fe", 7.0)
    assert fe.meta["structure_type"] == "bcc_sphere"
    assert nn_distance(fe) == pytest.approx(2.8665 * math.sqrt(3) / 2, abs=1e-6)
    co = bulk_sphere("Co", 7.0)
    assert co.meta["structure_type"] == "hcp_sphere"
    a, c = 2.5071, 4.0695  # c/a below ideal: the nearest neighbours sit in the next layer
    assert nn_distance(co) == pytest.approx(min(a, math.sqrt(a * a / 3 + c * c / 4)), abs=1e-6)
    assert metal_lattice("Co").nn_distance == pytest.approx(nn_distance(co), abs=1e-9)
    # another lattice for the same metal keeps its nearest-neighbour distance
    pt_hcp = bulk_sphere("Pt", 7.0, "hcp")
    assert nn_distance(pt_hcp) == pytest.approx(3.9242 / math.sqrt(2), abs=1e-6)


@pytest.mark.parametrize("kind", list(CLUSTER_TYPES))
def test_every_type_has_the_element_and_meta(kind):
    size = {"fcc_sphere": 6.0, "hcp_sphere": 6.0, "bcc_sphere": 6.0, "icosahedron": 3, "cuboctahedron": 3,
            "octahedron": 4, "truncated_octahedron": 1, "ino_decahedron": (3, 2, 0),
            "marks_decahedron": (3, 2, 1)}[kind]
    p = make_cluster(kind, "Au", size)
    assert set(p.numbers.tolist()) == {79}
    assert p.meta["structure_type"] == kind and p.meta["family"] == "metal" and p.meta["metal"] == "Au"
    assert np.allclose(p.positions.mean(0), 0, atol=1e-9)
    assert p.meta["diameter"] == pytest.approx(2 * np.linalg.norm(p.positions, axis=1).max(), abs=1e-3)
    assert p.min_distance() > 2.0


def test_series_spans_the_radii_and_is_unique():
    ps = cluster_series("Pd", radii=(5.0, 9.0))
    kinds = {p.meta["structure_type"] for p in ps}
    assert kinds == set(CLUSTER_TYPES)
    for p in ps:
        assert 0.85 * 5.0 - 1e-6 <= p.meta["radius"] <= 1.1 * 9.0 + 1e-6
    keys = [(p.meta["structure_type"], len(p)) for p in ps]
    assert len(keys) == len(set(keys))


def test_lattice_fallback_and_errors():
    assert metal_lattice("Sr").symmetry in ("fcc", "bcc", "hcp")  # from ASE's reference states
    with pytest.raises(ValueError, match="structure_type"):
        make_cluster("dodecahedron", "Pt", 3)
    with pytest.raises(ValueError, match="radius"):
        bulk_sphere("Pt", -1.0)
    with pytest.raises(ValueError, match="shells"):
        icosahedron("Pt", 0)
    with pytest.raises(ValueError, match="metal"):
        bulk_sphere("Xx", 5.0)
