"""Rigid alignment (Kabsch) and per-element assignment shared by RMSD recovery and the OT noise coupling."""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

from pdfusion.structures.alignment import assign_within_types, kabsch


def test_kabsch_recovers_a_proper_rotation_even_from_a_reflection():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(30, 3))
    a -= a.mean(0)
    rot = Rotation.random(random_state=1).as_matrix()
    np.testing.assert_allclose(kabsch(a, a @ rot), rot, atol=1e-12)
    mirrored = kabsch(a, a * np.array([1.0, 1.0, -1.0]))
    assert np.linalg.det(mirrored) > 0
    assert np.linalg.det(kabsch(a, a * np.array([1.0, 1.0, -1.0]), allow_reflection=True)) < 0


def test_assignment_undoes_a_permutation_within_each_element_only():
    rng = np.random.default_rng(1)
    p = rng.normal(size=(12, 3)) * 3
    z = np.array([22, 8] * 6)
    shuffle = np.concatenate([rng.permutation(np.flatnonzero(z == k)) for k in (22, 8)])
    q, zq = p[shuffle], z[shuffle]
    perm = assign_within_types(p, q, z, zq)
    np.testing.assert_array_equal(q[perm], p)
    np.testing.assert_array_equal(zq[perm], z)
