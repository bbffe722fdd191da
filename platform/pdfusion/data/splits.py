"""Deterministic, group-aware train/validation splits.

Structures of one metal (or formula, or structure type) are strongly correlated, so a random split
leaks them across train and validation; ``group_split`` keeps every group whole on one side.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

SPLIT_BY = ("metal", "formula", "type", "random")
_META_KEY = {"metal": "metal", "formula": "formula", "type": "structure_type"}


def group_keys(meta: Mapping[str, Sequence[Any]], by: str) -> list[str]:
    """Group key per structure from a metadata column table (``StoreReader.metadata()`` layout).

    ``by``: ``metal``, ``formula``, ``type`` (structure type) or ``random`` (every structure its own group).
    """
    if by not in SPLIT_BY:
        raise ValueError(f"split_by: unknown {by!r}; choose one of {SPLIT_BY}")
    if by == "random":
        n = len(next(iter(meta.values()))) if meta else 0
        return [f"#{i}" for i in range(n)]
    col = meta[_META_KEY[by]]
    missing = [i for i, v in enumerate(col) if v in (None, "")]
    if missing:
        raise ValueError(f"split_by={by!r}: structure {missing[0]} has no {_META_KEY[by]!r} metadata; use "
                         "split_by='random'")
    return [str(v) for v in col]


def group_split(groups: Sequence[str], val_fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train_idx, val_idx), sorted int64 arrays; no group on both sides; the same for the same inputs.

    Groups are shuffled with ``seed`` and moved to validation one by one while that brings the
    validation size closer to ``val_fraction * n``; both sides are non-empty.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction: must be in (0, 1), got {val_fraction}")
    groups = [str(g) for g in groups]
    n = len(groups)
    uniq = sorted(set(groups))
    if len(uniq) < 2:
        raise ValueError(f"groups: need at least 2 distinct groups to split, got {len(uniq)}; use split_by='random'")
    index = {g: k for k, g in enumerate(uniq)}
    gid = np.fromiter((index[g] for g in groups), dtype=np.int64, count=n)
    counts = np.bincount(gid, minlength=len(uniq))
    order = np.random.default_rng(seed).permutation(len(uniq))
    target = val_fraction * n
    in_val = np.zeros(len(uniq), dtype=bool)
    size = 0
    for g in order:
        if size >= target:
            break
        if abs(size + counts[g] - target) <= abs(size - target) or size == 0:
            in_val[g] = True
            size += int(counts[g])
    if in_val.all():  # one giant group took everything: give the largest-left group back to train
        in_val[order[-1]] = False
    mask = in_val[gid]
    return np.flatnonzero(~mask).astype(np.int64), np.flatnonzero(mask).astype(np.int64)


def _groups(ds, by: str) -> list[str]:
    return [str(i) for i in range(len(ds))] if by == "random" else ds.groups(by)


def split_indices(ds, data_cfg, max_atoms: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(train_idx, val_idx) of a `StructureDataset` for a `DataConfig`: grouped by `data_cfg.split_by`,
    then structures larger than `data_cfg.max_atoms` (and `max_atoms`, e.g. the model's limit) dropped.

    Training, evaluation and sweeps all call this, so a model's held-out groups are the same everywhere."""
    groups = _groups(ds, data_cfg.split_by)
    train_idx, val_idx = group_split(groups, data_cfg.val_fraction, data_cfg.split_seed)
    cap = data_cfg.max_atoms if max_atoms is None else min(data_cfg.max_atoms, max_atoms)
    sizes = ds.sizes()
    keep = lambda idx: np.asarray([i for i in idx if sizes[i] <= cap], dtype=np.int64)  # noqa: E731
    return keep(train_idx), keep(val_idx)


def extra_train_indices(ds, extra, data_cfg, max_atoms: int | None = None) -> np.ndarray:
    """Indices of `extra` (another `StructureDataset`, e.g. generated off-library particles) that may join the
    training split of `ds`: within the atom cap and of no group `ds`'s split holds out for validation.

    Why: extra data must not leak a held-out metal into training, or the held-out evaluation is not held out."""
    groups = _groups(ds, data_cfg.split_by)
    _, val_idx = group_split(groups, data_cfg.val_fraction, data_cfg.split_seed)
    held = set() if data_cfg.split_by == "random" else {groups[i] for i in val_idx}
    extra_groups = [""] * len(extra) if data_cfg.split_by == "random" else extra.groups(data_cfg.split_by)
    cap = data_cfg.max_atoms if max_atoms is None else min(data_cfg.max_atoms, max_atoms)
    sizes = extra.sizes()
    return np.asarray([i for i in range(len(extra)) if sizes[i] <= cap and extra_groups[i] not in held],
                      dtype=np.int64)
