"""Baselines that every generated answer is measured against, through the same harness as the model.

- library lookup: the training structures whose stored PDFs fit the target best (the cluster-mining
  approach this field uses without ML); its K candidates are the K nearest library entries by R_wp.
- unconditional: the same model with guidance γ = 0 (what the model knows without the PDF).
- random: a random particle with the right atom count, stoichiometry and density (a floor).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from pdfusion.pdf import rwp
from pdfusion.structures.particle import OXYGEN, Particle


def _library_rwp(target_pdfs, library_pdfs, chunk_elements: int):
    """R_wp of every (target, library) pair, yielded as (b, L) blocks of at most `chunk_elements` values."""
    t = torch.as_tensor(np.atleast_2d(np.asarray(target_pdfs)), dtype=torch.float64)
    lib = torch.as_tensor(np.asarray(library_pdfs), dtype=torch.float64)
    if lib.ndim != 2 or lib.shape[0] == 0:
        raise ValueError(f"library_pdfs: expected a non-empty (L, n_r) array, got shape {tuple(lib.shape)}")
    if t.shape[-1] != lib.shape[-1]:
        raise ValueError(f"target_pdfs: {t.shape[-1]} points but library PDFs have {lib.shape[-1]}")
    per = max(1, chunk_elements // max(1, lib.numel()))
    for s in range(0, t.shape[0], per):
        tb = t[s : s + per, None, :]
        yield rwp(lib[None, :, :].expand(tb.shape[0], -1, -1), tb.expand(-1, lib.shape[0], -1))


@torch.no_grad()
def nearest_library(target_pdfs: np.ndarray, library_pdfs: np.ndarray, k: int,
                    chunk_elements: int = 20_000_000) -> np.ndarray:
    """(B, k) indices of the k library PDFs with the lowest R_wp to each target, best first."""
    k = min(k, len(library_pdfs))
    blocks = [torch.topk(sc, k, dim=1, largest=False).indices
              for sc in _library_rwp(target_pdfs, library_pdfs, chunk_elements)]
    return torch.cat(blocks).numpy()


@torch.no_grad()
def library_lookup(target_pdfs: torch.Tensor | np.ndarray, library_pdfs: torch.Tensor | np.ndarray,
                   chunk_elements: int = 20_000_000) -> tuple[np.ndarray, np.ndarray]:
    """For each target PDF, the index of the library PDF with the lowest R_wp, and that R_wp."""
    best = [sc.min(dim=1) for sc in _library_rwp(target_pdfs, library_pdfs, chunk_elements)]
    return torch.cat([b.indices for b in best]).numpy(), torch.cat([b.values for b in best]).numpy()


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
