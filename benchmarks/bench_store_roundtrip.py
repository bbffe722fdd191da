"""Benchmark: seed-oxides folders -> sharded store -> back, checked bit for bit.

For each folder (graphs_h5, graphs_fixed_num_135) and each compression, in one run: read every source
file (baseline), import into a fresh store, verify checksums, read the store back in bulk and item by
item, and compare every structure with its source file (numbers, positions, node_attributes, pdf
bytes and dtype, metadata, r grid). Prints counts, mismatches, timings, sizes and their ratios.

    nice -n 10 python benchmarks/bench_store_roundtrip.py [--seed-dir ../shared/data/seed-oxides] [--out DIR]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from pdfusion.data.seed import import_seed, seed_files
from pdfusion.data.store import StoreReader
from pdfusion.structures.io import read_seed_h5

ROOT = Path(__file__).resolve().parents[1]


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file())


def _same(got, src) -> bool:
    return (
        got.numbers.tobytes() == src.particle.numbers.tobytes()
        and got.positions.tobytes() == src.particle.positions.tobytes()
        and got.node_attributes.tobytes() == src.node_attributes.tobytes()
        and got.pdf.dtype == src.pdf.dtype
        and got.pdf.tobytes() == src.pdf.tobytes()
        and all(got.meta[k] == src.meta[k] for k in ("structure_type", "formula", "radius", "metal", "source"))
    )


def bench_folder(folder: Path, out: Path, compression: str | None, shard_size: int) -> dict:
    files = seed_files(folder)
    t0 = time.perf_counter()
    sources = [read_seed_h5(f) for f in files]
    t_src = time.perf_counter() - t0

    store = out / f"{folder.name}-{compression}"
    shutil.rmtree(store, ignore_errors=True)
    t0 = time.perf_counter()
    manifest = import_seed(folder, store, shard_size=shard_size, compression=compression, progress=False)
    t_import = time.perf_counter() - t0

    t0 = time.perf_counter()
    bad_shards = manifest.verify(store)
    t_verify = time.perf_counter() - t0

    reader = StoreReader(store)
    t0 = time.perf_counter()
    bulk = list(reader)
    t_bulk = time.perf_counter() - t0
    order = np.random.default_rng(0).permutation(len(reader))
    t0 = time.perf_counter()
    for i in order:
        _ = reader[int(i)]
    t_random = time.perf_counter() - t0

    mismatches = [s.meta["source"] for got, s in zip(bulk, sources, strict=True) if not _same(got, s)]
    mismatches += [sources[i].meta["source"] for i in order[:200] if not _same(reader[int(i)], sources[int(i)])]
    r_ok = reader.r_grid.tobytes() == sources[0].r.tobytes()
    return {
        "folder": folder.name, "compression": str(compression), "n_files": len(files), "n_stored": len(reader),
        "n_shards": len(manifest.shards), "mismatches": len(mismatches), "first_mismatches": mismatches[:3],
        "r_grid_exact": r_ok, "bad_shards": bad_shards, "ids_unique": len(set(reader.ids())) == len(reader),
        "t_src": t_src, "t_import": t_import, "t_verify": t_verify, "t_bulk": t_bulk, "t_random": t_random,
        "src_bytes": sum(f.stat().st_size for f in files), "store_bytes": _dir_bytes(store),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed-dir", type=Path, default=ROOT.parent / "shared" / "data" / "seed-oxides")
    ap.add_argument("--folders", default="graphs_h5,graphs_fixed_num_135")
    ap.add_argument("--compressions", default="gzip,lzf")
    ap.add_argument("--shard-size", type=int, default=256)
    ap.add_argument("--out", type=Path, default=None, help="where to write the stores (default: a temp dir, removed)")
    args = ap.parse_args(argv)

    out = args.out or Path(tempfile.mkdtemp(prefix="pdfusion-bench-store-"))
    rows = []
    try:
        for name in args.folders.split(","):
            for comp in args.compressions.split(","):
                rows.append(bench_folder(args.seed_dir / name, out, None if comp == "none" else comp, args.shard_size))
                r = rows[-1]
                print(f"{r['folder']:<22} {r['compression']:<5} files {r['n_files']:>5}  stored {r['n_stored']:>5} "
                      f"in {r['n_shards']} shards  bit-exact {r['n_stored'] - r['mismatches']}/{r['n_files']}  "
                      f"r grid exact {r['r_grid_exact']}  ids unique {r['ids_unique']}  bad shards {r['bad_shards']}",
                      flush=True)
    finally:
        if args.out is None:
            shutil.rmtree(out, ignore_errors=True)

    print()
    print(f"{'folder':<22} {'comp':<5} {'src MB':>7} {'store MB':>8} {'store/src':>9} {'read src s':>10} "
          f"{'import s':>8} {'verify s':>8} {'bulk s':>7} {'bulk/src':>8} {'random ms/item':>14}")
    for r in rows:
        print(f"{r['folder']:<22} {r['compression']:<5} {r['src_bytes'] / 1e6:7.1f} {r['store_bytes'] / 1e6:8.1f} "
              f"{r['store_bytes'] / r['src_bytes']:9.3f} {r['t_src']:10.2f} {r['t_import']:8.2f} {r['t_verify']:8.2f} "
              f"{r['t_bulk']:7.2f} {r['t_bulk'] / r['t_src']:8.3f} {1e3 * r['t_random'] / max(r['n_stored'], 1):14.2f}")
    ok = all(r["mismatches"] == 0 and r["n_stored"] == r["n_files"] and r["r_grid_exact"] and not r["bad_shards"]
             and r["ids_unique"] for r in rows)
    print(f"\nround trip: {'ALL BIT-EXACT' if ok else 'MISMATCHES FOUND'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
