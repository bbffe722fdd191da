"""The plots people look at: R_wp histograms (the 2023 report's figure 7 format), PDF overlays of the best
and median candidates, 3-D views of candidates next to the true structure, and one PDF's solution (fit, difference,
structures)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from pdfusion.evaluation.harness import simulate_many  # noqa: E402
from pdfusion.io_utils import atomic_path  # noqa: E402
from pdfusion.structures.particle import OXYGEN  # noqa: E402


def _save(fig, path: Path) -> Path:
    """Write `fig` as PNG (whatever the suffix, as always) atomically and close it."""
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    finally:
        plt.close(fig)
    return path


def rwp_histograms(rows_by_method: Mapping[str, Sequence[dict[str, Any]]], path: str | Path) -> Path:
    """Per-target mean, std and best-of-K R_wp histograms, one colour per method (report figure 7)."""
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    bins = np.linspace(0, 1.5, 46)
    for name, rows in rows_by_method.items():
        for ax, key in zip(axes, ("rwp_mean", "rwp_std", "rwp_best"), strict=True):
            vals = np.array([r[key] for r in rows], dtype=float)
            vals = vals[np.isfinite(vals)]
            b = np.linspace(0, 0.5, 41) if key == "rwp_std" else bins
            ax.hist(np.clip(vals, b[0], b[-1]), bins=b, alpha=0.5,
                    label=f"{name} (median {np.median(vals):.3f})" if vals.size else name)
    for ax, title in zip(axes, ("mean R_wp per PDF", "std of R_wp per PDF", "best-of-K R_wp per PDF"), strict=True):
        ax.set_title(title)
        ax.set_xlabel("R_wp")
        ax.axvspan(0.01, 0.05, color="green", alpha=0.08)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("validation PDFs")
    return _save(fig, Path(path))


def _fit_panels(ax, dax, r: np.ndarray, target: np.ndarray, cands: Sequence[Any], title: str, n_best: int) -> None:
    """The target with the top candidates' simulated G(r) above, target − rank 1 below (PDFgui's fit view)."""
    ax.plot(r, target, color="k", lw=1.5, label="target")
    for i, c in enumerate(cands[:n_best]):
        ax.plot(r, c.g_sim, lw=1.0, alpha=0.8, label=f"rank {i + 1}: R_wp {c.rwp:.4f} ({c.n_atoms} atoms)")
    ax.set_ylabel("G(r) / max")
    ax.set_title(title)
    ax.legend(fontsize=8)
    if len(cands):
        dax.plot(r, np.asarray(target) - np.asarray(cands[0].g_sim), color="tab:green", lw=1.0)
    dax.axhline(0.0, color="0.6", lw=0.6)
    dax.set_ylabel("target − rank 1")
    dax.set_xlabel("r (Å)")


def candidate_overlay(r: np.ndarray, target: np.ndarray, cands: Sequence[Any], title: str, path: str | Path,
                      n_best: int = 3) -> Path:
    """Target G(r) vs the simulated G(r) of the best-ranked candidates (`ranking.Candidate`), and below it the
    difference target − best candidate, as PDFgui draws a fit."""
    fig, (ax, dax) = plt.subplots(2, 1, figsize=(9, 5.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    _fit_panels(ax, dax, r, target, cands, title, n_best)
    return _save(fig, Path(path))


def pdf_overlays(kept: Sequence[dict[str, Any]], r: np.ndarray, cfg, path: str | Path) -> Path:
    """Target G(r) vs the best and the median candidate's simulated G(r), one panel per target."""
    n = max(len(kept), 1)
    fig, axes = plt.subplots(n, 1, figsize=(9, 2.4 * n), squeeze=False)
    for ax, item in zip(axes[:, 0], kept, strict=False):
        g = simulate_many([item["best"], item["median"]], cfg)
        t, row = item["target"], item["row"]
        ax.plot(r, t.pdf, "k", lw=1.2, label=f"target {t.meta.get('source', t.index)}")
        ax.plot(r, g[0], lw=1, label=f"best  R_wp={row['rwp_best']:.3f}")
        ax.plot(r, g[1], lw=1, alpha=0.7, label=f"median R_wp={row['rwp_median']:.3f}")
        ax.legend(fontsize=7, loc="upper right")
        ax.set_ylabel("G(r)")
    axes[-1, 0].set_xlabel("r (Å)")
    return _save(fig, Path(path))


def structure_views(kept: Sequence[dict[str, Any]], path: str | Path, max_rows: int = 4) -> Path:
    """3-D scatter of the true structure next to the best candidate (metal large, oxygen small)."""
    rows = list(kept)[:max_rows] or []
    n = max(len(rows), 1)
    fig = plt.figure(figsize=(8, 3.6 * n))
    for i, item in enumerate(rows):
        for j, (label, p) in enumerate((("truth", item["target"].truth), ("best candidate", item["best"]))):
            ax = fig.add_subplot(n, 2, 2 * i + j + 1, projection="3d")
            metal = p.numbers != OXYGEN
            ax.scatter(*p.positions[metal].T, s=30, c="tab:blue", depthshade=True)
            ax.scatter(*p.positions[~metal].T, s=10, c="tab:red", depthshade=True)
            ax.set_title(f"{label}: {p.formula if len(p) else ''} N={len(p)}", fontsize=8)
            ax.set_axis_off()
    return _save(fig, Path(path))


def solution_figure(r: np.ndarray, target: np.ndarray, cands: Sequence[Any], title: str, path: str | Path,
                    n_best: int = 3) -> Path:
    """What a scientist looks at for one PDF: the target with the top candidates' fitted curves, the difference
    target − rank 1, and a 3-D view of each top candidate (metal large blue, oxygen small red) with its R_wp."""
    cands = list(cands)[:n_best]
    fig = plt.figure(figsize=(11, 7.5))
    grid = fig.add_gridspec(3, max(len(cands), 1), height_ratios=[3, 1, 2.6], hspace=0.4)
    ax = fig.add_subplot(grid[0, :])
    dax = fig.add_subplot(grid[1, :], sharex=ax)
    _fit_panels(ax, dax, r, target, cands, title, n_best)
    for i, c in enumerate(cands):
        sax = fig.add_subplot(grid[2, i], projection="3d")
        pos, metal = np.asarray(c.positions), np.asarray(c.numbers) != OXYGEN
        sax.scatter(*pos[metal].T, s=30, c="tab:blue", depthshade=True)
        sax.scatter(*pos[~metal].T, s=10, c="tab:red", depthshade=True)
        sax.set_title(f"rank {i + 1}: R_wp {c.rwp:.4f}, N = {c.n_atoms}", fontsize=8)
        sax.set_axis_off()
    return _save(fig, Path(path))
