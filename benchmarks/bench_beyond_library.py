"""Beyond-library benchmark: off-library targets at held-out metals, library of perfect spherical cuts vs a model.

    python benchmarks/bench_beyond_library.py --n-targets 48 --out outputs/beyond_library            # library side
    python benchmarks/bench_beyond_library.py --checkpoint models/default.pt --model-targets 48 \\
        --train-data data_out/seed --out outputs/beyond_library_model                          # + the model

Targets are regenerated from ``--seed`` (``pdfusion.evaluation.beyond_library``); reports median best-of-k R_wp
raw / expansion-fitted / refined and the composition-matched RMSD, writes ``report.json`` and ``table.md``.
``--train-data`` refuses to score a model whose training data hold a target metal.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

from pdfusion.config import BeyondLibraryConfig, ConfigError


def build_parser() -> argparse.ArgumentParser:
    d = BeyondLibraryConfig()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-targets", type=int, default=d.n_targets)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--metals", nargs="+", default=list(d.metals), help="target metals (held out of training)")
    p.add_argument("--k", type=int, default=d.k, help="candidates per target (best-of-k)")
    p.add_argument("--refine-top", type=int, default=d.refine_top)
    p.add_argument("--refine-steps", type=int, default=d.refine_steps)
    p.add_argument("--checkpoint", default=None, help="model checkpoint or models:/ URI (omit: library only)")
    p.add_argument("--model-targets", type=int, default=None, help="score the model on the first N targets only")
    p.add_argument("--model-start", type=int, default=0, help="first target the model is scored on (split a run)")
    p.add_argument("--save-candidates", default=None, metavar="DIR",
                   help="write every target's candidates to DIR (model_NNN.npz, library_NNN.npz)")
    p.add_argument("--no-library", action="store_true", help="skip the library side")
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: the model's)")
    p.add_argument("--guidance", type=float, default=None, help="CFG γ (default: the model's)")
    p.add_argument("--pdf-guidance", type=float, default=None, help="(default: the model's)")
    p.add_argument("--pdf-guidance-iters", type=int, default=None, help="(default: the model's)")
    p.add_argument("--pdf-guidance-cohesion", type=float, default=None,
                   help="stray-atom penalty weight in PDF guidance (default: the model's)")
    p.add_argument("--pdf-guidance-window", type=float, nargs=2, default=None, metavar=("START", "END"),
                   help="shares of the sampler's steps that are guided (default: the model's)")
    p.add_argument("--prune-fragments", action=argparse.BooleanOptionalAction, default=None,
                   help="drop atoms outside each candidate's largest bonded group before scoring (default: the "
                        "model's)")
    p.add_argument("--restarts", type=int, default=None,
                   help="restart sampling: late, guided re-runs of each finished sample (default: the model's)")
    p.add_argument("--restart-t", type=int, default=None, help="the time restarts re-noise to (default: the model's)")
    p.add_argument("--count-temperature", type=float, default=None,
                   help="temperature of the count head's size draw, < 1 sharpens (default: the model's)")
    p.add_argument("--resample-at", type=float, nargs="*", default=None, metavar="FRAC",
                   help="population resampling fractions (default: the model's; none given: off)")
    p.add_argument("--resample-keep", type=float, default=None, help="(default: the model's)")
    p.add_argument("--sizes", choices=("head", "library", "fit"), default="head",
                   help="model candidates' atom counts: the count head's, those of the k nearest library entries, "
                        "or those of the 4 best expansion-fitted of them (times --size-scale)")
    p.add_argument("--size-scale", type=float, default=1.0,
                   help="with --sizes fit: sample this much larger than the fitted library's counts (prune after)")
    p.add_argument("--prune-atoms", action="store_true",
                   help="after refinement, delete the atoms whose removal lowers R_wp and refine again")
    p.add_argument("--eta", type=float, default=1.0, help="DDIM stochasticity of the strided sampler")
    p.add_argument("--train-data", nargs="+", default=None, metavar="STORE",
                   help="the model's training stores / seed folders (--data and every --extra-train): "
                        "must hold no target metal")
    p.add_argument("--out", default="outputs/beyond_library")
    return p


def main(argv: list[str] | None = None) -> int:
    from pdfusion.evaluation.beyond_library import run_benchmark, table, training_overlap

    args = build_parser().parse_args(argv)
    try:
        cfg = replace(BeyondLibraryConfig(), n_targets=args.n_targets, seed=args.seed, metals=tuple(args.metals),
                      k=args.k, refine_top=args.refine_top, refine_steps=args.refine_steps,
                      prune_atoms=args.prune_atoms)
    except ConfigError as exc:
        print(f"bench_beyond_library: error: {exc}", file=sys.stderr)
        return 2
    for path in args.train_data or ():
        seen = training_overlap(path, cfg.metals)
        if seen:
            print(f"bench_beyond_library: error: --train-data {path} holds target metals {seen}; "
                  "they would not be held out", file=sys.stderr)
            return 2
    bundle, scfg = None, None
    if args.checkpoint:
        from pdfusion.inference.bundle import load_bundle

        bundle = load_bundle(args.checkpoint)
        scfg = bundle.sample_config(guidance=args.guidance, steps=args.steps, pdf_guidance=args.pdf_guidance,
                                    pdf_guidance_iters=args.pdf_guidance_iters,
                                    pdf_guidance_cohesion=args.pdf_guidance_cohesion,
                                    pdf_guidance_window=None if args.pdf_guidance_window is None
                                    else tuple(args.pdf_guidance_window), prune_fragments=args.prune_fragments,
                                    eta=args.eta,
                                    resample_at=None if args.resample_at is None else tuple(args.resample_at),
                                    resample_keep=args.resample_keep, restarts=args.restarts,
                                    restart_t=args.restart_t, count_temperature=args.count_temperature)
    report = run_benchmark(cfg, bundle=bundle, sample_cfg=scfg, model_targets=args.model_targets,
                           library=not args.no_library, sizes=args.sizes, size_scale=args.size_scale,
                           model_start=args.model_start, save_candidates=args.save_candidates,
                           progress=lambda m: print(m, flush=True))
    report["command"] = " ".join(["python", "benchmarks/bench_beyond_library.py",
                                  *(argv if argv is not None else sys.argv[1:])])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=1, default=float))
    text = table(report)
    (out / "table.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
