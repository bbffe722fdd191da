"""Training throughput benchmark, measured side by side in one run.

1. graphs/s of the Ray Train loop with 1 and with 2 CPU workers (same per-worker batch, same steps),
   counting only data + optimizer-step time, all ranks together; prints the 2-vs-1 ratio.
2. padding efficiency (real atoms / padded slots) of size-bucketed vs random batches on the seed-oxides
   particle sizes, averaged over several epochs; prints the ratio.

    nice -n 10 python benchmarks/bench_train_throughput.py --data ../shared/data/seed-oxides/graphs_h5
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
from pathlib import Path

import numpy as np


def padding_comparison(sizes: np.ndarray, batch_size: int, epochs: int, seed: int) -> dict[str, float]:
    from pdfusion.data.batching import BucketBatchSampler, padding_efficiency

    out = {}
    for label, pool in (("bucketed", 64), ("random", 1)):  # a pool of one batch = plain random batches
        sampler = BucketBatchSampler(sizes, batch_size, shuffle=True, seed=seed, pool_batches=pool)
        effs = [padding_efficiency(sizes, sampler.global_batches(e)) for e in range(epochs)]
        out[label] = float(np.mean(effs))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/seed-oxides/graphs_h5"))
    p.add_argument("--preset", default="tiny")
    p.add_argument("--batch-size", type=int, default=8, help="per worker")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--max-structures", type=int, default=None)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--padding-epochs", type=int, default=5)
    args = p.parse_args(argv)

    import ray

    from pdfusion.config import preset
    from pdfusion.data.dataset import open_dataset
    from pdfusion.training.ray_train import run_training

    sizes = np.asarray(open_dataset(args.data, max_structures=args.max_structures).sizes())
    pad = padding_comparison(sizes, args.batch_size, args.padding_epochs, seed=0)
    print(f"padding efficiency, batch {args.batch_size}, {len(sizes)} particles ({sizes.min()}-{sizes.max()} atoms), "
          f"{args.padding_epochs} epochs: bucketed {pad['bucketed']:.3f}  random {pad['random']:.3f}  "
          f"ratio {pad['bucketed'] / pad['random']:.2f}x", flush=True)

    base = preset(args.preset)
    cfg = dataclasses.replace(
        base, data=dataclasses.replace(base.data, path=str(Path(args.data).resolve()), batch_size=args.batch_size,
                                       max_structures=args.max_structures),
        max_steps=args.steps, epochs=10**6, checkpoint_every_steps=10**9, val_every_epochs=0, val_pdfs=1,
        val_samples=1, val_steps=2,
    )
    ray.init(address="local", num_cpus=max(args.workers), include_dashboard=False, log_to_driver=False)
    rates = {}
    with tempfile.TemporaryDirectory() as tmp:
        for w in args.workers:
            out = run_training(cfg, num_workers=w, name=f"bench_w{w}", storage_path=tmp, mlflow=False,
                               final_artifacts=False, num_to_keep=1)
            rates[w] = float(out.metrics["train_graphs_per_s"])
            print(f"{w} worker(s): {rates[w]:.2f} graphs/s over {out.final_step} steps "
                  f"(batch {args.batch_size}/worker, preset {args.preset})", flush=True)
    if 1 in rates:
        for w, r in rates.items():
            if w != 1:
                print(f"speed-up {w} vs 1 worker: {r / rates[1]:.2f}x", flush=True)
    print("BENCH_RESULT " + json.dumps({"padding": pad, "graphs_per_s": rates}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
