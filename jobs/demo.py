"""The main demo, on embedded defaults and data it makes itself (no downloads, no ../shared):

1. generate a small mono-metal oxide dataset on Ray (structures + simulated PDFs) and plot a few PDFs;
2. with `--train`, train a small EGNN diffusion model for a few minutes on CPU with Ray Train, tracked in MLflow
   and registered in its Model Registry; otherwise use the model that ships (models/pdfusion-cpu-v2);
3. sample candidates for held-out PDFs (metals that model never saw), rank them by R_wp, write XYZ files and,
   per PDF, one figure: the target with the top candidates' curves, the difference curve, and the structures;
4. print where to look (and the MLflow UI for a trained model).

    python jobs/demo.py                        # the shipped model: a few minutes on 2 CPU cores
    python jobs/demo.py --train --minutes 2    # train a fresh (small) model first, sample with it
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from pdfusion.evaluation.metrics import VAL_BEST_OF_K_METRIC

DEMO_TYPES = ("NaCl", "Rutile", "Fluorite", "Wurtzite", "ZincBlende", "CsCl")
DEMO_METALS = ("Mg", "Ti", "Mn", "Fe", "Co", "Ni", "Cu", "Zn", "Ca", "Sr")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="demo_out", help="output directory")
    p.add_argument("--train", action="store_true", help="train a fresh model with Ray Train and sample with it "
                   "(default: sample with the shipped model)")
    p.add_argument("--minutes", type=float, default=4.0, help="training budget on CPU (with --train)")
    p.add_argument("--radii", nargs="+", type=float, default=[5.0],
                   help="particle radii (Å), >= one metal-metal distance")
    p.add_argument("--variants", type=int, default=2, help="particles per (type, metal, radius)")
    p.add_argument("-k", type=int, default=8, help="candidates per held-out PDF")
    p.add_argument("--targets", type=int, default=4, help="held-out PDFs to sample for")
    p.add_argument("--model-name", default="pdfusion-demo", help="registered MLflow model name")
    return p


def _plot_pdfs(ds, idx, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    for i in idx:
        rec = ds.record(int(i))
        ax.plot(ds.r_grid, rec.pdf, lw=1, label=f"{rec.meta.get('structure_type')} {rec.meta.get('formula')} "
                                                  f"r={rec.meta.get('radius')} Å ({len(rec.numbers)} atoms)")
    ax.set_xlabel("r (Å)")
    ax.set_ylabel("G(r) (normalised)")
    ax.set_title("Simulated PDFs of generated nanoparticles")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    import ray
    import torch
    from pymatgen.core import Element

    from pdfusion import tracking
    from pdfusion.config import DataConfig, GenerateConfig, preset
    from pdfusion.data.dataset import open_dataset
    from pdfusion.data.generate import generate, write_summary
    from pdfusion.data.splits import split_indices
    from pdfusion.evaluation.plots import solution_figure
    from pdfusion.inference.bundle import default_model_path, load_bundle
    from pdfusion.inference.candidates import generate_candidates, metal_number
    from pdfusion.training.ray_train import run_training

    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS"), include_dashboard=False, log_to_driver=False)

    # 1. data ------------------------------------------------------------------------------------
    t0 = time.perf_counter()
    gen = GenerateConfig(out_dir=str(out / "data"), types=DEMO_TYPES, metals=DEMO_METALS, radii=tuple(args.radii),
                         variants=args.variants, shard_size=32, seed=0)
    print(f"[1/4] generating {len(DEMO_TYPES)} types x {len(DEMO_METALS)} metals x {len(args.radii)} radii "
          f"x {args.variants} variants into {gen.out_dir}")
    generate(gen)
    summary = write_summary(gen.out_dir, out / "dataset_summary.json", out / "atom_counts.png")
    ds = open_dataset(gen.out_dir)
    _plot_pdfs(ds, np.linspace(0, len(ds) - 1, 5).round().astype(int), out / "generated_pdfs.png")
    print(f"      {len(ds)} structures ({summary.get('n_structures', len(ds))}) in {time.perf_counter() - t0:.0f} s; "
          f"plots: {out / 'generated_pdfs.png'}, {out / 'atom_counts.png'}")

    # 2. the model: shipped, or trained here --------------------------------------------------------
    outcome = None
    if args.train:
        base = preset("tiny")
        cfg = replace(base, model=replace(base.model, hidden=32, layers=3, pdf_embed=32),
                      data=DataConfig(path=gen.out_dir, split_by="metal", val_fraction=0.2, batch_size=8),
                      epochs=10_000, lr=1e-3, warmup_steps=20, val_every_epochs=5, val_pdfs=2, val_samples=2,
                      val_steps=20, checkpoint_every_steps=100)
        steps_per_s = 2.0  # measured order of magnitude for this config on 2 CPU cores; the budget sets max_steps
        cfg = replace(cfg, max_steps=max(50, int(args.minutes * 60 * steps_per_s)))
        print(f"[2/4] training on Ray Train (1 worker, {cfg.max_steps} steps, ~{args.minutes:g} min), "
              "tracked in MLflow")
        t0 = time.perf_counter()
        outcome = run_training(cfg, num_workers=1, name=f"demo-{int(time.time())}",
                               storage_path=str(out / "ray_results"), register_as=args.model_name,
                               experiment="pdfusion-demo")
        print(f"      {outcome.final_step} steps in {time.perf_counter() - t0:.0f} s; val best-of-K R_wp "
              f"{outcome.metrics.get(VAL_BEST_OF_K_METRIC, float('nan')):.3f}; registered "
              f"models:/{outcome.model_name}/{outcome.model_version}")
        uri = (f"models:/{outcome.model_name}/{outcome.model_version}" if outcome.model_version
               else outcome.checkpoint_path)
        bundle = load_bundle(uri)
        _, val_idx = split_indices(ds, cfg.data, max_atoms=cfg.model.max_atoms)
    else:
        bundle = load_bundle(default_model_path())
        card = json.loads((default_model_path().parent / "card.json").read_text())
        unseen = set(card["held_out_metals"])
        metals = [Element.from_Z(metal_number(m)).symbol for m in ds.groups("metal")]  # metadata, no record reads
        val_idx = np.asarray([i for i, m in enumerate(metals) if m in unseen], dtype=np.int64)
        print(f"[2/4] the shipped model {bundle.name} (step {bundle.version}; never saw {', '.join(sorted(unseen))}): "
              f"{len(val_idx)} of the generated PDFs are of those metals")
        if not len(val_idx):
            raise SystemExit(f"no generated PDF of a metal the shipped model never saw ({sorted(unseen)}); "
                             "add one of them to the demo metals or use --train")

    # 3. sample for held-out PDFs ----------------------------------------------------------------
    pick = val_idx[np.linspace(0, len(val_idx) - 1, min(args.targets, len(val_idx))).round().astype(int)]
    print(f"[3/4] sampling {args.k} candidates for each of {len(pick)} held-out PDFs (metals unseen in training)")
    xyz_dir = out / "candidates"
    xyz_dir.mkdir(exist_ok=True)
    for i in pick:
        rec = ds.record(int(i))
        meta = rec.meta
        cfg_s = bundle.sample_config(n_samples=args.k, seed=int(i))
        cands = generate_candidates(bundle, rec.pdf[None].astype(np.float32), [meta["metal"]], cfg_s)[0]
        tag = f"{meta.get('structure_type')}_{meta.get('formula')}_r{meta.get('radius')}"
        for rank, c in enumerate(cands[:3], 1):
            (xyz_dir / f"{tag}_rank{rank}_rwp{c.rwp:.3f}.xyz").write_text(c.to_xyz())
        solution_figure(ds.r_grid, rec.pdf, cands, f"held-out {tag} ({len(rec.numbers)} atoms)",
                        out / f"solution_{tag}.png")
        print(f"      {tag:32s} true N={len(rec.numbers):4d}  best R_wp={cands[0].rwp:.3f} (N={cands[0].n_atoms})  "
              f"median R_wp={np.median([c.rwp for c in cands]):.3f}")

    # 4. where to look ---------------------------------------------------------------------------
    print(f"[4/4] outputs in {out} (solution_*.png: fit, difference and structures; XYZ under candidates/; "
          "generated_pdfs.png)")
    if outcome is not None:
        print(f"      MLflow run {outcome.mlflow_run_id}; open the UI with:\n"
              f"      mlflow ui --backend-store-uri {outcome.tracking_uri or tracking.default_tracking_uri()}  "
              f"# then http://127.0.0.1:5000")
    return 0


if __name__ == "__main__":
    sys.exit(main())
