"""Structure-level metrics for generated candidates: validity, recovery (RMSD), stoichiometry, diversity; and the
best-of-K R_wp summary every model selection uses (:func:`best_of_k`, :data:`BEST_OF_K_METRIC`).

RMSD uses an optimal rigid alignment (Kabsch, reflections allowed only when asked) combined with an optimal
atom assignment (Hungarian, within each element), iterated because the best assignment depends on the
alignment and vice versa. Several initial orientations (principal axes with sign flips) avoid the local
minima a single start falls into for near-spherical particles.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree
from scipy.spatial.distance import cdist

from pdfusion.structures.alignment import assign_within_types, kabsch
from pdfusion.structures.fragments import BOND_CUTOFF
from pdfusion.structures.particle import OXYGEN, Particle

MIN_DISTANCE = 1.2  # Å: closer pairs are unphysical for oxides (the dataset filter uses the same bound)
# The score of a generator: over target PDFs, the median of each PDF's best R_wp among its K candidates (lower
# is better). With the "val_" prefix it is the trainer's validation score, the checkpoint and schedule-sweep
# metric; without, the evaluation table's and the guidance sweep's.
BEST_OF_K_METRIC = "rwp_best_median"
VAL_BEST_OF_K_METRIC = f"val_{BEST_OF_K_METRIC}"


def best_of_k(best_rwp: Sequence[float], *, prefix: str = "", empty: float = math.inf) -> dict[str, float]:
    """``{prefix}rwp_best_median`` (:data:`BEST_OF_K_METRIC`) and ``{prefix}rwp_best_mean`` of the per-PDF
    best-of-K R_wp values; both ``empty`` when there are none (inf: a minimising search ranks it last)."""
    arr = np.asarray(list(best_rwp), dtype=np.float64)
    if not arr.size:
        return {f"{prefix}{BEST_OF_K_METRIC}": empty, f"{prefix}rwp_best_mean": empty}
    return {f"{prefix}{BEST_OF_K_METRIC}": float(np.median(arr)), f"{prefix}rwp_best_mean": float(arr.mean())}


def min_distance(positions: np.ndarray) -> float:
    """Smallest interatomic distance (inf for fewer than two atoms)."""
    positions = np.asarray(positions, dtype=np.float64)
    if len(positions) < 2:
        return float("inf")
    d, _ = cKDTree(positions).query(positions, k=2)
    return float(d[:, 1].min())


def isolated_fraction(positions: np.ndarray, cutoff: float = BOND_CUTOFF) -> float:
    """Fraction of atoms with no neighbour within `cutoff` Å: atoms that drifted away from the particle."""
    positions = np.asarray(positions, dtype=np.float64)
    if len(positions) < 2:
        return 1.0
    d, _ = cKDTree(positions).query(positions, k=2)
    return float(np.mean(d[:, 1] > cutoff))


@dataclass(frozen=True)
class Validity:
    min_distance: float
    isolated_fraction: float
    valid: bool


def validity(positions: np.ndarray, *, min_dist: float = MIN_DISTANCE, cutoff: float = BOND_CUTOFF) -> Validity:
    """Valid = no pair closer than `min_dist` and no atom farther than `cutoff` from all others."""
    md = min_distance(positions)
    iso = isolated_fraction(positions, cutoff)
    return Validity(md, iso, bool(md >= min_dist and iso == 0.0))


def metal_oxygen_ratio(numbers: np.ndarray) -> float:
    numbers = np.asarray(numbers)
    n_o = int(np.sum(numbers == OXYGEN))
    return float(np.sum(numbers != OXYGEN)) / max(n_o, 1)


def stoichiometry_error(numbers: np.ndarray, reference: np.ndarray) -> float:
    """|M:O(candidate) - M:O(reference)| / M:O(reference)."""
    ref = metal_oxygen_ratio(reference)
    return abs(metal_oxygen_ratio(numbers) - ref) / max(ref, 1e-12)


def _principal_frame(x: np.ndarray) -> np.ndarray:
    _, vecs = np.linalg.eigh(x.T @ x)
    return vecs


def _random_rotations(n: int, seed: int = 0) -> np.ndarray:
    """n rotation matrices, uniform on SO(3) (deterministic)."""
    from scipy.spatial.transform import Rotation

    return Rotation.random(n, random_state=seed).as_matrix() if n else np.zeros((0, 3, 3))


def rmsd(
    candidate: Particle,
    reference: Particle,
    *,
    allow_reflection: bool = False,
    iterations: int = 20,
    random_starts: int = 48,
    refine_best: int = 6,
) -> float:
    """RMSD after optimal alignment and atom assignment; inf when the compositions differ.

    Starts: principal-axis frames (all sign choices) plus `random_starts` uniform rotations, because the
    inertia tensor of a near-spherical crystalline particle is degenerate and its axes are arbitrary. Each
    start gets one assignment + Kabsch step; the `refine_best` most promising are iterated to convergence.
    """
    zp, zq = candidate.numbers, reference.numbers
    if len(zp) != len(zq) or not np.array_equal(np.sort(zp), np.sort(zq)):
        return float("inf")
    p = candidate.positions - candidate.positions.mean(axis=0)
    q = reference.positions - reference.positions.mean(axis=0)
    fp, fq = _principal_frame(p), _principal_frame(q)
    starts = [fp @ np.diag(s) @ fq.T for s in itertools.product((1.0, -1.0), repeat=3)]
    starts += list(_random_rotations(random_starts))
    if not allow_reflection:
        starts = [r for r in starts if np.linalg.det(r) > 0]

    def step(rot: np.ndarray) -> tuple[float, np.ndarray]:
        perm = assign_within_types(p @ rot, q, zp, zq)
        rot = kabsch(p, q[perm], allow_reflection=allow_reflection)
        return float(np.sqrt(np.mean(np.sum((p @ rot - q[perm]) ** 2, axis=1)))), rot

    first = sorted((step(r) for r in starts), key=lambda t: t[0])[:refine_best]
    best = float("inf")
    for val, rot in first:
        for _ in range(iterations):
            new, rot = step(rot)
            if val - new < 1e-10:
                val = min(val, new)
                break
            val = new
        best = min(best, val)
    return best


def pairwise_diversity(candidates: list[np.ndarray], bins: np.ndarray | None = None) -> float:
    """Mean pairwise L1 distance between normalised interatomic-distance histograms of the candidates.

    Distance histograms are invariant to rotation, translation and permutation, and defined for different
    atom counts, so diversity is measured without alignment. 0 = all candidates identical.
    """
    if len(candidates) < 2:
        return 0.0
    bins = np.linspace(0.0, 20.0, 201) if bins is None else bins
    hists = []
    for pos in candidates:
        d = cdist(pos, pos)[np.triu_indices(len(pos), k=1)]
        h, _ = np.histogram(d, bins=bins)
        hists.append(h / max(h.sum(), 1))
    hists = np.asarray(hists)
    pairs = [np.abs(hists[i] - hists[j]).sum() for i, j in itertools.combinations(range(len(hists)), 2)]
    return float(np.mean(pairs))
