"""Sweep the guidance weight γ and sampler steps for a trained model (sampling only, no retraining).

    python jobs/tune_guidance.py --model models:/pdfusion-egnn/1 --data ../shared/data/seed-oxides/graphs_h5 \
        --space configs/tune_guidance.yaml -k 8 --max-pdfs 16

Scores median best-of-K R_wp on the model's validation PDFs; the best (γ, steps) is recorded on the
registered model version (MLflow tags pdfusion.guidance / pdfusion.steps) so serving uses it by default.
"""

from __future__ import annotations

import argparse
import json
import sys

from pdfusion.config import ConfigError
from pdfusion.tuning.space import DEFAULT_GUIDANCE_SPACE, GUIDANCE_KEYS, load_space, validate_space


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="checkpoint path or MLflow models:/name/version URI")
    p.add_argument("--data", required=True, help="dataset the model was trained on (its validation split is used)")
    p.add_argument("--space", default=None, help="search space YAML/JSON over guidance and steps")
    p.add_argument("--search", choices=["grid", "optuna"], default="grid")
    p.add_argument("--num-samples", type=int, default=1, help="grid repeats, or Optuna trials")
    p.add_argument("-k", type=int, default=8, help="candidates per PDF")
    p.add_argument("--max-pdfs", type=int, default=16, help="validation PDFs scored per trial")
    p.add_argument("--name", default="pdfusion-guidance-sweep", help="experiment name (resume key)")
    p.add_argument("--storage-path", default="runs/tune")
    p.add_argument("--no-record", action="store_true", help="do not write the best γ/steps to the registered model")
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        space = validate_space(load_space(args.space) if args.space else DEFAULT_GUIDANCE_SPACE, GUIDANCE_KEYS)
        if args.k < 1 or args.max_pdfs < 1:
            raise ConfigError("k / max_pdfs: must be >= 1")
    except ConfigError as exc:
        print(f"tune_guidance: error: {exc}", file=sys.stderr)
        return 2
    from pdfusion.tuning.sweeps import run_guidance_sweep

    out = run_guidance_sweep(args.model, args.data, space, name=args.name, storage_path=args.storage_path, k=args.k,
                             max_pdfs=args.max_pdfs, num_samples=args.num_samples, search=args.search, seed=args.seed,
                             record=not args.no_record)
    for row in out["rows"]:
        print(json.dumps(row, default=str))
    print(f"best: {json.dumps(out['best'], default=str)}  (MLflow parent run {out['mlflow_run_id']}, "
          f"resumed={out['resumed']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
