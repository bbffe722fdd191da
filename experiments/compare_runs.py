"""Paired comparison of two evaluation runs on the same PDFs: per-PDF best-of-K R_wp, wins and medians.

A median hides whether a lever helps most targets or a few by much; the A/B tables in docs/training.md report
"better on n of 12" from this. Both runs must have scored the same PDFs (same --val-pdfs and seed).

    python experiments/compare_runs.py runs/r8/graphs_h5_g03x80_w75 runs/r8/graphs_h5_g03x200_w90
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def load(run: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    """(best-of-K per PDF, refined per PDF, result.json) of one run folder."""
    data = np.load(run / "rwp.npz")
    return data["rwp"][:, 0], data["refined"], json.loads((run / "result.json").read_text())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("a", type=Path, help="run folder A (rwp.npz, result.json)")
    ap.add_argument("b", type=Path, help="run folder B")
    args = ap.parse_args(argv)
    for run in (args.a, args.b):
        if not (run / "rwp.npz").is_file() or not (run / "result.json").is_file():
            print(f"compare_runs: error: {run} holds no rwp.npz/result.json; give a finished run's --out folder",
                  file=sys.stderr)
            return 2
    (best_a, ref_a, res_a), (best_b, ref_b, res_b) = load(args.a), load(args.b)
    if best_a.shape != best_b.shape or res_a.get("title") != res_b.get("title"):
        print(f"compare_runs: error: the runs scored different PDFs ({best_a.size} vs {best_b.size}, "
              f"{res_a.get('title')!r} vs {res_b.get('title')!r})", file=sys.stderr)
        return 2
    print("| PDF | A best-of-K | B best-of-K | B - A |\n|---|---|---|---|")
    for i, (a, b) in enumerate(zip(best_a, best_b, strict=True)):
        print(f"| {i} | {a:.3f} | {b:.3f} | {b - a:+.3f} |")
    print(f"\nmedian best-of-K: A {np.median(best_a):.3f}, B {np.median(best_b):.3f}; "
          f"B better on {int((best_b < best_a).sum())} of {best_a.size}, worse on {int((best_b > best_a).sum())}")
    print(f"median refined: A {np.median(ref_a):.3f}, B {np.median(ref_b):.3f}; "
          f"B better on {int((ref_b < ref_a).sum())} of {ref_a.size}")
    print(f"sampling s: A {res_a.get('sample_seconds', float('nan')):.0f}, "
          f"B {res_b.get('sample_seconds', float('nan')):.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
