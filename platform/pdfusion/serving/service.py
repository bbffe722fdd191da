"""The sampler behind the HTTP API, free of Ray and HTTP so it can be used and tested directly.

A batch of validated jobs becomes *one* `generate_candidates` call. That call samples together the
PDFs whose `SampleConfig`s are equal, so unseeded jobs share one server-drawn seed (and are batched),
while a job with its own seed keeps its own generator: same seed and inputs, same answer.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

import numpy as np

from pdfusion.config import SampleConfig, ServeConfig, to_dict


@dataclass
class SampleJob:
    """One validated request, already on the model's r grid."""

    pdf: np.ndarray  # (n_r,) float32
    metal_z: int
    n_samples: int
    guidance: float
    steps: int
    n_atoms: int | None = None
    seed: int | None = None
    refine: bool = False
    return_pdf: bool = False


def batch_cost(jobs: list[SampleJob], max_requests: int, max_candidates: int) -> int:
    """`serve.batch` size key: the request count while the batch's candidates fit `max_candidates`,
    otherwise more than `max_requests` so Serve closes the batch. Bounds both work and memory."""
    if sum(j.n_samples for j in jobs) > max_candidates:
        return max_requests + 1
    return len(jobs)


class SamplerService:
    """Holds one loaded `ModelBundle` and turns batches of jobs into ranked candidates."""

    def __init__(self, cfg: ServeConfig, bundle: Any | None = None) -> None:
        import torch

        torch.set_num_threads(cfg.torch_threads)
        self.cfg = cfg
        if bundle is None:
            from pdfusion.training.bundle import load_bundle

            bundle = load_bundle(cfg.model, device=cfg.device)
        self.bundle = bundle

    def info(self) -> dict[str, Any]:
        """What the HTTP layer needs to validate requests and describe the model (plain data)."""
        b, tc = self.bundle, self.bundle.config
        grid = np.asarray(b.r_grid, dtype=np.float64)
        return {
            "name": str(b.name),
            "version": str(b.version),
            "r_grid": grid,
            "normalize": bool(b.pdf_config.normalize),
            "defaults": {"guidance": float(b.defaults["guidance"]), "steps": int(b.defaults["steps"])},
            "max_atoms": int(tc.model.max_atoms),
            "n_metals": int(tc.model.n_metals),
            "timesteps": int(tc.diffusion.schedule.timesteps),
            "training": {
                "model": {k: v for k, v in to_dict(tc.model).items()
                          if k in ("hidden", "layers", "attention", "cutoff", "pdf_encoder", "pdf_points", "max_atoms")},
                "schedule": to_dict(tc.diffusion.schedule),
                "p_uncond": tc.diffusion.p_uncond,
                "pdf": to_dict(b.pdf_config),
                "data": {"path": tc.data.path, "split_by": tc.data.split_by},
                "epochs": tc.epochs,
                "lr": tc.lr,
            },
        }

    def run_batch(self, jobs: list[SampleJob]) -> list[dict[str, Any]]:
        """One result per job: `{"candidates": [...], "seed": ...}` or `{"error": message}`.

        The whole batch is one library call; if it fails, jobs are retried one by one so a single
        failing job cannot take the others down with it."""
        from pdfusion.evaluation.ranking import generate_candidates

        if not jobs:
            return []
        shared_seed = random.SystemRandom().randrange(2**31)
        cfgs = [
            SampleConfig(
                guidance=j.guidance, steps=j.steps, n_samples=j.n_samples, n_atoms=j.n_atoms, refine=j.refine,
                refine_steps=self.cfg.refine_steps, seed=j.seed if j.seed is not None else shared_seed,
            )
            for j in jobs
        ]
        pdfs = np.stack([j.pdf for j in jobs]).astype(np.float32)
        metals = [j.metal_z for j in jobs]
        try:
            ranked = generate_candidates(self.bundle, pdfs, metals, cfgs)
            return [self._result(j, c) for j, c in zip(jobs, ranked, strict=True)]
        except Exception as exc:  # noqa: BLE001 - isolated below, reported per job
            if len(jobs) == 1:
                return [{"error": f"sampling failed: {type(exc).__name__}: {exc}"}]
        return [self.run_batch([j])[0] for j in jobs]

    def _result(self, job: SampleJob, cands: list[Any]) -> dict[str, Any]:
        from pymatgen.core import Composition, Element

        out = []
        for rank, c in enumerate(cands, start=1):
            values = [c.rwp] + ([c.rwp_before_refine] if c.rwp_before_refine is not None else [])
            if not all(math.isfinite(float(v)) for v in values) or not np.all(np.isfinite(c.g_sim)):
                return {"error": f"sampling produced a non-finite R_wp or G(r) for candidate {rank}"}
            zs, counts = np.unique(np.asarray(c.numbers), return_counts=True)
            formula = Composition({Element.from_Z(int(z)): int(n) for z, n in zip(zs, counts, strict=True)}).formula
            out.append({
                "rank": rank,
                "n_atoms": int(c.n_atoms),
                "formula": formula.replace(" ", ""),
                "rwp": float(c.rwp),
                "rwp_before_refine": None if c.rwp_before_refine is None else float(c.rwp_before_refine),
                "xyz": c.to_xyz(),
                "g_sim": np.asarray(c.g_sim, dtype=np.float64).round(6).tolist() if job.return_pdf else None,
            })
        return {"candidates": out, "seed": job.seed}
