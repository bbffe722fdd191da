"""Atom deletion scored by R_wp vs position refinement alone, on the same saved beyond-library candidates.

Candidates come from ``bench_beyond_library.py --save-candidates DIR`` (model_NNN.npz, library_NNN.npz), so
the arms differ only in the scoring stage. Arms, each on the ``refine_top`` best expansion-fitted candidates:
``refine`` (``refine_steps`` of position refinement, the benchmark's stage), ``refine x2`` (twice the steps: the
equal-effort control), ``refine + prune`` (refine, delete the atoms whose removal lowers R_wp, refine again) and
``refine + grow + prune`` (refine, add atoms at vacant lattice sites where that lowers R_wp, prune, refine again).

    python experiments/exp_topology.py runs/r11/cands --n-targets 10 --out runs/r11/topology
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from pdfusion.config import BeyondLibraryConfig
from pdfusion.evaluation.beyond_library import build_targets, load_proposals, score_proposals, summarise


def arms(base: BeyondLibraryConfig) -> dict[str, BeyondLibraryConfig]:
    return {"refine": base, "refine x2": replace(base, refine_steps=2 * base.refine_steps),
            "refine + prune": replace(base, prune_atoms=True),
            "refine + grow + prune": replace(base, prune_atoms=True, grow_atoms=True)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("candidates", type=Path, help="folder of model_NNN.npz / library_NNN.npz")
    ap.add_argument("--n-targets", type=int, default=10, help="the benchmark's --n-targets (regenerates targets)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--methods", nargs="+", default=["model", "library"])
    ap.add_argument("--arms", nargs="+", default=None, help="arm names to run (default: all)")
    ap.add_argument("--targets", type=int, nargs="+", default=None, help="target indices (default: all)")
    ap.add_argument("--refine-top", type=int, default=None)
    ap.add_argument("--refine-steps", type=int, default=None)
    ap.add_argument("--out", type=Path, default=Path("outputs/topology"))
    args = ap.parse_args(argv)
    d = BeyondLibraryConfig()
    base = replace(d, n_targets=args.n_targets, seed=args.seed, refine_top=args.refine_top or d.refine_top,
                   refine_steps=args.refine_steps or d.refine_steps)
    targets = build_targets(base)
    report: dict = {"command": " ".join(["python", "experiments/exp_topology.py", *(argv or sys.argv[1:])]),
                    "arms": {}}
    for method in args.methods:
        for name, cfg in arms(base).items():
            if args.arms and name not in args.arms:
                continue
            rows, t0 = [], time.perf_counter()
            for t in targets:
                if args.targets is not None and t.index not in args.targets:
                    continue
                path = args.candidates / f"{method}_{t.index:03d}.npz"
                if not path.is_file():
                    continue
                rows.append(score_proposals(t, load_proposals(path), cfg))
                r = rows[-1]
                print(f"{method:7s} {name:15s} {t.index:3d} {t.meta['id']:32s} fitted {r['rwp_fitted']:.4f} "
                      f"refined {r['rwp_refined']:.4f} pruned {r.get('atoms_pruned', 0):4d} "
                      f"n {r.get('n_atoms_best', 0)}/{r['n_atoms_true']} {r['score_s']:.1f}s", flush=True)
            report["arms"][f"{method}: {name}"] = {"rows": rows, "summary": summarise(rows),
                                                   "wall_s": time.perf_counter() - t0}
    args.out.mkdir(parents=True, exist_ok=True)
    lines = ["| method: arm | targets | median fitted | median refined | score s/target |", "|---|---|---|---|---|"]
    for key, arm in report["arms"].items():
        s, n = arm["summary"], max(1, len(arm["rows"]))
        lines.append(f"| {key} | {s['n_targets']} | {s['rwp_fitted_median']:.4f} | {s['rwp_refined_median']:.4f} | "
                     f"{arm['wall_s'] / n:.1f} |")
    for method in args.methods:
        a, b = report["arms"].get(f"{method}: refine x2"), report["arms"].get(f"{method}: refine + prune")
        if a and b and a["rows"]:
            x = np.array([r["rwp_refined"] for r in a["rows"]])
            y = np.array([r["rwp_refined"] for r in b["rows"]])
            lines.append(f"\n{method}: refine + prune better than refine x2 on {int((y < x).sum())} of {len(x)}")
    text = "\n".join(lines)
    (args.out / "report.json").write_text(json.dumps(report, indent=1, default=float))
    (args.out / "table.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
