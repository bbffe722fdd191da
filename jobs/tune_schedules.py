"""Ray Tune sweep over training choices (noise schedule, T, lr, p_uncond, width/depth), ASHA + Optuna.

    python jobs/tune_schedules.py --data ../shared/data/seed-oxides/graphs_fixed_num_135 --preset tiny \
        --space configs/tune_schedules.yaml --num-samples 6 --name sched-sweep
    ray job submit --working-dir . -- python jobs/tune_schedules.py ...   # on a cluster

Rerunning with the same --name (and --storage-path) continues the sweep instead of restarting it.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

from pdfusion.config import ConfigError, preset, with_sets
from pdfusion.evaluation.metrics import VAL_BEST_OF_K_METRIC
from pdfusion.tuning.space import DEFAULT_SCHEDULE_SPACE, SCHEDULE_KEYS, load_space, validate_space


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="pdfusion store directory or seed-oxides folder")
    p.add_argument("--preset", default="tiny", choices=["tiny", "cpu", "gpu"], help="base training config")
    p.add_argument("--space", default=None, help="search space YAML/JSON (default: schedule x lr x p_uncond)")
    p.add_argument("--num-samples", type=int, default=4, help="number of trials")
    p.add_argument("--name", default="pdfusion-schedule-sweep", help="experiment name (resume key)")
    p.add_argument("--storage-path", default="runs/tune", help="where Tune keeps experiment state")
    p.add_argument("--epochs", type=int, default=None, help="epochs per trial (ASHA's max_t)")
    p.add_argument("--max-structures", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--num-workers", type=int, default=1, help="Ray Train workers per trial")
    p.add_argument("--cpus-per-worker", type=float, default=1.0)
    p.add_argument("--use-gpu", action="store_true")
    p.add_argument("--grace-period", type=int, default=1, help="ASHA grace period (epochs)")
    p.add_argument("--reduction-factor", type=int, default=2, help="ASHA reduction factor")
    p.add_argument("--max-concurrent", type=int, default=None, help="default: cluster CPUs / CPUs per trial")
    p.add_argument("--metric", default=VAL_BEST_OF_K_METRIC, choices=[VAL_BEST_OF_K_METRIC, "val_loss"],
                   help="validation metric ASHA and Optuna minimise")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", metavar="KEY=VALUE", default=[],
                   help="any base config field, e.g. --set val_pdfs=8 --set model.cutoff=6.0")
    p.add_argument("--evaluate-first", action="append", metavar="JSON", default=[],
                   help="a configuration Optuna runs first, "
                        'e.g. \'{"schedule": "cosine", "lr": 5e-4, "p_uncond": 0.1}\'')
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        space = validate_space(load_space(args.space) if args.space else DEFAULT_SCHEDULE_SPACE, SCHEDULE_KEYS)
        if not Path(args.data).expanduser().exists():
            raise ConfigError(f"--data: {args.data!r} does not exist")
        base = preset(args.preset)
        # absolute: Tune trial actors and Train workers run in their own directories
        data = replace(base.data, path=str(Path(args.data).expanduser().resolve()), max_structures=args.max_structures,
                       batch_size=args.batch_size or base.data.batch_size)
        base = with_sets(replace(base, data=data, epochs=args.epochs or base.epochs), args.set)
        try:
            first = [json.loads(p) for p in args.evaluate_first]
        except json.JSONDecodeError as exc:
            raise ConfigError(f"--evaluate-first: not valid JSON ({exc})") from exc
    except ConfigError as exc:
        print(f"tune_schedules: error: {exc}", file=sys.stderr)
        return 2
    from pdfusion.tuning.sweeps import run_schedule_sweep

    out = run_schedule_sweep(base, space, name=args.name, storage_path=args.storage_path, num_samples=args.num_samples,
                             num_workers=args.num_workers, cpus_per_worker=args.cpus_per_worker, use_gpu=args.use_gpu,
                             grace_period=args.grace_period, reduction_factor=args.reduction_factor,
                             max_concurrent=args.max_concurrent, seed=args.seed, metric=args.metric,
                             points_to_evaluate=first)
    for row in out["rows"]:
        print(json.dumps(row, default=str))
    print(f"best: {json.dumps(out['best'], default=str)}  (MLflow parent run {out['mlflow_run_id']}, "
          f"resumed={out['resumed']}, "
          f"placement groups of stopped trials released: {len(out['reaped_placement_groups'])})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
