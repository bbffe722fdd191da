"""ModelBundle: a trained model ready to sample, rebuilt from a checkpoint alone.

Serving, the CLI and evaluation only ever need the EMA weights, the configs they were trained
with (model, diffusion, and the PDFConfig that simulated the training PDFs, which ranking must reuse)
and the sampling defaults chosen for that model; the bundle carries exactly that.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pdfusion import tracking
from pdfusion.config import PDFConfig, SampleConfig, TrainConfig, from_dict
from pdfusion.diffusion.factory import build_model
from pdfusion.inference.checkpoint import load_checkpoint, save_checkpoint
from pdfusion.pdf import r_grid

DEFAULTS = {"guidance": 1.0, "steps": 100, "pdf_guidance": 0.0, "pdf_guidance_iters": 1,
            "pdf_guidance_cohesion": 0.0, "pdf_guidance_window": [0.0, 1.0], "resample_at": [], "resample_keep": 0.5,
            "prune_fragments": False, "restarts": 0, "restart_t": 100, "count_temperature": 1.0,
            "sizing": "head", "size_scale": 1.0}
# the model that ships with the repository (models/README.md): what `pdfusion sample` and serve use by default
SHIPPED_MODEL = Path(__file__).resolve().parents[3] / "models" / "pdfusion-cpu-v2" / "model.pt"


@dataclass
class ModelBundle:
    model: torch.nn.Module  # EMA weights, eval mode
    diffusion: Any  # pdfusion.diffusion.gaussian.GaussianDiffusion
    config: TrainConfig
    pdf_config: PDFConfig
    r_grid: np.ndarray  # (n_r,) Å, the grid conditioning PDFs must be on
    defaults: dict[str, Any] = field(default_factory=lambda: dict(DEFAULTS))
    name: str = "pdfusion"
    version: str = "0"
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    source: str = ""

    def sample_config(self, **overrides: Any) -> SampleConfig:
        """The model's sampling defaults (`defaults`: guidance, steps, PDF guidance, resampling) as a SampleConfig,
        with every override that is not None on top: the one place the CLI, demo, benchmarks and serve read them."""
        d = self.defaults
        base = {"guidance": float(d["guidance"]), "steps": d["steps"], "pdf_guidance": float(d["pdf_guidance"]),
                "pdf_guidance_iters": int(d["pdf_guidance_iters"]),
                "pdf_guidance_cohesion": float(d["pdf_guidance_cohesion"]),
                "pdf_guidance_window": tuple(d["pdf_guidance_window"]), "resample_at": tuple(d["resample_at"]),
                "resample_keep": float(d["resample_keep"]), "prune_fragments": bool(d["prune_fragments"]),
                "restarts": int(d["restarts"]), "restart_t": int(d["restart_t"]),
                "count_temperature": float(d["count_temperature"]), "sizing": str(d["sizing"]),
                "size_scale": float(d["size_scale"])}
        return SampleConfig(**{**base, **{k: v for k, v in overrides.items() if v is not None}})


def bundle_from_state(
    state: dict[str, Any],
    device: str | torch.device = "cpu",
    defaults: dict[str, Any] | None = None,
    name: str | None = None,
    version: str | None = None,
    source: str = "",
) -> ModelBundle:
    """Build a bundle from a loaded trainer checkpoint dict (`Trainer.state_dict()`)."""
    cfg = from_dict(TrainConfig, state["config"])
    device = torch.device(device)
    model, diffusion = build_model(cfg)
    model.load_state_dict(state["ema"])
    model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    extra = state.get("extra") or {}
    merged = dict(DEFAULTS)
    merged.update(extra.get("defaults") or {})
    merged.update(defaults or {})
    _check_default_keys(merged)
    grid = np.asarray(r_grid(cfg.pdf), dtype=np.float64)
    return ModelBundle(
        model=model, diffusion=diffusion, config=cfg, pdf_config=cfg.pdf, r_grid=grid, defaults=merged,
        name=name or extra.get("name") or (Path(source).stem if source else "pdfusion"),
        version=str(version or extra.get("version") or state.get("step", 0)),
        device=device, source=source,
    )


def load_bundle(
    source: str | Path,
    device: str | torch.device = "cpu",
    defaults: dict[str, Any] | None = None,
    name: str | None = None,
    version: str | None = None,
) -> ModelBundle:
    """A checkpoint path, or an MLflow `models:/name/version` / `runs:/id/path` URI (downloaded first)."""
    source = str(source)
    path = source
    if source.startswith(("models:/", "runs:/")) or Path(source).is_dir():
        path = str(tracking.download_checkpoint(source))
        if source.startswith("models:/"):
            # a guidance sweep's choice, unless overridden
            defaults = {**tracking.model_defaults(source), **(defaults or {})}
        if name is None and source.startswith("models:/"):
            ref = source[len("models:/") :]
            sep = "@" if "@" in ref else "/"
            name, _, ver = ref.partition(sep)
            version = version or ver or None
    state = load_checkpoint(path)
    return bundle_from_state(state, device=device, defaults=defaults, name=name, version=version, source=source)


def _check_default_keys(defaults: dict[str, Any]) -> None:
    unknown = sorted(set(defaults) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"defaults: unknown key(s) {unknown}; valid keys are {sorted(DEFAULTS)}")


def default_model_path() -> Path:
    """The shipped model, or $PDFUSION_MODEL: a clear error when neither exists (e.g. a wheel install)."""
    path = Path(os.environ.get("PDFUSION_MODEL") or SHIPPED_MODEL)
    if not path.is_file():
        raise FileNotFoundError(f"model: no checkpoint given and the default {path} does not exist; pass a checkpoint "
                                "or set PDFUSION_MODEL to one (models/README.md)")
    return path


def export_model(state: dict[str, Any], path: str | Path, defaults: dict[str, Any] | None = None,
                 name: str | None = None, version: str | None = None) -> Path:
    """Write the slim checkpoint a bundle needs (config, EMA weights, step, sampling defaults), atomically:
    no optimizer or raw weights, so the file that ships is half the size and loads with weights_only=True."""
    _check_default_keys(defaults or {})
    extra = dict(state.get("extra") or {})
    extra["defaults"] = {**(extra.get("defaults") or {}), **(defaults or {})}
    if name:
        extra["name"] = name
    if version:
        extra["version"] = version
    slim = {"config": state["config"], "ema": state["ema"], "step": state.get("step", 0), "extra": extra}
    save_checkpoint(slim, path)  # creates the folder
    return Path(path)
