"""largest_fragment: the particle is its largest group of atoms bonded closer than 3.5 Å."""

from __future__ import annotations

import numpy as np

from pdfusion.structures.fragments import BOND_CUTOFF, largest_fragment
from pdfusion_testdata import rocksalt_particle


def test_detached_atoms_and_groups_are_dropped_ties_keep_the_first():
    chain = np.array([[0.0, 0, 0], [2, 0, 0], [4, 0, 0], [20, 0, 0], [22, 0, 0], [40, 0, 0]])
    assert largest_fragment(chain).tolist() == [True, True, True, False, False, False]
    # bonded means closer than the cutoff, along any path
    assert largest_fragment(np.array([[0.0, 0, 0], [BOND_CUTOFF - 0.01, 0, 0], [2 * BOND_CUTOFF, 0, 0]])).tolist() == \
        [True, True, False]
    assert largest_fragment(chain[[3, 4, 0, 1]]).tolist() == [True, True, False, False]
    assert largest_fragment(chain[:1]).tolist() == [True] and largest_fragment(np.zeros((0, 3))).tolist() == []


def test_a_real_cut_is_one_fragment_and_the_answer_is_rotation_and_permutation_invariant():
    p = rocksalt_particle(28, 4.18, 5.5)
    assert largest_fragment(p.positions).all()
    rng = np.random.default_rng(0)
    pos = np.concatenate([p.positions, [[15.0, 0, 0], [0, -16.0, 0]]])
    keep = largest_fragment(pos)
    assert keep[:len(p)].all() and not keep[len(p):].any()
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    perm = rng.permutation(len(pos))
    np.testing.assert_array_equal(largest_fragment(pos[perm] @ q.T), keep[perm])
