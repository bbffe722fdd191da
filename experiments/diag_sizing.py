"""How well each sizing rule knows a beyond-library target's atom count: the count head's draw against the
expansion-fitted nearest perfect spherical cut (``inference.sizing``), no sampling involved.

    python experiments/diag_sizing.py --checkpoint models/pdfusion-cpu-v2/model.pt --n-targets 48 \\
        --out runs/r13/diag_sizing.json

Per target: the true count, the head's median and 10/90 % quantiles, the fitted library's 4 counts (best first).
Summary: median |ln(N_est / N_true)| and the share of targets within 15 % of the truth, for the head's median and
the library's best fit.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from pdfusion.config import BeyondLibraryConfig
from pdfusion.evaluation.beyond_library import build_targets
from pdfusion.inference.bundle import load_bundle
from pdfusion.inference.sizing import sizes_for
from pdfusion.structures.prototypes import element_symbol


def head_quantiles(bundle, pdf: np.ndarray, metal: int, qs=(0.1, 0.5, 0.9)) -> list[int]:
    with torch.no_grad():
        logits = bundle.model.count_logits(torch.as_tensor(pdf[None], dtype=torch.float32), torch.tensor([metal]))
    cdf = torch.softmax(logits.float(), -1)[0].cumsum(0).numpy()
    return [int(np.searchsorted(cdf, q)) + 1 for q in qs]  # class k is N = k + 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default="models/pdfusion-cpu-v2/model.pt")
    ap.add_argument("--n-targets", type=int, default=48)
    ap.add_argument("--out", type=Path, default=Path("outputs/diag_sizing.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    bundle = load_bundle(args.checkpoint)
    targets = build_targets(BeyondLibraryConfig(n_targets=args.n_targets), bundle.pdf_config)
    rows = []
    for t in targets:
        lib = sizes_for(t.pdf[None], [element_symbol(t.metal)], bundle.pdf_config, 4)[0]
        rows.append({"index": t.index, "id": t.meta["id"], "n_true": len(t.truth),
                     "head_q10_50_90": head_quantiles(bundle, t.pdf, t.metal), "library_fit": lib})
        r = rows[-1]
        print(f"{t.index:3d} {t.meta['id']:<36s} true {r['n_true']:4d}  head {r['head_q10_50_90']}  library {lib}",
              flush=True)
    summary = {}
    for name, est in (("head median", [r["head_q10_50_90"][1] for r in rows]),
                      ("library best fit", [r["library_fit"][0] for r in rows])):
        err = np.abs(np.log(np.asarray(est, float) / np.asarray([r["n_true"] for r in rows], float)))
        summary[name] = {"median_abs_log_ratio": float(np.median(err)),
                         "within_15pct": float(np.mean(err < np.log(1.15)))}
        print(f"{name}: median |ln(N/N_true)| {summary[name]['median_abs_log_ratio']:.3f}, "
              f"within 15 % on {summary[name]['within_15pct']:.0%} of {len(rows)} targets")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    command = " ".join(["python", "experiments/diag_sizing.py", *(argv or sys.argv[1:])])
    args.out.write_text(json.dumps({"command": command, "rows": rows, "summary": summary}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
