"""The ranked report of a :class:`~pdfusion.inference.solve.SolveResult`: a printed table, ``report.json``,
one XYZ file and one fit plot (data circles, fit line, difference offset below, Rw in the legend) per
reported candidate. Every file is written atomically (``pdfusion.io_utils.atomic_write``)."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from pdfusion.inference.solve import SolvedCandidate, SolveResult
from pdfusion.io_utils import atomic_write
from pdfusion.structures.io import write_structure
from pdfusion.structures.particle import Particle

__all__ = ["format_table", "plot_fit", "write_report", "REPORT_SCHEMA_KEYS"]

REPORT_SCHEMA_KEYS = ("structure_type", "rw", "params", "uncertainties", "n_atoms", "diameter")


def _fmt(v: float | None, unc: float | None = None, digits: int = 4) -> str:
    if v is None or not math.isfinite(v):
        return "-"
    s = f"{v:.{digits}f}"
    if unc is not None and math.isfinite(unc) and unc > 0:
        s += f"({unc:.{digits}f})" if unc < 10 ** (-digits + 1) * 5 else f"±{unc:.{digits}f}"
    return s


def _uiso(params: dict[str, float]) -> float | None:
    """The metal's Uiso: 'uiso' (one for all elements) or the first 'uiso_<El>' that is not oxygen."""
    if "uiso" in params:
        return params["uiso"]
    per = {k[5:]: v for k, v in params.items() if k.startswith("uiso_")}
    metal = [v for el, v in per.items() if el != "O"]
    return metal[0] if metal else per.get("O")


def format_table(result: SolveResult) -> str:
    """The ranked candidates as a fixed-width text table (Uiso: the metal's; fit: full = pdf.refine
    least squares, local = the screening model's own fit)."""
    head = (f"{'rank':>4}  {'structure type':<21} {'atoms':>6} {'diam/Å':>7} {'a/Å':>8} {'expansion':>9} "
            f"{'Rw':>7} {'screen':>7} {'scale':>8} {'Uiso/Å²':>8} {'delta2':>6} {'fit':>5}")
    lines = [head, "-" * len(head)]
    for c in result.candidates:
        p, a = c.params, c.lattice_params.get("a")
        lines.append(
            f"{c.rank:>4}  {c.structure_type:<21} {c.n_atoms:>6d} {c.diameter:>7.1f} "
            f"{(f'{a:.4f}' if a is not None else '-'):>8} {p.get('expansion', float('nan')):>9.4f} "
            f"{c.rw:>7.4f} {c.screen.get('rw', float('nan')):>7.4f} {_fmt(p.get('scale'), None, 4):>8} "
            f"{_fmt(_uiso(p), None, 5):>8} {_fmt(p.get('delta2'), None, 2):>6} "
            f"{'full' if c.method == 'pdf.refine' else 'local':>5}")
    return "\n".join(lines)


def plot_fit(c: SolvedCandidate, path: str | Path, title: str = "") -> Path:
    """PDFgui-style fit plot of one candidate: observed G(r) as circles, the fit as a line, the
    difference offset below the curves, Rw in the legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r, gobs, gcalc = c.r, c.gobs, c.gcalc
    diff = gobs - gcalc
    span = float(max(gobs.max(), gcalc.max()) - min(gobs.min(), gcalc.min()))
    offset = float(min(gobs.min(), gcalc.min()) - diff.max() - 0.05 * span)
    stride = max(1, len(r) // 700)
    fig, ax = plt.subplots(figsize=(8, 4.8), dpi=110)
    ax.plot(r[::stride], gobs[::stride], "o", mfc="none", mec="tab:blue", ms=3.5, mew=0.8, label="data")
    ax.plot(r, gcalc, "-", color="tab:red", lw=1.2,
            label=f"{c.structure_type}, {c.n_atoms} atoms, {c.diameter:.1f} Å: Rw = {c.rw:.4f}")
    ax.plot(r, diff + offset, "-", color="tab:green", lw=1.0, label="difference")
    ax.axhline(offset, color="0.6", lw=0.6, ls="--")
    ax.set_xlabel("r (Å)")
    ax.set_ylabel("G(r) (Å$^{-2}$)")
    ax.set_xlim(float(r[0]), float(r[-1]))
    ax.set_title(title or f"rank {c.rank}: {c.label}", fontsize=10)
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write(path, buf.getvalue())
    return Path(path)


def _xyz_particle(c: SolvedCandidate, data_name: str) -> Particle:
    p = c.params
    comment = (f"pdfusion solve {data_name}: rank {c.rank} {c.structure_type} Rw={c.rw:.5f} n_atoms={c.n_atoms} "
               f"expansion={p.get('expansion', 1.0):.5f} uiso={p.get('uiso', float('nan')):.5f} "
               f"delta2={p.get('delta2', float('nan')):.4f} scale={p.get('scale', float('nan')):.5g}")
    return Particle(c.structure.numbers, c.structure.positions, {"comment": comment})


def write_report(result: SolveResult, outdir: str | Path, *, data_name: str = "", n_plots: int | None = None,
                 plots: bool = True, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write report.json, rankNN_<type>.xyz and fit_rankNN.png (``n_plots``: how many plots, default all
    reported candidates) into ``outdir``; returns the report dict (with the written file names)."""
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    report = result.to_dict()
    if data_name:
        report["data"] = data_name
    if extra:
        report.update(extra)
    n_plots = len(result.candidates) if n_plots is None else n_plots
    for c, entry in zip(result.candidates, report["candidates"], strict=True):
        stem = f"rank{c.rank:02d}_{c.structure_type}"
        write_structure(_xyz_particle(c, data_name), out / f"{stem}.xyz", fmt="xyz")
        entry["xyz"] = f"{stem}.xyz"
        if plots and c.rank <= n_plots:
            plot_fit(c, out / f"fit_rank{c.rank:02d}.png", title=f"{data_name}  rank {c.rank}: {c.label}".strip())
            entry["plot"] = f"fit_rank{c.rank:02d}.png"
    text = json.dumps(report, indent=2, allow_nan=False, default=_json_default)
    atomic_write(out / "report.json", text)
    return report


def _json_default(x: Any) -> Any:
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)
