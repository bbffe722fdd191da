"""Store root or seed-oxides folder -> torch ``Dataset`` of PyG ``Data`` (docs/ARCHITECTURE.md layout).

Each item: ``pos`` (N,3) float32 centred at the centroid, ``z`` (N,) int64, ``x`` (N,7) float32
seed-oxides node columns, ``y`` (1, n_r) float32 G(r), ``metal`` (1,) int64 metal Z, ``num_nodes``;
Python attributes ``structure_type``, ``formula``, ``radius`` (float; NaN where the source does not
record one, e.g. ``graphs_fixed_num_135`` names, because PyG drops attributes set to None), ``source``.

Seed folders are small (1,536 files, ~40 MB as arrays), so they are read once with a progress bar
and cached per process (keyed by folder, file names, sizes and mtimes): building train and
validation views, or reopening in a Ray worker's next trial, costs nothing. Stores are read shard by
shard into memory when they fit ``preload_bytes``; larger stores are read item by item.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from torch_geometric.data import Data
from tqdm.auto import tqdm

from pdfusion.data.seed import seed_files
from pdfusion.data.splits import group_keys
from pdfusion.data.store import MANIFEST, StoreReader, StoreRecord
from pdfusion.structures.io import read_seed_h5

PRELOAD_BYTES = 1 << 30
_META = ("id", "structure_type", "formula", "source", "metal", "radius")


def spread_indices(n: int, k: int | None) -> np.ndarray:
    """``k`` indices spread evenly over ``range(n)`` (all of them when k is None or >= n): a small
    deterministic subset still covers every structure type and metal of a sorted collection."""
    if k is None or k >= n:
        return np.arange(n, dtype=np.int64)
    if k < 1:
        raise ValueError(f"max_structures: must be >= 1 or None, got {k}")
    return np.unique(np.linspace(0, n - 1, k).round().astype(np.int64))


@functools.lru_cache(maxsize=8)
def _load_seed_folder(folder: str, names: tuple[str, ...], stamp: tuple) -> tuple[np.ndarray, list[StoreRecord]]:
    del stamp  # part of the cache key only: a changed file invalidates the entry
    records, r0 = [], None
    for name in tqdm(names, desc=f"load {Path(folder).name}", unit="file"):
        rec = read_seed_h5(Path(folder) / name)
        if r0 is None:
            r0 = rec.r
        elif rec.r.shape != r0.shape or (rec.r != r0).any():
            raise ValueError(f"{Path(folder) / name}: key 'r' differs from the r grid of {names[0]}; one dataset needs "
                             "one r grid")
        records.append(StoreRecord.from_seed(rec))
    return r0, records


class StructureDataset(Dataset):
    """Indexable PyG ``Data`` over preloaded records or a :class:`StoreReader`; see the module docstring."""

    def __init__(self, r_grid: np.ndarray, *, records: Sequence[StoreRecord] | None = None,
                 reader: StoreReader | None = None, index: np.ndarray | None = None, path: str = ""):
        if (records is None) == (reader is None):
            raise ValueError("StructureDataset: give exactly one of records= or reader=")
        self.r_grid = np.asarray(r_grid, dtype=np.float64)
        self.path = path
        self._records = records
        self._reader = reader
        total = len(records) if records is not None else len(reader)
        self._index = np.arange(total, dtype=np.int64) if index is None else np.asarray(index, dtype=np.int64)
        self._sizes: np.ndarray | None = None
        self._meta: dict[str, list] | None = None

    def __len__(self) -> int:
        return int(self._index.shape[0])

    def record(self, i: int) -> StoreRecord:
        j = int(self._index[i])
        return self._records[j] if self._records is not None else self._reader[j]

    def __getitem__(self, i: int) -> Data:
        return to_data(self.record(i))

    def sizes(self) -> np.ndarray:
        """Atom count per item (int64), without building the items."""
        if self._sizes is None:
            if self._records is not None:
                all_sizes = np.fromiter((len(r.numbers) for r in self._records), dtype=np.int64,
                                        count=len(self._records))
            else:
                all_sizes = self._reader.sizes()
            self._sizes = all_sizes[self._index]
        return self._sizes

    def metadata(self) -> dict[str, list]:
        """Columns id, structure_type, formula, source, metal, radius for the items of this dataset."""
        if self._meta is None:
            if self._records is not None:
                full = {c: [r.meta.get(c, r.id if c == "id" else None) for r in self._records] for c in _META}
            else:
                full = self._reader.metadata()
            self._meta = {c: [full[c][j] for j in self._index] for c in _META}
        return self._meta

    def groups(self, by: str) -> list[str]:
        """Group key per item for :func:`pdfusion.data.splits.group_split` (metal / formula / type / random)."""
        return group_keys(self.metadata(), by)

    def subset(self, indices: Sequence[int] | np.ndarray) -> StructureDataset:
        """A view on some items (sharing loaded data) that keeps ``sizes``/``groups``/``r_grid``."""
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise IndexError(f"subset: indices must be in [0, {len(self)}), got {idx.min()}..{idx.max()}")
        return StructureDataset(self.r_grid, records=self._records, reader=self._reader,
                                index=self._index[idx], path=self.path)


def _metal_z(rec: StoreRecord) -> int:
    sym = rec.meta.get("metal")
    if sym:
        from pymatgen.core import Element

        return int(Element(sym).Z)
    others = np.unique(rec.numbers[rec.numbers != 8])
    if others.size != 1:
        raise ValueError(f"{rec.meta.get('source')}: expected one metal besides oxygen, found Z={others.tolist()}")
    return int(others[0])


def to_data(rec: StoreRecord) -> Data:
    """One record as a PyG ``Data`` in the shared convention (float32 geometry, centred positions)."""
    pos = np.asarray(rec.positions, dtype=np.float64)
    pos = pos - pos.mean(axis=0, keepdims=True)  # centre in float64, then cast
    pdf = np.asarray(rec.pdf)
    data = Data(
        pos=torch.from_numpy(pos.astype(np.float32)),
        z=torch.from_numpy(np.asarray(rec.numbers, dtype=np.int64).copy()),
        x=torch.from_numpy(np.asarray(rec.node_attributes, dtype=np.float32).copy()),
        y=torch.from_numpy(pdf.astype(np.float32).reshape(1, -1)),
        metal=torch.tensor([_metal_z(rec)], dtype=torch.int64),
        num_nodes=int(pos.shape[0]),
    )
    radius = rec.meta.get("radius")
    data.structure_type = str(rec.meta.get("structure_type") or "")
    data.formula = str(rec.meta.get("formula") or "")
    data.radius = math.nan if radius is None else float(radius)
    data.source = str(rec.meta.get("source") or rec.meta.get("id") or "")
    return data


def open_dataset(path: str | Path, max_structures: int | None = None, *,
                 preload_bytes: int = PRELOAD_BYTES) -> StructureDataset:
    """A :class:`StructureDataset` over a store root (has ``manifest.json``) or a seed-oxides folder.

    ``max_structures`` keeps that many items spread evenly over the sorted collection.
    """
    p = Path(path)
    if (p / MANIFEST).is_file():
        reader = StoreReader(p)
        index = spread_indices(len(reader), max_structures)
        n_r = reader.r_grid.shape[0]
        if len(reader) * n_r * 8 + int(reader.sizes().sum()) * 80 <= preload_bytes:
            records: list[StoreRecord] = []
            for s in tqdm(reader.manifest.shards, desc=f"load {p.name}", unit="shard"):
                records.extend(reader.read_shard(s.name))
            reader.close()
            return StructureDataset(reader.r_grid, records=records, index=index, path=str(p))
        return StructureDataset(reader.r_grid, reader=reader, index=index, path=str(p))
    if p.is_dir():
        files = seed_files(p)
        keep = spread_indices(len(files), max_structures)
        chosen = [files[i] for i in keep]
        stamp = tuple((f.stat().st_size, f.stat().st_mtime_ns) for f in chosen)
        r_grid, records = _load_seed_folder(str(p.resolve()), tuple(f.name for f in chosen), stamp)
        return StructureDataset(r_grid, records=records, path=str(p))
    raise FileNotFoundError(f"{p}: neither a pdfusion store (no {MANIFEST}) nor a folder of seed-oxides .h5 files")


def dataset_info(ds: StructureDataset) -> dict[str, Any]:
    """Counts for logs: structures, atoms (min/median/max), distinct metals/types."""
    s = ds.sizes()
    meta = ds.metadata()
    return {
        "n_structures": len(ds),
        "atoms_min": int(s.min()) if s.size else 0,
        "atoms_median": float(np.median(s)) if s.size else 0.0,
        "atoms_max": int(s.max()) if s.size else 0,
        "n_metals": len({m for m in meta["metal"] if m}),
        "n_types": len({t for t in meta["structure_type"] if t}),
    }
