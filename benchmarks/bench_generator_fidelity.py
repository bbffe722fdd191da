"""How faithfully the generator reproduces the seed-oxides particles (and how fast it is).

    python benchmarks/bench_generator_fidelity.py --seed-dir ../shared/data/seed-oxides/graphs_h5 [--every 1]

For every ``graph_<Type>_<Formula>_r<R>.h5`` it builds the same (type, metal, radius) particle and
compares, side by side in one run: equal atom count (bar >= 80 %), atom count within +-15 % (bar >= 95 %),
first G(r) peak position within 0.05 Å of the stored curve (bar >= 90 %), plus the median R_wp between our
simulated G(r) and the stored diffpy.srreal curve. Printed overall and per type, with the same metrics for
a naive baseline cut (bond = 1.25 x the sum of atomic radii, pymatgen's metallic radii for the lattice),
so the effect of the seed calibration is visible. Exits non-zero if a bar is missed.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

BARS = {"equal": 0.80, "within15": 0.95, "peak": 0.90}
_NAME = re.compile(r"^graph_(?P<type>[A-Za-z0-9]+)_(?P<formula>[A-Za-z0-9]+)_r(?P<r>\d+(?:\.\d+)?)\.h5$")


def first_peak(r: np.ndarray, g: np.ndarray, frac: float = 0.3) -> float:
    """Position of the first local maximum of G(r) that reaches ``frac`` of the global maximum."""
    thr = frac * float(np.max(g))
    interior = (g[1:-1] >= g[:-2]) & (g[1:-1] > g[2:]) & (g[1:-1] >= thr)
    idx = np.flatnonzero(interior)
    return float(r[idx[0] + 1]) if len(idx) else float("nan")


def naive_particle(structure_type: str, metal: str, radius: float):
    """Baseline: pymatgen's own metallic radius in the fitted line, and a radius-sum bond criterion."""
    import warnings

    from pymatgen.core import Element

    from pdfusion.structures import particles as P
    from pdfusion.structures import prototypes as T

    proto = T.get_prototype(structure_type)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        el = Element(metal)
        r_pm = float(el.metallic_radius or el.atomic_radius) * 100
        cutoff = 1.25 * (float(el.atomic_radius) + 0.6)
    if proto.a_rule is None:
        return None
    lat = (proto.a_rule[0] + proto.a_rule[1] * r_pm,)
    if proto.c_rule is not None:
        lat = (*lat, proto.c_rule[0] + proto.c_rule[1] * r_pm)
    cell = T.unit_cell(proto.name, metal, lat)
    c, _ = P._resolve_center(cell, proto, None, None)
    z, pos = P.cut_sphere(cell.cart_coords, cell.numbers, cell.lattice, c, radius, cutoff)
    return z, pos


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed-dir", type=Path,
                    default=Path(__file__).resolve().parents[2] / "shared/data/seed-oxides/graphs_h5")
    ap.add_argument("--every", type=int, default=1, help="use every n-th file (1 = all 1,536)")
    ap.add_argument("--no-pdf", action="store_true", help="atom counts only (skip the PDF comparison)")
    args = ap.parse_args(argv)

    import h5py
    import torch
    from tqdm import tqdm

    from pdfusion.config import PDFConfig
    from pdfusion.data.generate import simulate_batch
    from pdfusion.pdf import r_grid, rwp
    from pdfusion.structures.particles import make_particle

    torch.set_num_threads(2)
    files = sorted(p for p in args.seed_dir.glob("graph_*.h5") if _NAME.match(p.name))[:: args.every]
    if not files:
        print(f"bench_generator_fidelity: no graph_*.h5 files in {args.seed_dir}", file=sys.stderr)
        return 2
    cfg = PDFConfig()
    r_ours = r_grid(cfg).numpy()
    rows: list[dict] = []
    t_build = 0.0
    batch: list[tuple[dict, object]] = []

    def flush():
        if not batch:
            return
        g = simulate_batch([p for _, p in batch], cfg)
        for (row, _), gi in zip(batch, g, strict=True):
            row["peak_ours"] = first_peak(r_ours, gi)
            row["rwp"] = float(rwp(torch.from_numpy(np.interp(row["r_seed"], r_ours, gi)),
                                   torch.from_numpy(row["g_seed"])))
            del row["r_seed"], row["g_seed"]
        batch.clear()

    for path in tqdm(files, desc="fidelity", unit="file"):
        m = _NAME.match(path.name)
        stype, radius = m["type"], float(m["r"])
        metal = re.match(r"[A-Z][a-z]?", m["formula"]).group(0)
        with h5py.File(path, "r") as fh:
            na = fh["node_attributes"][:]
            r_seed, g_seed = fh["r"][:], fh["pdf"][:]
        t0 = time.perf_counter()
        part = make_particle(stype, metal, radius, min_distance=None)
        t_build += time.perf_counter() - t0
        naive = naive_particle(stype, metal, radius)
        row = {"type": stype, "n_seed": len(na), "n_ours": len(part), "n_naive": len(naive[0]),
               "peak_seed": first_peak(r_seed, g_seed), "r_seed": r_seed, "g_seed": g_seed}
        rows.append(row)
        if args.no_pdf:
            del row["r_seed"], row["g_seed"]
        else:
            batch.append((row, part))
            if len(batch) >= 16:
                flush()
    flush()

    def fractions(sub: list[dict], key: str) -> dict[str, float]:
        n_seed = np.array([r["n_seed"] for r in sub])
        n = np.array([r[key] for r in sub])
        out = {"equal": float(np.mean(n == n_seed)), "within15": float(np.mean(np.abs(n - n_seed) <= 0.15 * n_seed))}
        if not args.no_pdf and key == "n_ours":
            d = np.abs(np.array([r["peak_ours"] for r in sub]) - np.array([r["peak_seed"] for r in sub]))
            out["peak"] = float(np.mean(d <= 0.05))
            out["rwp_median"] = float(np.median([r["rwp"] for r in sub]))
        return out

    by_type: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_type[r["type"]].append(r)
    print(f"\n{len(rows)} seed particles; particle build {1e3 * t_build / len(rows):.1f} ms each")
    head = (f"{'type':<14}{'n':>5} | {'equal N':>8}{'±15% N':>8}{'peak±.05':>9}{'Rwp med':>8} | "
            f"{'naive eq':>9}{'naive±15':>9}")
    print(head)
    print("-" * len(head))
    for name, sub in sorted(by_type.items()) + [("ALL", rows)]:
        f, b = fractions(sub, "n_ours"), fractions(sub, "n_naive")
        print(f"{name:<14}{len(sub):>5} | {f['equal']:>8.3f}{f['within15']:>8.3f}{f.get('peak', float('nan')):>9.3f}"
              f"{f.get('rwp_median', float('nan')):>8.1e} | {b['equal']:>9.3f}{b['within15']:>9.3f}")
    overall = fractions(rows, "n_ours")
    missed = [k for k, bar in BARS.items() if k in overall and overall[k] < bar]
    print(f"bars: equal >= {BARS['equal']}, within15 >= {BARS['within15']}, peak >= {BARS['peak']}: "
          + ("all met" if not missed else f"MISSED {missed}"))
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
