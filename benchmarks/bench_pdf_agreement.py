"""How closely does pdfusion's PDF simulator reproduce diffpy.srreal (the seed-oxides curves) and debyecalculator?

Side by side, in one run:
1. ours vs the stored srreal ``pdf`` of every seed-oxides file (seed parameters, normalised): median, p95, max R_wp;
2. debyecalculator vs stored on a sample (its own Q grid, same nominal parameters, normalised), and ours on the
   same sample;
3. ours vs debyecalculator, not normalised (debyecalculator sums pairs i<j only, so its G is half of srreal's):
   with debyecalculator's own Q grid and with the Q points matched to srreal's.
Acceptance: median ≤ 0.01 and p95 ≤ 0.03 vs srreal; median ≤ 0.01 vs debyecalculator.

    python benchmarks/bench_pdf_agreement.py --out results/pdf_agreement.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from pdfusion.config import PDFConfig
from pdfusion.io_utils import atomic_write
from pdfusion.pdf import rwp, simulate_pdf, srreal_grid
from pdfusion.structures.io import read_seed_h5

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SEED = Path(os.environ.get("PDFUSION_SHARED", ROOT.parent / "shared")) / "data" / "seed-oxides" / "graphs_h5"


def _batches(recs, batch_size):
    order = np.argsort([len(r.particle) for r in recs], kind="stable")  # similar sizes together
    for k in range(0, len(order), batch_size):
        idx = order[k:k + batch_size]
        parts = [recs[i].particle for i in idx]
        n = max(len(p) for p in parts)
        pos = torch.zeros(len(parts), n, 3, dtype=torch.float64)
        num = torch.zeros(len(parts), n, dtype=torch.long)
        mask = torch.zeros(len(parts), n, dtype=torch.bool)
        for b, p in enumerate(parts):
            pos[b, : len(p)], num[b, : len(p)], mask[b, : len(p)] = (torch.as_tensor(p.positions),
                                                                       torch.as_tensor(p.numbers), True)
        yield idx, pos, num, mask


def _stats(x) -> dict:
    x = np.asarray(x, dtype=np.float64)
    return {"n": int(x.size), "median": float(np.median(x)), "p95": float(np.percentile(x, 95)),
            "max": float(x.max()), "mean": float(x.mean())}


def _dc(cfg: PDFConfig, matched: bool):
    from debyecalculator import DebyeCalculator

    kw = dict(qmin=cfg.qmin, qmax=cfg.qmax, qdamp=cfg.qdamp, rmin=cfg.rmin, rmax=cfg.rmax, rstep=cfg.rstep,
              biso=cfg.biso, device="cpu", dtype=torch.float64, radiation_type=cfg.radiation)
    if matched:  # evaluate exactly srreal's Q points k·qstep, nqmin <= k < nqmax
        g = srreal_grid(cfg)
        kw.update(qstep=g.qstep, qmin=g.nqmin * g.qstep - 1e-9, qmax=(g.nqmax - 1) * g.qstep + 1e-9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return DebyeCalculator(**kw)


def _dc_gr(calc, particle) -> np.ndarray:
    from pymatgen.core import Element

    symbols = [Element.from_Z(int(z)).symbol for z in particle.numbers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, g = calc.gr((symbols, torch.as_tensor(particle.positions, dtype=torch.float64)))
    return np.asarray(g, dtype=np.float64)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed-dir", type=Path, default=DEFAULT_SEED)
    ap.add_argument("--out", type=Path, required=True, help="JSON file for the results")
    ap.add_argument("--limit", type=int, default=None, help="only the first N files (default: all)")
    ap.add_argument("--dc-sample", type=int, default=50, help="files compared with debyecalculator")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--method", choices=("grid", "direct"), default="grid")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    files = sorted(args.seed_dir.glob("*.h5"))[: args.limit]
    if not files:
        print(f"no .h5 files in {args.seed_dir}", file=sys.stderr)
        return 2
    recs = [read_seed_h5(f) for f in tqdm(files, desc="read", leave=False)]
    cfg = PDFConfig()  # the seed-oxides simulation parameters
    scores = np.empty(len(recs))
    t0 = time.perf_counter()
    with torch.no_grad():
        for idx, pos, num, mask in tqdm(list(_batches(recs, args.batch_size)), desc="simulate", leave=False):
            g = simulate_pdf(pos, num, mask, cfg, method=args.method)
            target = torch.as_tensor(np.stack([recs[i].pdf for i in idx]))
            scores[idx] = rwp(g, target).numpy()
    t_ours = time.perf_counter() - t0
    vs_srreal = _stats(scores)
    worst = [{"file": files[i].name, "atoms": len(recs[i].particle), "rwp": float(scores[i])}
             for i in np.argsort(scores)[::-1][:5]]

    # debyecalculator side by side on a fixed sample
    sample = np.sort(np.random.default_rng(0).choice(len(recs), min(args.dc_sample, len(recs)), replace=False))
    raw = PDFConfig(normalize=False)
    dc_norm, dc_own, dc_matched = _dc(cfg, False), _dc(raw, False), _dc(raw, True)
    dc_vs_stored, ours_vs_stored, ours_vs_dc_own, ours_vs_dc_matched = [], [], [], []
    with torch.no_grad():
        for i in tqdm(sample, desc="debyecalculator", leave=False):
            p, stored = recs[i].particle, recs[i].pdf
            gd = _dc_gr(dc_norm, p)
            dc_vs_stored.append(float(rwp(torch.as_tensor(gd / gd.max()), torch.as_tensor(stored))))
            ours_vs_stored.append(float(scores[i]))
            ours = simulate_pdf(torch.as_tensor(p.positions), torch.as_tensor(p.numbers), cfg=raw, method=args.method)
            # debyecalculator's pair sum runs over i<j once (srreal: both orders), hence the factor 2
            ours_vs_dc_own.append(float(rwp(ours, 2 * torch.as_tensor(_dc_gr(dc_own, p)))))
            ours_vs_dc_matched.append(float(rwp(ours, 2 * torch.as_tensor(_dc_gr(dc_matched, p)))))

    res = {
        "command": " ".join(["python", "benchmarks/bench_pdf_agreement.py",
                             *(argv if argv is not None else sys.argv[1:])]),
        "config": dataclasses.asdict(cfg),
        "method": args.method,
        "ours_vs_srreal_stored": vs_srreal,
        "worst_files": worst,
        "seconds_simulating_all": t_ours,
        "sample_files": [files[i].name for i in sample],
        "debyecalculator_vs_stored_sample": _stats(dc_vs_stored),
        "ours_vs_stored_same_sample": _stats(ours_vs_stored),
        "ours_vs_debyecalculator_own_qgrid": _stats(ours_vs_dc_own),
        "ours_vs_debyecalculator_matched_qgrid": _stats(ours_vs_dc_matched),
    }
    res["acceptance"] = {
        "srreal_median<=0.01": vs_srreal["median"] <= 0.01,
        "srreal_p95<=0.03": vs_srreal["p95"] <= 0.03,
        "debyecalculator_median<=0.01 (matched Q grid)": res["ours_vs_debyecalculator_matched_qgrid"]["median"] <= 0.01,
        "debyecalculator_median<=0.01 (its own Q grid)": res["ours_vs_debyecalculator_own_qgrid"]["median"] <= 0.01,
    }
    atomic_write(args.out, json.dumps(res, indent=2))

    f = "{:.3g}".format
    print(f"ours vs stored srreal, {vs_srreal['n']} files ({t_ours:.1f} s): median {f(vs_srreal['median'])}  "
          f"p95 {f(vs_srreal['p95'])}  max {f(vs_srreal['max'])}")
    for w in worst:
        print(f"   worst: {w['file']} ({w['atoms']} atoms) R_wp {f(w['rwp'])}")
    s_dc, s_us = res["debyecalculator_vs_stored_sample"], res["ours_vs_stored_same_sample"]
    print(f"on {len(sample)} sampled files vs stored:  debyecalculator median {f(s_dc['median'])} "
          f"(p95 {f(s_dc['p95'])}, max {f(s_dc['max'])})  |  ours median {f(s_us['median'])} (max {f(s_us['max'])})"
          f"  |  ratio of medians {s_dc['median'] / max(s_us['median'], 1e-300):.3g}")
    print(f"ours vs debyecalculator (unnormalised, x2 convention): own Q grid median "
          f"{f(res['ours_vs_debyecalculator_own_qgrid']['median'])}, matched Q grid median "
          f"{f(res['ours_vs_debyecalculator_matched_qgrid']['median'])}")
    for k, v in res["acceptance"].items():
        print(f"   {'PASS' if v else 'FAIL'}  {k}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
