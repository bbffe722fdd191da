"""Train the pdfusion EGNN diffusion model on Ray Train (DDP), tracked in MLflow.

    python jobs/train_egnn.py --preset tiny --data ../shared/data/seed-oxides/graphs_h5 --num-workers 2
    RAY_AUTH_MODE=disabled ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python jobs/train_egnn.py --preset cpu --data /abs/path/graphs_h5 --name cpu-run

Started directly it starts a local Ray; under `ray job submit` it joins the cluster. A submitted job runs
from a temporary copy of the working directory: give absolute `--data`/`--storage-path` paths and set
`MLFLOW_TRACKING_URI` to a shared store (default: sqlite:///<project>/mlflow.db). Relaunching with the
same --name and --storage-path resumes from the latest checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from pdfusion.config import ConfigError, TrainConfig, load, read_mapping
from pdfusion.storage import normalize_storage_path


def build_config(args: argparse.Namespace) -> TrainConfig:
    """preset → config file (a partial TrainConfig, nested keys merged) → command-line flags → --set."""
    file_cfg = read_mapping(args.config, "--config") if args.config else None
    args._run_opts = (file_cfg.pop("run", {}) or {}) if file_cfg else {}
    flags = {
        "epochs": args.epochs, "max_steps": args.max_steps, "lr": args.lr, "seed": args.seed,
        "data.path": args.data, "data.extra_train": tuple(args.extra_train) if args.extra_train else None,
        "data.batch_size": args.batch_size, "data.max_structures": args.max_structures, "data.split_by": args.split_by,
        "checkpoint_every_steps": args.checkpoint_every_steps, "val_every_epochs": args.val_every_epochs,
    }
    cfg = load(TrainConfig, preset=args.preset, file=file_cfg, values=flags, sets=args.set or [], what="--config")
    # Ray runs the job from a copy of the working directory: make the paths absolute
    absolute = lambda p: str(Path(p).expanduser().resolve()) if p else p  # noqa: E731
    return dataclasses.replace(cfg, data=dataclasses.replace(
        cfg.data, path=absolute(cfg.data.path), extra_train=tuple(absolute(p) for p in cfg.data.extra_train)))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="cpu", choices=("tiny", "cpu", "gpu"),
                   help="base config (default cpu: the best recipe measured on 2 CPU cores, docs/training.md)")
    p.add_argument("--config", help="JSON/YAML file of TrainConfig fields overriding the preset (+ optional 'run')")
    p.add_argument("--data", help="pdfusion store directory or seed-oxides folder of .h5 files")
    p.add_argument("--extra-train", nargs="+", metavar="STORE",
                   help="more stores (e.g. jobs/generate_dataset.py --off-library output) added to the training "
                        "split only, minus --data's held-out groups")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="any config field, e.g. model.hidden=32")
    p.add_argument("--epochs", type=int)
    p.add_argument("--max-steps", type=int)
    p.add_argument("--batch-size", type=int, help="per-worker batch size")
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--max-structures", type=int)
    p.add_argument("--split-by", choices=("metal", "formula", "type", "random"))
    p.add_argument("--checkpoint-every-steps", type=int)
    p.add_argument("--val-every-epochs", type=int)
    p.add_argument("--num-workers", type=int, default=None, help="Ray Train workers (DDP ranks), default 1")
    p.add_argument("--use-gpu", action="store_true", help="one GPU per worker, NCCL, bf16 autocast")
    p.add_argument("--no-bf16", action="store_true", help="GPU: train in fp32")
    p.add_argument("--cpus-per-worker", type=float, default=None)
    p.add_argument("--gpus-per-worker", type=float, default=None)
    p.add_argument("--name", default=None, help="run name; same name + storage path = resume")
    p.add_argument("--storage-path", default=None, help="Ray Train storage (default ~/ray_results)")
    p.add_argument("--max-failures", type=int, default=None, help="worker-group restarts from the last checkpoint")
    p.add_argument("--num-to-keep", type=int, default=None, help="best checkpoints kept (by val R_wp)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default $MLFLOW_TRACKING_URI or sqlite)")
    p.add_argument("--experiment", default=None)
    p.add_argument("--register-as", default=None, help="registered model name (default pdfusion-egnn)")
    p.add_argument("--no-register", action="store_true")
    p.add_argument("--alias", default=None, help="registry alias for the new version, e.g. champion")
    p.add_argument("--no-mlflow", action="store_true")
    p.add_argument("--address", default=None, help="Ray address (default: RAY_ADDRESS or a local Ray)")
    p.add_argument("--fail-at-step", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--fail-marker", default=None, help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        cfg = build_config(args)
    except (ConfigError, TypeError, ValueError) as err:
        print(f"train_egnn: bad configuration: {err}", file=sys.stderr)
        return 2
    run = dict(args._run_opts)
    opt = {
        "num_workers": args.num_workers, "use_gpu": args.use_gpu or None, "cpus_per_worker": args.cpus_per_worker,
        "gpus_per_worker": args.gpus_per_worker, "name": args.name, "storage_path": args.storage_path,
        "max_failures": args.max_failures, "num_to_keep": args.num_to_keep, "tracking_uri": args.tracking_uri,
        "experiment": args.experiment, "register_as": args.register_as, "alias": args.alias,
        "fail_at_step": args.fail_at_step, "fail_marker": args.fail_marker,
    }
    run.update({k: v for k, v in opt.items() if v is not None})
    if args.no_register:
        run["register_as"] = None
    if args.no_mlflow:
        run["mlflow"] = False
    if args.no_bf16:
        run["bf16"] = False
    if run.get("storage_path"):
        run["storage_path"] = normalize_storage_path(run["storage_path"])

    import inspect

    import ray

    from pdfusion.training.ray_train import run_training

    try:
        inspect.signature(run_training).bind(cfg, **run)
    except TypeError as err:
        print(f"train_egnn: bad run option (--config 'run' section): {err}", file=sys.stderr)
        return 2

    if not ray.is_initialized():
        ray.init(address=args.address, include_dashboard=False)
    outcome = run_training(cfg, **run)
    summary = {f.name: getattr(outcome, f.name) for f in dataclasses.fields(outcome) if f.name != "result"}
    summary["metrics"] = {k: v for k, v in outcome.metrics.items() if isinstance(v, int | float | str)}
    print("PDFUSION_TRAINING_RESULT " + json.dumps(summary, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
