"""Is the sampler right, so that every failure is the network's? Sample with the IDEAL denoiser.

For a model that has memorised one structure, the ideal x̂0 = E[x0 | x_t] is an average of the structure
over its orientations (rotations and reflections) and atom orderings, weighted by how well each explains
the noisy positions and types. `OracleDenoiser` computes it (multi-start ICP over orientations, one
Hungarian assignment on positions + types per step, posterior weights over the optima found) and returns
the ε that pdfusion's samplers expect, so the real samplers, schedules, clipping and ranking run
unchanged. If sampled structures fit the PDF (R_wp ≈ 0) with this denoiser, the diffusion machinery is
correct and what is missing is a network that comes close to it; `experiments/diag_denoiser.py --oracle` measures
how close, per noise level.

    python experiments/diag_oracle_sampler.py --timesteps 500 -k 8 --steps 100
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
from experiments.common import DEFAULT_FILE, load_one, orientation_posterior


class OracleDenoiser(torch.nn.Module):
    """ε-prediction from the posterior mean over orientations/orderings of one template (diffusion units);
    the noisy types take part in the assignment and the weights, as they do in the diffusion."""

    def __init__(self, x0: np.ndarray, h0: np.ndarray, diffusion, starts: int = 24, iters: int = 8) -> None:
        super().__init__()
        self.x0, self.h0, self.d, self.starts, self.iters = x0, h0, diffusion, starts, iters

    def forward(self, x, h, mask, t, pdf=None, metal=None, cond_mask=None, return_count=False):
        ti = int(round(float(t.reshape(-1)[0]) * self.d.T))
        abar = float(self.d.schedule.alphas_cumprod[ti])
        a, sig = abar ** 0.5, (1 - abar) ** 0.5
        ex, eh = torch.zeros_like(x), torch.zeros_like(h)
        for b in range(x.shape[0]):
            m = mask[b].bool()
            y, hy = x[b][m].double().numpy() / a, h[b][m].double().numpy() / a
            mx, mh = orientation_posterior(y - y.mean(0), self.x0, sig / a, hy, self.h0, starts=self.starts,
                                           iters=self.iters, tol=1e-4)
            ex[b][m] = torch.as_tensor((x[b][m].double().numpy() - a * mx) / sig, dtype=x.dtype)
            eh[b][m] = torch.as_tensor((h[b][m].double().numpy() - a * mh) / sig, dtype=h.dtype)
        from pdfusion.diffusion.geometry import remove_mean

        return remove_mean(ex, mask.bool()), eh


def main() -> None:
    from pdfusion.config import DiffusionConfig, ModelConfig, PDFConfig, SampleConfig, ScheduleConfig
    from pdfusion.diffusion import GaussianDiffusion, build_schedule
    from pdfusion.inference.candidates import sample_and_score
    from pdfusion.training.trainer import Trainer

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--file", default=str(DEFAULT_FILE))
    ap.add_argument("--timesteps", type=int, default=500)
    ap.add_argument("--schedule", default="polynomial")
    ap.add_argument("-k", type=int, default=8)
    ap.add_argument("--steps", type=int, nargs="+", default=[100], help="strided sampler steps; 0 = ancestral")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/diag_oracle_sampler")
    args = ap.parse_args()
    torch.set_num_threads(1)
    data, _ = load_one(Path(args.file))
    mcfg = ModelConfig(max_atoms=64)
    dcfg = DiffusionConfig(schedule=ScheduleConfig(name=args.schedule, timesteps=args.timesteps))
    diffusion = GaussianDiffusion(build_schedule(dcfg.schedule), mcfg, dcfg)
    batch = Trainer.collate([data])
    x0, h0 = diffusion.encode(batch)
    oracle = OracleDenoiser(x0[0].double().numpy(), h0[0].double().numpy(), diffusion)
    pdf_cfg = PDFConfig()
    results = []
    for steps in args.steps:
        t0 = time.time()
        cfg = SampleConfig(steps=steps or None, n_samples=args.k, n_atoms=int(data.num_nodes), seed=args.seed)
        cands = sample_and_score(oracle, diffusion, data.y, [int(data.metal)], cfg, pdf_cfg, progress=True)[0]
        rw = np.array([c.rwp for c in cands])
        res = {"sampler": f"strided {steps}" if steps else f"ancestral {args.timesteps}", "k": args.k,
               "best_rwp": float(rw.min()), "median_rwp": float(np.median(rw)), "max_rwp": float(rw.max()),
               "seconds": time.time() - t0}
        print(json.dumps(res), flush=True)
        results.append(res)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").write_text(json.dumps({"file": Path(args.file).name, "timesteps": args.timesteps,
                                                 "schedule": args.schedule, "results": results}, indent=2))


if __name__ == "__main__":
    main()
