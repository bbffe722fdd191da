"""How many distinct shapes a seed-oxides folder holds: per structure type, particles whose sorted pair
distances divided by their median (scale-free) agree within `--tol` count as one shape.

One shape means the same cut at other lattice constants: what `model.bond_length` exploits, and what lets
library lookup win.

    python experiments/diag_shapes.py ../shared/data/seed-oxides/graphs_fixed_num_135
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import numpy as np


def main(argv=None) -> None:
    from scipy.spatial.distance import pdist

    from pdfusion.data.seed import seed_files
    from pdfusion.structures.io import read_seed_h5

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", help="a seed-oxides folder of .h5 files")
    ap.add_argument("--tol", type=float, default=0.01, help="max deviation of scale-free sorted distances")
    args = ap.parse_args(argv)
    by_type: dict[str, list[tuple[int, np.ndarray]]] = defaultdict(list)
    for f in seed_files(args.folder):
        rec = read_seed_h5(f)
        d = np.sort(pdist(rec.particle.positions))
        by_type[str(rec.meta.get("structure_type"))].append((len(rec.particle), d / np.median(d)))
    print(f"{'type':<14} {'files':>5}  shapes (tol {args.tol:g})  particles in the commonest shape")
    for t, items in sorted(by_type.items()):
        reps: list[tuple[int, np.ndarray]] = []
        members: list[int] = []
        for n, d in items:  # greedy: join the first shape within tol, else start a new one
            for k, (rn, rd) in enumerate(reps):
                if rn == n and float(np.abs(d - rd).max()) < args.tol:
                    members[k] += 1
                    break
            else:
                reps.append((n, d))
                members.append(1)
        print(f"{t:<14} {len(items):>5}  {len(reps):>17}  {max(members):>32}")


if __name__ == "__main__":
    main()
