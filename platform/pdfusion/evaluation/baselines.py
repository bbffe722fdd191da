"""Baselines that every generated answer is measured against, through the same harness as the model.

- library lookup: the training structures whose stored PDFs fit the target best (the cluster-mining
  approach this field uses without ML); its K candidates are the K nearest library entries by R_wp
  (:mod:`pdfusion.inference.lookup`, which sampling uses too).
- unconditional: the same model with guidance γ = 0 (what the model knows without the PDF).
- random: a random particle with the right atom count, stoichiometry and density (a floor).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pdfusion.structures.particle import OXYGEN, Particle


def particle_radius(positions: np.ndarray) -> float:
    """Radius of the sphere that holds the particle's atoms (max distance from the centroid)."""
    centred = positions - positions.mean(axis=0)
    return float(np.sqrt((centred**2).sum(axis=1)).max())


def random_particle(
    numbers: Sequence[int], radius: float, rng: np.random.Generator, min_distance: float = 1.6, max_tries: int = 200
) -> Particle:
    """Random sequential addition inside a sphere of `radius` (the true particle's size, hence its density),
    keeping pairs at least `min_distance` apart where possible. Same atoms (count and stoichiometry)."""
    numbers = np.asarray(numbers, dtype=np.int64)
    rng_numbers = rng.permutation(numbers)
    pts: list[np.ndarray] = []
    for _ in rng_numbers:
        best, best_d = None, -1.0
        for _ in range(max_tries):
            v = rng.normal(size=3)
            p = v / np.linalg.norm(v) * radius * rng.random() ** (1 / 3)
            d = np.min(np.linalg.norm(np.asarray(pts) - p, axis=1)) if pts else np.inf
            if d >= min_distance:
                best = p
                break
            if d > best_d:
                best, best_d = p, d
        pts.append(best)
    pos = np.asarray(pts)
    return Particle(rng_numbers, pos - pos.mean(axis=0), {"baseline": "random"})


def stoichiometric_numbers(metal: int, n_atoms: int, metal_fraction: float) -> np.ndarray:
    """`n_atoms` atomic numbers with round(metal_fraction * n) metal atoms, the rest oxygen."""
    n_m = int(np.clip(round(metal_fraction * n_atoms), 1, n_atoms - 1))
    return np.array([metal] * n_m + [OXYGEN] * (n_atoms - n_m), dtype=np.int64)
