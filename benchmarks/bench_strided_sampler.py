"""Benchmark (e): strided (DDIM-style) sampler with S steps vs a reference over all T steps (ancestral DDPM,
or the same strided sampler with S = T), same model, same PDFs, same K; prints median best-of-K and median
R_wp of each, their ratio, and the speed ratio, measured side by side in one run. Bar: medians within 10 %.

    python benchmarks/bench_strided_sampler.py runs/overfit_T1000/checkpoint.pt \
        --pdf ../shared/data/seed-oxides/graphs_h5/graph_CdI2_SrO2_r5.h5 --metal Sr -k 16 --strided 100 \
        --reference strided --eta 1
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch


def main() -> None:
    from pdfusion.cli.sample_cmd import load_target
    from pdfusion.config import SampleConfig
    from pdfusion.inference.bundle import load_bundle
    from pdfusion.inference.candidates import metal_number, sample_and_score

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--pdf", action="append", required=True, help="target PDF file(s); repeat for several")
    ap.add_argument("--metal", action="append", required=True, help="metal per --pdf")
    ap.add_argument("-k", type=int, default=16)
    ap.add_argument("--strided", type=int, default=100)
    ap.add_argument("--eta", type=float, default=0.0, help="DDIM stochasticity of the strided sampler (1 ≈ ancestral)")
    ap.add_argument("--reference", choices=["ancestral", "strided"], default="ancestral",
                    help="what runs all T steps: the ancestral sampler, or the same strided sampler with S = T")
    ap.add_argument("--guidance", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    if len(args.pdf) != len(args.metal):
        raise SystemExit("give one --metal per --pdf")
    torch.set_num_threads(args.threads)
    bundle = load_bundle(args.checkpoint)
    pdfs = torch.tensor(np.stack([load_target(p, bundle.r_grid) for p in args.pdf]), dtype=torch.float32)
    metals = [metal_number(m) for m in args.metal]
    T = bundle.diffusion.T
    rows = {}
    ref_steps = None if args.reference == "ancestral" else T
    for name, steps in (("reference", ref_steps), ("strided", args.strided)):
        cfg = SampleConfig(guidance=args.guidance, steps=steps, n_samples=args.k, seed=args.seed, eta=args.eta)
        t0 = time.perf_counter()
        ranked = sample_and_score(bundle.model, bundle.diffusion, pdfs, metals, cfg, bundle.pdf_config, progress=True)
        dt = time.perf_counter() - t0
        rwp = np.array([[c.rwp for c in cands] for cands in ranked])
        rows[name] = {"steps": steps or T, "seconds": dt, "median_best": float(np.median(rwp[:, 0])),
                      "median_all": float(np.median(rwp)), "nan": int((~np.isfinite(rwp)).sum())}
    a, s = rows["reference"], rows["strided"]
    result = {
        "reference": f"{args.reference} over all T = {T} steps", "eta": args.eta,
        **rows,
        "ratio_median_best_strided_over_reference": s["median_best"] / a["median_best"],
        "ratio_median_all_strided_over_reference": s["median_all"] / a["median_all"],
        "speedup_reference_time_over_strided_time": a["seconds"] / s["seconds"],
        "within_10pct": abs(s["median_all"] / a["median_all"] - 1) <= 0.10,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
