"""`pdfusion data import-seed DIR OUT` and `pdfusion data info ROOT`."""

from __future__ import annotations

import json
import sys
from collections import Counter


def _import_seed(args) -> int:
    from pdfusion.config import ConfigError
    from pdfusion.data.seed import import_seed

    if args.shard_size < 1:
        raise ConfigError(f"--shard-size: must be >= 1 structures per shard, got {args.shard_size}")
    m = import_seed(args.src, args.out, shard_size=args.shard_size,
                    compression=None if args.compression == "none" else args.compression)
    print(f"{args.out}: {m.n_structures} structures in {len(m.shards)} shards")
    return 0


def _info(args) -> int:
    from pdfusion.data.store import StoreReader

    reader = StoreReader(args.root)
    m = reader.manifest
    info = {
        "root": str(args.root),
        "schema_version": m.schema_version,
        "n_structures": len(reader),
        "n_shards": len(m.shards),
        "n_r": int(reader.r_grid.shape[0]),
        "r_range": [float(reader.r_grid[0]), float(reader.r_grid[-1])],
    }
    bad = [] if args.no_verify else reader.verify()  # before reading any shard: a corrupt one may not even open
    if not args.no_verify:
        info["checksums"] = "ok" if not bad else {"bad_shards": bad}
    if not bad:
        meta, sizes = reader.metadata(), reader.sizes()
        info["atoms"] = ({"min": int(sizes.min()), "max": int(sizes.max()), "total": int(sizes.sum())}
                         if sizes.size else {})
        info["structure_types"] = dict(sorted(Counter(meta["structure_type"]).items(), key=lambda kv: str(kv[0])))
        info["n_metals"] = len({x for x in meta["metal"] if x})
    print(json.dumps(info, indent=2))
    reader.close()
    if bad:
        print(f"pdfusion data info: {len(bad)} shard(s) fail their sha256 check: {bad}; re-import or regenerate them",
              file=sys.stderr)
        return 1
    return 0


def register(sub) -> None:
    p = sub.add_parser("data", help="import seed-oxides data into a store; inspect and verify a store")
    dsub = p.add_subparsers(dest="data_command", required=True)
    imp = dsub.add_parser("import-seed", help="import a seed-oxides folder of .h5 files (resumable)")
    imp.add_argument("src", help="seed-oxides folder, e.g. shared/data/seed-oxides/graphs_h5")
    imp.add_argument("out", help="store root to create or complete")
    imp.add_argument("--shard-size", type=int, default=256)
    imp.add_argument("--compression", choices=("gzip", "lzf", "none"), default="gzip")
    imp.set_defaults(func=_import_seed)
    inf = dsub.add_parser("info", help="print counts of a store and verify its shard checksums")
    inf.add_argument("root")
    inf.add_argument("--no-verify", action="store_true", help="skip the sha256 check of every shard")
    inf.set_defaults(func=_info)
