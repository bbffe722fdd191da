"""Evaluate a model and its baselines on held-out PDFs, Ray-parallel over targets.

    python jobs/evaluate.py --model outputs/model.pt --data ../shared/data/seed-oxides/graphs_h5 -k 16
    python jobs/evaluate.py --data ../shared/data/seed-oxides/graphs_h5 --methods library random   # no model

Writes report.json, summary.md and plots to --out; --mlflow logs them as one MLflow run.
"""

from __future__ import annotations

import argparse
import sys

from pdfusion.config import EVAL_METHODS, ConfigError, EvalConfig


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="", help="checkpoint path or MLflow models:/name/version URI")
    p.add_argument("--data", required=True, help="pdfusion store directory or seed-oxides folder of .h5 files")
    p.add_argument("--out", default="outputs/eval", help="output directory")
    p.add_argument("--methods", nargs="+", default=list(EVAL_METHODS), choices=EVAL_METHODS)
    p.add_argument("-k", type=int, default=16, help="candidates per PDF")
    p.add_argument("--guidance", type=float, default=None, help="guidance weight γ (default: the model's)")
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: the model's)")
    p.add_argument("--refine", action="store_true",
                   help="refine every method's candidates on R_wp before scoring (baselines too)")
    p.add_argument("--refine-steps", type=int, default=300)
    p.add_argument("--max-targets", type=int, default=None, help="evaluate an evenly spaced subset of held-out PDFs")
    p.add_argument("--split-by", choices=["metal", "formula", "type", "random"], default=None,
                   help="group split (default: the model's training split)")
    p.add_argument("--val-fraction", type=float, default=None)
    p.add_argument("--split-seed", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-tasks", type=int, default=2, help="Ray tasks (1 = run in this process)")
    p.add_argument("--mlflow", action="store_true", help="log the report and plots to MLflow")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = EvalConfig(model=args.model, data=args.data, out_dir=args.out, methods=tuple(args.methods), k=args.k,
                         guidance=args.guidance, steps=args.steps, refine=args.refine, refine_steps=args.refine_steps,
                         max_targets=args.max_targets,
                         split_by=args.split_by, val_fraction=args.val_fraction, split_seed=args.split_seed,
                         seed=args.seed, num_tasks=args.num_tasks)
    except ConfigError as exc:
        print(f"evaluate: error: {exc}", file=sys.stderr)
        return 2
    from pdfusion.evaluation.evaluate import run_evaluation

    report = run_evaluation(cfg, log_mlflow=args.mlflow)
    from pdfusion.evaluation.evaluate import summary_table

    print(summary_table(report["summary"]))
    print(f"held-out groups: {report['split']['heldout_groups']}  targets: {report['split']['n_targets']}  "
          f"wall: {report['wall_s']:.1f} s  report: {cfg.out_dir}/report.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
