"""The size limits of a Debye simulation (r points, Q points, memory), checked from the config alone before
any array exists; the generic limits (atoms, coordinates, paths) are in :mod:`pdfusion.limits`."""

from __future__ import annotations

import math

from pdfusion.config import ConfigError, PDFConfig
from pdfusion.limits import GIB, Limits, check_finite
from pdfusion.pdf.debye import DEFAULT_CHUNK, _grid_step, srreal_grid

__all__ = ["check_pdf_config", "pdf_memory_bytes"]


def pdf_memory_bytes(cfg: PDFConfig, n_atoms: int = 0) -> int:
    """Peak bytes of ``pdf.simulate_pdf`` for one structure: the (Q × r) transform and (distance nodes × Q)
    matrices with their temporaries, plus one chunk of pairs; nothing is allocated here."""
    g = srreal_grid(cfg)
    n_r, n_q = max(0, g.ndrmax - g.ndrmin), g.nqmax
    n_nodes = int(math.ceil(g.rcalchi / _grid_step(cfg))) + 4
    chunk = min(DEFAULT_CHUNK["grid"], max(1, n_atoms * (n_atoms - 1) // 2))
    return int(8 * (7 * n_q * n_r + 5 * n_nodes * n_q + 16 * chunk + 8 * n_atoms))


def check_pdf_config(cfg: PDFConfig, limits: Limits, n_atoms: int = 0) -> None:
    """r points, Q points and the estimated memory of a Debye simulation, before any array exists."""
    check_finite(rmin=cfg.rmin, rmax=cfg.rmax, rstep=cfg.rstep, qmin=cfg.qmin, qmax=cfg.qmax, qdamp=cfg.qdamp,
                 biso=cfg.biso, delta2=cfg.delta2)
    n_r = (cfg.rmax - cfg.rmin) / cfg.rstep
    if n_r > limits.max_points:
        raise ConfigError(f"--rmax/--rstep: {cfg.rmin:g}..{cfg.rmax:g} Å in steps of {cfg.rstep:g} Å is {n_r:,.0f} "
                          f"r points; the limit is {limits.max_points:,} (use a larger --rstep or smaller --rmax, "
                          "or raise it with --max-points)")
    g = srreal_grid(cfg)
    if g.nqmax > limits.max_points:
        raise ConfigError(f"--qmax: {cfg.qmax:g} Å⁻¹ up to r = {g.rcalchi:g} Å needs {g.nqmax:,} Q points; the limit "
                          f"is {limits.max_points:,} (lower --qmax or --rmax, or raise it with --max-points)")
    need = pdf_memory_bytes(cfg, n_atoms)
    if need > limits.max_memory_gb * GIB:
        raise ConfigError(f"--rmax: simulating r up to {cfg.rmax:g} Å with Qmax {cfg.qmax:g} Å⁻¹ needs about "
                          f"{need / GIB:.3g} GiB ({g.nqmax:,} Q x {g.ndrmax - g.ndrmin:,} r points); the limit is "
                          f"{limits.max_memory_gb:g} GiB (lower --rmax or --qmax, or raise it with --max-memory)")
