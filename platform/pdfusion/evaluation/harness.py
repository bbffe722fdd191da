"""Evaluation harness: the model and its baselines, scored the same way on the same held-out PDFs.

A *method* proposes K candidate structures per target PDF; `score_targets` simulates every candidate's
PDF with the training `PDFConfig` and reports, per target: R_wp (mean, median, std, best-of-K), validity
(min distance >= 1.2 Å, no stray atoms), atom-count and metal:oxygen errors, structure recovery (RMSD after
alignment + assignment against the true structure), NaN count, diversity and wall time per structure.
`summarise` turns the per-target rows into one table row per method; `jobs/evaluate.py` fans the targets
out over Ray tasks and calls the same functions.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pdfusion.config import PDFConfig
from pdfusion.diffusion import NonFiniteError
from pdfusion.evaluation import metrics
from pdfusion.evaluation.baselines import particle_radius, random_particle
from pdfusion.inference.candidates import generate_candidates
from pdfusion.inference.lookup import nearest_library
from pdfusion.inference.refine import refine_ragged
from pdfusion.pdf import rwp
from pdfusion.pdf.fitting import simulate_safe
from pdfusion.structures.particle import OXYGEN, Particle


@dataclass
class Target:
    """One held-out PDF with its true structure."""

    index: int
    pdf: np.ndarray
    truth: Particle
    meta: dict[str, Any]

    @property
    def metal(self) -> int:
        return self.truth.metal


@dataclass
class Proposal:
    """What a method produced for one target: candidate structures and how many came out non-finite."""

    candidates: list[Particle]
    nan_count: int
    wall_s: float


# A method of the harness (the model, a baseline) as a callable: (targets, k, seed) -> one Proposal per target.
# The method names the evaluation knows are pdfusion.config.EVAL_METHODS.
Proposer = Callable[[Sequence[Target], int, int], list[Proposal]]


def targets_from_dataset(ds, indices: Sequence[int]) -> list[Target]:
    """Targets from a `pdfusion.data.dataset.StructureDataset` (its records hold the true structures)."""
    out = []
    for i in indices:
        rec = ds.record(int(i))
        meta = dict(rec.meta)
        out.append(Target(int(i), np.asarray(rec.pdf, dtype=np.float64),
                          Particle(rec.numbers, rec.positions, meta), meta))
    return out


# --------------------------------------------------------------------------------------------------
# methods
# --------------------------------------------------------------------------------------------------
def model_method(bundle, *, guidance: float | None = None, steps: int | None = None, refine: bool = False,
                 fix_n_atoms: bool = False, max_batch: int | None = None) -> Proposer:
    """The diffusion model (guidance γ and steps default to the bundle's); γ = 0 is the unconditional baseline."""

    def run(targets: Sequence[Target], k: int, seed: int) -> list[Proposal]:
        out = []
        for t in targets:  # one target at a time: K candidates already fill a batch
            cfg = bundle.sample_config(guidance=guidance, steps=steps, n_samples=k, seed=seed + t.index, refine=refine,
                                       n_atoms=len(t.truth) if fix_n_atoms else None)
            t0 = time.perf_counter()
            try:
                cands = generate_candidates(bundle, t.pdf[None].astype(np.float32), [t.metal], cfg,
                                            max_batch=max_batch)[0]
            except NonFiniteError:
                out.append(Proposal([], k, time.perf_counter() - t0))
                continue
            parts = [Particle(c.numbers, c.positions, {"rwp": c.rwp}) for c in cands]
            out.append(Proposal(parts, k - len(parts), time.perf_counter() - t0))
        return out

    return run


def library_method(library: Sequence[Particle], library_pdfs: np.ndarray) -> Proposer:
    """The K training structures whose PDFs fit the target best (no ML)."""

    def run(targets: Sequence[Target], k: int, seed: int) -> list[Proposal]:
        t0 = time.perf_counter()
        idx = nearest_library(np.stack([t.pdf for t in targets]), library_pdfs, k)
        per = (time.perf_counter() - t0) / max(len(targets), 1)
        return [Proposal([library[j] for j in row], 0, per) for row in idx]

    return run


def random_method() -> Proposer:
    """Random particles with the true atom count, stoichiometry and particle radius (hence density)."""

    def run(targets: Sequence[Target], k: int, seed: int) -> list[Proposal]:
        out = []
        for t in targets:
            t0 = time.perf_counter()
            rng = np.random.default_rng([seed, t.index])
            radius = particle_radius(t.truth.positions)
            cands = [random_particle(t.truth.numbers, radius, rng) for _ in range(k)]
            out.append(Proposal(cands, 0, time.perf_counter() - t0))
        return out

    return run


def refined(method: Proposer, pdf_cfg: PDFConfig, steps: int) -> Proposer:
    """Any method followed by the same R_wp refinement of each candidate against the target PDF, so
    refinement's share can be compared fairly (random particles refined too, not only model samples)."""
    def run(targets: Sequence[Target], k: int, seed: int) -> list[Proposal]:
        out = []
        for t, prop in zip(targets, method(targets, k, seed), strict=True):
            if not prop.candidates or steps == 0:
                out.append(prop)
                continue
            t0 = time.perf_counter()
            res = refine_ragged([p.positions for p in prop.candidates], [p.numbers for p in prop.candidates],
                                t.pdf, pdf_cfg, steps=steps)
            parts = [Particle(p.numbers, res.positions[i, : len(p)],
                              {**p.meta, "rwp_before_refine": float(res.rwp_before[i])})
                     for i, p in enumerate(prop.candidates)]
            per = (time.perf_counter() - t0) / len(parts)
            out.append(Proposal(parts, prop.nan_count, prop.wall_s + per))
        return out

    return run


# --------------------------------------------------------------------------------------------------
# scoring
# --------------------------------------------------------------------------------------------------
def simulate_many(particles: Sequence[Particle], cfg: PDFConfig, batch: int = 16) -> np.ndarray:
    """(K, n_r) simulated PDFs of a list of particles (padded batches of similar size)."""
    out = np.zeros((len(particles), cfg.n_r))
    order = np.argsort([len(p) for p in particles])
    for s in range(0, len(order), batch):
        idx = order[s : s + batch]
        n_max = max(len(particles[i]) for i in idx)
        pos = torch.zeros(len(idx), n_max, 3, dtype=torch.float64)
        num = torch.full((len(idx), n_max), OXYGEN, dtype=torch.long)
        mask = torch.zeros(len(idx), n_max, dtype=torch.bool)
        for j, i in enumerate(idx):
            n = len(particles[i])
            pos[j, :n] = torch.as_tensor(particles[i].positions)
            num[j, :n] = torch.as_tensor(particles[i].numbers)
            mask[j, :n] = True
        with torch.no_grad():  # simulate_safe: flung-apart candidates score G = 0, not an error
            out[idx] = simulate_safe(pos, num, mask, cfg).numpy()
    return out


def score_target(target: Target, prop: Proposal, cfg: PDFConfig, k: int, rmsd_top: int = 4) -> dict[str, Any]:
    """Every metric of one target's K proposals; missing (non-finite) candidates count as NaN."""
    row: dict[str, Any] = {
        "index": target.index, "source": target.meta.get("source", ""), "formula": target.meta.get("formula", ""),
        "structure_type": target.meta.get("structure_type", ""), "n_atoms_true": len(target.truth),
        "k": k, "n_candidates": len(prop.candidates), "nan_count": int(prop.nan_count),
        "wall_s_per_structure": prop.wall_s / max(k, 1),
    }
    cands = prop.candidates
    if not cands:
        row.update({key: math.nan for key in ("rwp_mean", "rwp_median", "rwp_std", "rwp_best", "valid_fraction",
                                              "n_atoms_error", "mo_ratio_error", "rmsd_best", "rmsd_min", "diversity")})
        row["rwp"] = []
        return row
    g = simulate_many(cands, cfg)
    target_g = torch.as_tensor(target.pdf)
    gt = torch.as_tensor(g)
    scores = rwp(gt, target_g[None].expand_as(gt)).numpy()
    order = np.argsort(scores)
    valid = [metrics.validity(c.positions) for c in cands]
    n_true = len(target.truth)
    rmsds = [metrics.rmsd(cands[i], target.truth) for i in order[:rmsd_top]]
    row.update({
        "rwp": scores.tolist(),
        "rwp_mean": float(scores.mean()), "rwp_median": float(np.median(scores)), "rwp_std": float(scores.std()),
        "rwp_best": float(scores.min()),
        "valid_fraction": float(np.mean([v.valid for v in valid])),
        "min_distance_median": float(np.median([v.min_distance for v in valid])),
        "n_atoms_error": float(np.mean([abs(len(c) - n_true) / n_true for c in cands])),
        "mo_ratio_error": float(np.mean([metrics.stoichiometry_error(c.numbers, target.truth.numbers) for c in cands])),
        "composition_match": float(np.mean([np.array_equal(np.sort(c.numbers), np.sort(target.truth.numbers))
                                            for c in cands])),
        "rmsd_best": float(rmsds[0]),
        "rmsd_min": float(min(rmsds)),
        "diversity": metrics.pairwise_diversity([c.positions for c in cands]),
        "best_index": int(order[0]), "median_index": int(order[len(order) // 2]),
    })
    return row


def score_targets(method: Proposer, targets: Sequence[Target], cfg: PDFConfig, k: int, seed: int = 0,
                  keep: int = 0) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(rows, kept) — kept holds the best/median candidates of the first `keep` targets, for plots."""
    rows, kept = [], []
    for t, prop in zip(targets, method(targets, k, seed), strict=True):
        row = score_target(t, prop, cfg, k)
        rows.append(row)
        if len(kept) < keep and prop.candidates:
            best, med = prop.candidates[row["best_index"]], prop.candidates[row["median_index"]]
            kept.append({"target": t, "best": best, "median": med, "row": row})
    return rows, kept


def _finite(values: Sequence[float]) -> np.ndarray:
    a = np.asarray([v for v in values if v is not None], dtype=np.float64)
    return a[np.isfinite(a)]


def summarise(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """One table row: medians over targets of the per-target metrics (finite values), plus totals."""
    out: dict[str, float] = {"n_targets": len(rows), "nan_total": int(sum(r["nan_count"] for r in rows))}
    best = _finite([r.get("rwp_best") for r in rows])
    out.update(metrics.best_of_k(best, empty=math.nan))  # rwp_best_median, rwp_best_mean
    for key in ("rwp_median", "rwp_mean", "rwp_std", "valid_fraction", "n_atoms_error",
                "mo_ratio_error", "composition_match", "rmsd_best", "rmsd_min", "diversity", "wall_s_per_structure"):
        vals = _finite([r.get(key) for r in rows])
        out[f"{key}_median"] = float(np.median(vals)) if vals.size else math.nan
    out["frac_rwp_best_le_0.10"] = float(np.mean(best <= 0.10)) if best.size else math.nan
    rm = _finite([r.get("rmsd_best") for r in rows])
    out["rmsd_best_defined_fraction"] = rm.size / max(len(rows), 1)
    return out
