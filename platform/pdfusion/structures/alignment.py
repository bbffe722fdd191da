"""Rigid alignment and per-element atom assignment of two point sets: the pieces RMSD recovery
(`evaluation.metrics`) and the diffusion's optimal-transport noise coupling (`diffusion.geometry.align_noise`)
both iterate."""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist


def kabsch(p: np.ndarray, q: np.ndarray, *, allow_reflection: bool = False) -> np.ndarray:
    """Rotation R (3x3) minimising |p @ R - q| for centred point sets p, q (N, 3)."""
    h = p.T @ q
    u, _, vt = np.linalg.svd(h)
    d = np.eye(3)
    if not allow_reflection and np.linalg.det(u @ vt) < 0:
        d[2, 2] = -1.0
    return u @ d @ vt


def assign_within_types(p: np.ndarray, q: np.ndarray, zp: np.ndarray, zq: np.ndarray) -> np.ndarray:
    """Permutation perm so that q[perm] is matched to p, within each element (Hungarian on squared distances)."""
    perm = np.empty(len(p), dtype=np.int64)
    for z in np.unique(zp):
        ip, iq = np.flatnonzero(zp == z), np.flatnonzero(zq == z)
        rows, cols = linear_sum_assignment(cdist(p[ip], q[iq], "sqeuclidean"))
        perm[ip[rows]] = iq[cols]
    return perm
