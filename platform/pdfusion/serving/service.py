"""The sampler behind the HTTP API, free of Ray and HTTP so it can be used and tested directly.

A batch of validated jobs becomes as few sampler loops as possible (`inference.candidates.sample_mixed`): all
jobs that share `steps` and `guidance` are sampled, simulated and ranked together whatever their
`n_atoms` and `n_samples`. Unseeded jobs share one server-drawn seed (and so one loop), while a job
with its own seed keeps its own generator: same seed and inputs, same answer, whatever else was in
the batch.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from pdfusion.config import SampleConfig, ServeConfig, to_dict
from pdfusion.diffusion.samplers import SamplingCancelled, step_plan, strided_timesteps
from pdfusion.inference.bundle import load_bundle
from pdfusion.inference.candidates import refine_candidates, sample_mixed


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
    pdf_guidance: float = 0.0
    pdf_guidance_iters: int = 1
    # the model's (not request fields), counted by estimate_seconds: the guided share of the steps, the restarts
    # (SampleConfig.restarts, restart_t) and the model's T, which places the strided times
    pdf_guidance_window: tuple[float, float] = (0.0, 1.0)
    restarts: int = 0
    restart_t: int = 100
    timesteps: int = 1000
    # wall-clock time (time.time()) after which nobody waits for the answer; the sampler stops between steps
    deadline: float | None = None
    # set in the sampler replica when the request is cancelled (client gone, 504): the sampler stops too
    cancelled: bool = False

    def abandoned(self) -> bool:
        return self.cancelled or (self.deadline is not None and time.time() > self.deadline)


CANCELLED = "cancelled: the request was cancelled or timed out before sampling finished"


def estimate_seconds(job: SampleJob, cost: dict[str, float], model_max_atoms: int, refine_steps: int = 0) -> float:
    """Estimated sampling seconds of one job alone from a replica's measured `cost` (`SamplerService.calibrate`):
    `step_s` per sampler step of one candidate of `atoms` atoms, `guide_s` per PDF-guidance / refinement
    iteration of it, on the guided steps only (`samplers.step_plan`: the window and the restarts). Work scales
    with n_samples x n_atoms x steps (linear in atoms: conservative below the calibrated size, where the pair
    terms shrink faster), never below one candidate's step."""
    n = job.n_atoms if job.n_atoms is not None else model_max_atoms
    load = max(1.0, job.n_samples * n / max(1, cost["atoms"]))
    plan = step_plan(strided_timesteps(job.timesteps, job.steps),
                     SampleConfig(steps=job.steps, pdf_guidance_window=job.pdf_guidance_window,
                                  restarts=job.restarts, restart_t=job.restart_t))
    guided = sum(step.guided for step in plan) if job.pdf_guidance > 0 else 0
    refine = refine_steps * cost["guide_s"] if job.refine else 0.0
    return load * (len(plan) * cost["step_s"] + guided * job.pdf_guidance_iters * cost["guide_s"] + refine)


def job_atoms(job: SampleJob, model_max_atoms: int) -> int:
    """Atoms the job will sample: n_samples x n_atoms (the model's largest size when n_atoms is free)."""
    return job.n_samples * (job.n_atoms if job.n_atoms is not None else model_max_atoms)


def batch_cost(jobs: list[SampleJob], max_requests: int, max_candidates: int, max_atoms: int | None = None,
               model_max_atoms: int = 0) -> int:
    """`serve.batch` size key (batching by atom count): the request count while the batch's
    candidates fit `max_candidates` and its candidate atoms fit `max_atoms`, otherwise more than
    `max_requests` so Serve closes the batch before it. Bounds the work (and latency) of one call."""
    if sum(j.n_samples for j in jobs) > max_candidates:
        return max_requests + 1
    if max_atoms is not None and sum(job_atoms(j, model_max_atoms) for j in jobs) > max_atoms:
        return max_requests + 1
    return len(jobs)


class SamplerService:
    """Holds one loaded `ModelBundle` and turns batches of jobs into ranked candidates."""

    def __init__(self, cfg: ServeConfig, bundle: Any | None = None) -> None:
        import torch

        torch.set_num_threads(cfg.torch_threads)
        self.cfg = cfg
        if bundle is None:
            bundle = load_bundle(cfg.model, device=cfg.device)
        self.bundle = bundle
        self.stats = {"batches": 0, "jobs": 0, "loops": 0, "largest_batch": 0, "cancelled": 0}
        self.cost: dict[str, float] | None = None

    def info(self) -> dict[str, Any]:
        """What the HTTP layer needs to validate requests and describe the model (plain data)."""
        b, tc = self.bundle, self.bundle.config
        grid = np.asarray(b.r_grid, dtype=np.float64)
        return {
            "name": str(b.name),
            "version": str(b.version),
            "r_grid": grid,
            "normalize": bool(b.pdf_config.normalize),
            "defaults": {"guidance": float(b.defaults["guidance"]), "steps": int(b.defaults["steps"]),
                         "pdf_guidance": float(b.defaults["pdf_guidance"]),
                         "pdf_guidance_iters": int(b.defaults["pdf_guidance_iters"]),
                         "pdf_guidance_window": [float(f) for f in b.defaults["pdf_guidance_window"]],
                         "restarts": int(b.defaults["restarts"]), "restart_t": int(b.defaults["restart_t"])},
            "max_atoms": int(tc.model.max_atoms),
            "n_metals": int(tc.model.n_metals),
            "timesteps": int(tc.diffusion.schedule.timesteps),
            "training": {
                "model": {k: v for k, v in to_dict(tc.model).items()
                          if k in ("hidden", "layers", "attention", "cutoff", "pdf_encoder", "pdf_points",
                                   "max_atoms")},
                "schedule": to_dict(tc.diffusion.schedule),
                "p_uncond": tc.diffusion.p_uncond,
                "pdf": to_dict(b.pdf_config),
                "data": {"path": tc.data.path, "split_by": tc.data.split_by},
                "epochs": tc.epochs,
                "lr": tc.lr,
            },
        }

    def calibrate(self, atoms: int) -> dict[str, float]:
        """Measure this replica's speed for `estimate_seconds`: seconds per sampler step of one `atoms`-atom
        candidate (both guidance halves), and per PDF-guidance iteration (≈ one refinement step). A warm-up
        step on a small particle, then one step each at `atoms`: about two large steps in all, so a replica
        (re)start is not held up by it."""
        b = self.bundle
        pdf = np.zeros((1, len(b.r_grid)), dtype=np.float32)
        pdf[0, len(b.r_grid) // 10] = 1.0

        def timed(n: int, **kw) -> float:
            cfg = SampleConfig(guidance=2.0, steps=1, n_samples=1, seed=0, **kw)
            t0 = time.perf_counter()
            sample_mixed(b, pdf, [22], [1], [n], cfg)
            return time.perf_counter() - t0

        timed(min(atoms, 8))  # warm-up: first-call allocations and lazy imports
        step_s = timed(atoms)
        guide_s = 0.0
        if b.config.model.bond_length is None:  # PDF guidance is refused for bond-length-frame models
            guide_s = timed(atoms, pdf_guidance=0.1, pdf_guidance_iters=1) - step_s
        self.cost = {"atoms": int(atoms), "step_s": float(step_s), "guide_s": float(max(guide_s, 0.1 * step_s))}
        return self.cost

    def run_batch(self, jobs: list[SampleJob]) -> list[dict[str, Any]]:
        """One result per job: `{"candidates": [...], "seed": ...}` or `{"error": message}`.

        Jobs are grouped by what one sampler loop must share (steps, guidance, PDF guidance, seed); each group is
        one `sample_mixed` call. If a group fails, its jobs are retried one by one so a single
        failing job cannot take the others down with it."""
        if not jobs:
            return []
        out: list[dict[str, Any] | None] = [None] * len(jobs)
        live = []
        for i, j in enumerate(jobs):  # nobody waits for these any more: do not sample them
            if j.abandoned():
                out[i] = {"error": CANCELLED, "cancelled": True}
                self.stats["cancelled"] += 1
            else:
                live.append(i)
        shared_seed = random.SystemRandom().randrange(2**31)
        groups: dict[tuple, list[int]] = {}
        for i in live:
            j = jobs[i]
            # a seeded job's random stream must not depend on its batch-mates: it is a loop of its own
            key = ((j.steps, j.guidance, j.pdf_guidance, j.pdf_guidance_iters, "shared") if j.seed is None
                   else ("own", i))
            groups.setdefault(key, []).append(i)
        for members in groups.values():
            seed = jobs[members[0]].seed
            seed = shared_seed if seed is None else seed
            for i, res in zip(members, self._run_group([jobs[i] for i in members], seed), strict=True):
                out[i] = res
        st = self.stats
        st["batches"] += 1
        st["jobs"] += len(jobs)
        st["loops"] += len(groups)
        st["largest_batch"] = max(st["largest_batch"], len(jobs))
        return out  # type: ignore[return-value]

    def _run_group(self, jobs: list[SampleJob], seed: int) -> list[dict[str, Any]]:
        def should_stop() -> bool:  # checked between sampler steps: stop once nobody waits for any of them
            return all(j.abandoned() for j in jobs)

        j0 = jobs[0]
        cfg = self.bundle.sample_config(guidance=j0.guidance, steps=j0.steps, n_samples=1, seed=seed,
                                        pdf_guidance=j0.pdf_guidance, pdf_guidance_iters=j0.pdf_guidance_iters)
        try:
            ranked = sample_mixed(self.bundle, np.stack([j.pdf for j in jobs]).astype(np.float32),
                                  [j.metal_z for j in jobs], [j.n_samples for j in jobs], [j.n_atoms for j in jobs],
                                  cfg, should_stop=should_stop)
            ranked = [
                refine_candidates(c, j.pdf, self.bundle.pdf_config, steps=self.cfg.refine_steps)
                if j.refine and not j.abandoned() else c
                for j, c in zip(jobs, ranked, strict=True)
            ]
            return [self._result(j, c) for j, c in zip(jobs, ranked, strict=True)]
        except SamplingCancelled:
            self.stats["cancelled"] += len(jobs)
            return [{"error": CANCELLED, "cancelled": True} for _ in jobs]
        except Exception as exc:  # noqa: BLE001 - isolated below, reported per job
            if len(jobs) == 1:
                return [{"error": f"sampling failed: {type(exc).__name__}: {exc}"}]
        return [self._run_group([j], seed)[0] for j in jobs]

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
                "expansion": None if c.expansion is None else float(c.expansion),
                "xyz": c.to_xyz(),
                "g_sim": np.asarray(c.g_sim, dtype=np.float64).round(6).tolist() if job.return_pdf else None,
            })
        return {"candidates": out, "seed": job.seed}
