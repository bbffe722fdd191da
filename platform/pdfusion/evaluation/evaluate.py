"""Run the evaluation harness end to end: split, methods, Ray fan-out, JSON report, plots, MLflow.

`run_evaluation(cfg)` is the library entry point (`jobs/evaluate.py` is a thin shell over it). The split
defaults to the model's own training split (same data settings, same seed), so the held-out metals are
absent from training and the library baseline only sees training structures.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from pdfusion import tracking
from pdfusion.config import DataConfig, EvalConfig, PDFConfig, to_dict
from pdfusion.data.dataset import open_dataset
from pdfusion.data.splits import split_indices
from pdfusion.evaluation import harness, plots
from pdfusion.inference.bundle import load_bundle
from pdfusion.io_utils import atomic_write


def _method(name: str, cfg: EvalConfig, bundle, library, pdf_cfg: PDFConfig):
    if name == "model":
        method = harness.model_method(bundle, guidance=cfg.guidance, steps=cfg.steps)
    elif name == "unconditional":
        method = harness.model_method(bundle, guidance=0.0, steps=cfg.steps)
    elif name == "library":
        method = harness.library_method(*library)
    else:
        method = harness.random_method()
    return harness.refined(method, pdf_cfg, cfg.refine_steps) if cfg.refine else method


def _evaluate_chunk(cfg: EvalConfig, name: str, targets, library, pdf_cfg: PDFConfig, keep: int):
    """One Ray task (or an in-process call): score one method on a chunk of targets."""
    import torch

    torch.set_num_threads(1)
    bundle = None
    if name in ("model", "unconditional"):
        bundle = load_bundle(cfg.model)
    return harness.score_targets(_method(name, cfg, bundle, library, pdf_cfg), targets, pdf_cfg, cfg.k, cfg.seed, keep)


def run_evaluation(cfg: EvalConfig, progress: bool = True, log_mlflow: bool = False) -> dict[str, Any]:
    from tqdm.auto import tqdm

    t_start = time.perf_counter()
    data_cfg, pdf_cfg, model_info, max_atoms = DataConfig(path=cfg.data), PDFConfig(), {}, None
    if cfg.model:
        bundle = load_bundle(cfg.model)
        data_cfg, pdf_cfg = replace(bundle.config.data, path=cfg.data), bundle.pdf_config
        max_atoms = bundle.config.model.max_atoms
        model_info = {"name": bundle.name, "version": bundle.version, "defaults": bundle.defaults}
    overrides = {k: v for k, v in (("split_by", cfg.split_by), ("val_fraction", cfg.val_fraction),
                                   ("split_seed", cfg.split_seed)) if v is not None}
    data_cfg = replace(data_cfg, **overrides)
    ds = open_dataset(cfg.data, max_structures=data_cfg.max_structures)
    if len(ds.r_grid) != pdf_cfg.n_r:
        raise ValueError(f"data: {cfg.data!r} has {len(ds.r_grid)} r points but the model expects {pdf_cfg.n_r}")
    train_idx, val_idx = split_indices(ds, data_cfg, max_atoms=max_atoms)
    if cfg.max_targets is not None:
        val_idx = val_idx[np.linspace(0, len(val_idx) - 1, min(cfg.max_targets, len(val_idx))).round().astype(int)]
    targets = harness.targets_from_dataset(ds, val_idx)
    library = None
    if "library" in cfg.methods:
        lib_targets = harness.targets_from_dataset(ds, train_idx)
        library = ([t.truth for t in lib_targets], np.stack([t.pdf for t in lib_targets]))
    held_groups = sorted(set(ds.groups(data_cfg.split_by)[i] for i in val_idx)) if data_cfg.split_by != "random" else []
    train_groups = set(ds.groups(data_cfg.split_by)[i] for i in train_idx) if data_cfg.split_by != "random" else set()
    if set(held_groups) & train_groups:
        raise RuntimeError("split: held-out groups leak into training; this is a bug in the split")

    chunks = [c for c in np.array_split(np.arange(len(targets)), min(cfg.num_tasks, len(targets))) if len(c)]
    jobs = [(name, ci, [targets[i] for i in chunk]) for name in cfg.methods for ci, chunk in enumerate(chunks)]
    results: dict[str, list] = {name: [None] * len(chunks) for name in cfg.methods}
    kept: dict[str, list] = {name: [] for name in cfg.methods}
    use_ray = cfg.num_tasks > 1
    bar = tqdm(total=len(jobs), desc="evaluate", disable=not progress)
    if use_ray:
        import ray

        if not ray.is_initialized():
            ray.init(address=os.environ.get("RAY_ADDRESS"), include_dashboard=False, log_to_driver=False)
        remote = ray.remote(num_cpus=1)(_evaluate_chunk)
        lib_ref = ray.put(library)
        refs = {remote.remote(cfg, name, chunk_t, lib_ref, pdf_cfg, cfg.plots if ci == 0 else 0): (name, ci)
                for name, ci, chunk_t in jobs}
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            name, ci = refs[done[0]]
            rows, kp = ray.get(done[0])
            results[name][ci] = rows
            kept[name].extend(kp)
            bar.update()
    else:
        for name, ci, chunk_t in jobs:
            rows, kp = _evaluate_chunk(cfg, name, chunk_t, library, pdf_cfg, cfg.plots if ci == 0 else 0)
            results[name][ci] = rows
            kept[name].extend(kp)
            bar.update()
    bar.close()
    rows_by_method = {name: [r for chunk in results[name] for r in chunk] for name in cfg.methods}
    summary = {name: harness.summarise(rows) for name, rows in rows_by_method.items()}
    report = {
        "config": to_dict(cfg), "model": model_info,
        "split": {**to_dict(data_cfg), "heldout_groups": held_groups, "n_train": int(len(train_idx)),
                  "n_targets": len(targets)},
        "summary": summary, "per_target": rows_by_method, "wall_s": time.perf_counter() - t_start,
    }
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "report.json", json.dumps(report, indent=1, default=float))
    (out / "summary.md").write_text(summary_table(summary))
    plots.rwp_histograms(rows_by_method, out / "rwp_histograms.png")
    r = np.asarray(ds.r_grid)
    for name in cfg.methods:
        if kept[name]:
            plots.pdf_overlays(kept[name], r, pdf_cfg, out / f"overlay_{name}.png")
            plots.structure_views(kept[name], out / f"structures_{name}.png")
    if log_mlflow:
        _log_mlflow(report, out)
    return report


def summary_table(summary: dict[str, dict[str, float]]) -> str:
    """Markdown table, one row per method."""
    cols = ["rwp_best_median", "rwp_median_median", "rwp_mean_median", "frac_rwp_best_le_0.10", "valid_fraction_median",
            "n_atoms_error_median", "mo_ratio_error_median", "composition_match_median", "rmsd_best_median",
            "diversity_median", "nan_total", "wall_s_per_structure_median"]
    head = "| method | " + " | ".join(c.replace("_median", "") for c in cols) + " |"
    lines = [head, "|" + "---|" * (len(cols) + 1)]
    for name, s in summary.items():
        lines.append(f"| {name} | " + " | ".join(f"{s.get(c, float('nan')):.4g}" for c in cols) + " |")
    return "\n".join(lines) + "\n"


def _log_mlflow(report: dict[str, Any], out: Path) -> str:
    """One MLflow run (experiment `pdfusion-eval`) with params, per-method metrics and every output file."""
    from mlflow import MlflowClient

    uri = tracking.default_tracking_uri()
    run_id = tracking.start_run(uri, experiment="pdfusion-eval", run_name="evaluate", params=report["config"])
    client = MlflowClient(tracking_uri=uri)
    for name, s in report["summary"].items():
        for k, v in s.items():
            if np.isfinite(v):
                client.log_metric(run_id, f"{name}.{k}", float(v))
    client.log_artifacts(run_id, str(out))
    tracking.finish_run(uri, run_id)
    return run_id
