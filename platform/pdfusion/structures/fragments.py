"""Detached fragments of a generated particle: atoms (or small groups) with no bonded path to its body.

Why: sampled candidates leave a few atoms floating 4–18 Å from the particle (docs/training.md, round 6). No
real nanoparticle holds them, a scientist discards such a candidate, and the strict validity test
(`evaluation.metrics.validity`) fails it. Two atoms are bonded when closer than `BOND_CUTOFF`; the largest
bonded group is the particle.
"""

from __future__ import annotations

import numpy as np

__all__ = ["BOND_CUTOFF", "largest_fragment"]

# Å; every seed-oxides particle is one bonded group at this cutoff (largest nearest-neighbour distance 3.32 Å,
# Cs2O; 3 % of particles have one beyond 2.8 Å), and validity calls an atom stray beyond it.
BOND_CUTOFF = 3.5


def largest_fragment(positions: np.ndarray, cutoff: float = BOND_CUTOFF) -> np.ndarray:
    """(N,) bool: the atoms of the largest group connected by bonds shorter than `cutoff` Å (ties: the group of
    the lowest atom index). One atom or none: all kept."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    pos = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    n = len(pos)
    if n < 2:
        return np.ones(n, dtype=bool)
    pairs = cKDTree(pos).query_pairs(cutoff, output_type="ndarray")
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    return labels == np.bincount(labels).argmax()
