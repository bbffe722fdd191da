"""Import a seed-oxides folder of ``.h5`` files into a pdfusion store (resumable, bit-exact).

Files are taken in sorted name order and written in shards of ``shard_size`` through
:class:`~pdfusion.data.store.StoreWriter`, whose record id is the file name: rerunning an interrupted
import skips every file already stored and writes only the rest. Edges (``edge_indices``,
``edge_attributes``) are not stored: they are a cutoff graph that models rebuild from positions.
"""

from __future__ import annotations

from pathlib import Path

from tqdm.auto import tqdm

from pdfusion.data.store import Manifest, StoreRecord, StoreWriter
from pdfusion.structures.io import read_seed_h5


def seed_files(src_dir: str | Path) -> list[Path]:
    """The ``*.h5`` files of a seed-oxides folder, sorted by name; a clear error when there are none."""
    src = Path(src_dir)
    if not src.is_dir():
        raise FileNotFoundError(f"{src}: not a directory; give a seed-oxides folder such as .../graphs_h5")
    files = sorted(src.glob("*.h5"))
    if not files:
        raise ValueError(f"{src}: no .h5 files; give a seed-oxides folder such as .../graphs_h5")
    return files


def import_seed(src_dir: str | Path, out_root: str | Path, shard_size: int = 256, *,
                compression: str | None = "gzip", progress: bool = True) -> Manifest:
    """Copy every seed-oxides file of ``src_dir`` into the store at ``out_root``; returns its manifest."""
    files = seed_files(src_dir)
    first = read_seed_h5(files[0])
    out = Path(out_root)
    with StoreWriter(out, first.r, shard_size=shard_size, compression=compression) as writer:
        done = Manifest.load_or_empty(out).ids()
        todo = [f for f in files if f.name not in done]
        for f in tqdm(todo, desc=f"import {Path(src_dir).name}", unit="file", disable=not progress):
            rec = read_seed_h5(f)
            if rec.r.shape != first.r.shape or (rec.r != first.r).any():
                raise ValueError(f"{f}: key 'r' differs from the r grid of {files[0].name}; one store holds one r grid")
            writer.add(StoreRecord.from_seed(rec))
    return Manifest.load(out)
