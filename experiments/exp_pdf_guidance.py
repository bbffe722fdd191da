"""Does PDF guidance (diffusion.pdf_guidance) help, and how much of it is the learned prior?

One target (a seed-oxides .h5 file, by default the overfit-one particle), K candidates per setting, the
true atom count. Every guidance setting runs with the trained model and with a freshly initialised model of
the same config (the control: what the sampler + guidance do without a learned prior), optionally followed
by the usual post-hoc refinement. Prints one table row per (model, setting): best and median R_wp.

    python experiments/exp_pdf_guidance.py runs/overfit_T1000/checkpoint.pt --steps 100 --eta 1 \\
        --guidance-settings 0:1 0.2:3 0.4:3 --refine-steps 300
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: `experiments` is a package
from experiments.common import DEFAULT_FILE, load_one, random_control


def main() -> None:
    from pdfusion.config import SampleConfig
    from pdfusion.inference.candidates import refine_candidates, sample_and_score
    from pdfusion.training.trainer import Trainer

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--file", default=str(DEFAULT_FILE))
    ap.add_argument("-k", type=int, default=16)
    ap.add_argument("--steps", type=int, default=100, help="strided sampler steps (0 = ancestral over all T)")
    ap.add_argument("--eta", type=float, default=1.0)
    ap.add_argument("--guidance-settings", nargs="+", default=["0:1", "0.2:3"],
                    help="pdf_guidance:iters pairs (0:1 = no PDF guidance)")
    ap.add_argument("--refine-steps", type=int, default=0, help="post-hoc refinement of every candidate (0 = none)")
    ap.add_argument("--no-control", action="store_true", help="skip the untrained-model control")
    ap.add_argument("--random-control", action="store_true",
                    help="also K random particles with the true atoms inside the true radius (exp_overfit_one's "
                         "control), scored and refined the same way")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/exp_pdf_guidance")
    args = ap.parse_args()
    torch.set_num_threads(1)
    data, rec = load_one(Path(args.file))
    trainer = Trainer.from_checkpoint(args.checkpoint)
    models = [("trained", trainer.ema.eval())]
    if not args.no_control:
        models.append(("untrained", Trainer(trainer.cfg).ema.eval()))
    rows = []
    print(f"{'model':10s} {'pdf_guidance':>12s} {'iters':>5s} {'best':>7s} {'median':>7s}"
          + (f" {'best ref.':>9s} {'med. ref.':>9s}" if args.refine_steps else "") + "  seconds")
    for name, model in models:
        for setting in args.guidance_settings:
            g, it = setting.split(":")
            cfg = SampleConfig(steps=args.steps or None, eta=args.eta, n_samples=args.k, n_atoms=int(data.num_nodes),
                               seed=args.seed, pdf_guidance=float(g), pdf_guidance_iters=int(it))
            t0 = time.time()
            cands = sample_and_score(model, trainer.diffusion, data.y, [int(data.metal)], cfg, trainer.cfg.pdf)[0]
            rw = np.array([c.rwp for c in cands])
            row = {"model": name, "pdf_guidance": float(g), "iters": int(it), "best": float(rw.min()),
                   "median": float(np.median(rw)), "nan": int((~np.isfinite(rw)).sum())}
            line = f"{name:10s} {float(g):12.2f} {int(it):5d} {row['best']:7.3f} {row['median']:7.3f}"
            if args.refine_steps:
                ref = np.array([c.rwp for c in refine_candidates(cands, data.y[0], trainer.cfg.pdf,
                                                                 steps=args.refine_steps)])
                row.update(best_refined=float(ref.min()), median_refined=float(np.median(ref)))
                line += f" {row['best_refined']:9.3f} {row['median_refined']:9.3f}"
            row["seconds"] = time.time() - t0
            print(f"{line}  {row['seconds']:.0f}", flush=True)
            rows.append(row)
    if args.random_control:
        t0 = time.time()
        ctrl = random_control(rec.particle, data.y[0], trainer.cfg.pdf, args.k, args.refine_steps, args.seed)
        rows.append({"model": "random", "best_refined": ctrl["best"], "median_refined": ctrl["median"],
                     "seconds": time.time() - t0})
        print(f"{'random':10s} {'':12s} {'':5s} {'':7s} {'':7s} {ctrl['best']:9.3f} {ctrl['median']:9.3f}  "
              f"{time.time() - t0:.0f}", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").write_text(json.dumps({"checkpoint": str(args.checkpoint), "file": Path(args.file).name,
                                                 "train_step": trainer.step, "k": args.k, "steps": args.steps,
                                                 "eta": args.eta, "refine_steps": args.refine_steps,
                                                 "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
