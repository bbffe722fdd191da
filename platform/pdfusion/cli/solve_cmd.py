"""`pdfusion solve DATA.gr --composition CeO2`: which structure is this particle? Screens a library of oxide
prototypes and metal cluster motifs (plus a trained model's samples with --model) against the measured
PDF, refines the best and writes a ranked report.

Writes into the output folder: `report.json` (candidates best first: structure_type, rw, refined params +
uncertainties, n_atoms, diameter; the screening score of every library candidate), `rankNN_<type>.xyz` and
`fit_rankNN.png` (data, fit, difference, Rw) per reported candidate; prints the ranked table.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from pdfusion.limits import add_limit_flags

MAX_RADIUS = 50.0  # Å: every candidate of every radius is simulated and screened; a 10 nm particle is the scale


def register(sub) -> None:
    p = sub.add_parser("solve", help="rank candidate structures (oxide prototypes, metal clusters) for a measured PDF",
                       description=__doc__.splitlines()[0])
    p.add_argument("data", help="measured PDF: xPDFsuite/PDFgetX3 .gr, two-column .dat/.txt/.csv")
    p.add_argument("--composition", default=None,
                   help="sample formula, e.g. CeO2, Fe2O3, Pt (default: the file header's 'composition')")
    p.add_argument("--model", default=None, help="also rank a trained model's samples (checkpoint or MLflow URI)")
    p.add_argument("-k", "--n-samples", type=int, default=16, help="model samples with --model (default 16)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed with --model")
    p.add_argument("--top", type=int, default=5, help="candidates refined and reported (default 5)")
    p.add_argument("--per-type", type=int, default=1, help="at most this many of one structure type (default 1)")
    p.add_argument("--radii", type=float, nargs="+", default=None,
                   help="library radii in Å (default 5 6.5 8 10 12 14 16 18 20)")
    p.add_argument("--families", nargs="+", choices=("oxide", "metal"), default=None,
                   help="candidate families (default from the composition: metal-only -> metal, oxide -> oxide)")
    p.add_argument("--rmin", type=float, default=1.5, help="fit window start (default 1.5 Å)")
    p.add_argument("--rmax", type=float, default=None, help="fit window end (default: end of data, at most 30 Å)")
    p.add_argument("--qmin", type=float, default=None, help="Qmin (default: file header, else 1.0)")
    p.add_argument("--qmax", type=float, default=None, help="Qmax (default: file header, else 25.0)")
    p.add_argument("--qdamp", type=float, default=0.04, help="instrument Qdamp, fixed (default 0.04)")
    p.add_argument("--qbroad", type=float, default=0.0, help="instrument Qbroad, fixed (default 0)")
    p.add_argument("--refine-qdamp", action="store_true", help="free Qdamp in the refinement")
    ray = p.add_mutually_exclusive_group()
    ray.add_argument("--ray", dest="use_ray", action="store_true", default=None,
                     help="screen as Ray tasks (default: only for libraries of more than 200 candidates)")
    ray.add_argument("--no-ray", dest="use_ray", action="store_false", help="never use Ray")
    p.add_argument("--num-cpus", type=int, default=2, help="CPUs for a local Ray (default 2)")
    p.add_argument("--no-plot", action="store_true", help="skip the fit plots")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("-o", "--outdir", default="pdfusion_solve", help="output folder (default ./pdfusion_solve)")
    add_limit_flags(p, atoms=False, memory=False)
    p.set_defaults(func=run)


def read_data(path: str | Path, max_points: int | None = None) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """(r, G, header meta) of a PDF file through :func:`pdfusion.pdf.files.read_pdf_file`."""
    from pdfusion.pdf.files import read_pdf_file

    data = read_pdf_file(path, max_points=max_points)  # FileNotFoundError "<path>: no such PDF file"
    return np.asarray(data.r, dtype=np.float64), np.asarray(data.g, dtype=np.float64), dict(data.meta or {})


def resolve_composition(given: str | None, meta: dict[str, Any], path: str | Path) -> str:
    if given:
        return given
    comp = meta.get("composition")
    if isinstance(comp, str) and comp.strip():
        return comp.strip()
    raise ValueError(f"{path}: the file header names no composition; pass --composition (e.g. --composition CeO2)")


def model_candidates(checkpoint: str, data_path: str | Path, metal: str, n_samples: int, seed: int) -> list:
    """Samples of a trained model for the PDF, as Particles (structure_type 'generated'), through the same path
    as `pdfusion sample` (inference.bundle.load_bundle + inference.candidates.generate_candidates)."""
    from pdfusion.cli.sample_cmd import load_target
    from pdfusion.inference.bundle import load_bundle
    from pdfusion.inference.candidates import generate_candidates, metal_number
    from pdfusion.structures.particle import Particle

    bundle = load_bundle(checkpoint, device="cpu")
    target = load_target(data_path, bundle.r_grid)
    cfg = bundle.sample_config(n_samples=n_samples, seed=seed)
    cands = generate_candidates(bundle, target[None], [metal_number(metal)], cfg)[0]
    return [Particle(c.numbers, c.positions, {"structure_type": "generated", "source": str(checkpoint),
                                              "model_rwp": float(c.rwp), "label": f"generated_{i:03d}_{c.n_atoms}"})
            for i, c in enumerate(cands)]


def run(args: argparse.Namespace) -> int:
    import torch

    from pdfusion.config import SolveConfig
    from pdfusion.inference.library import DEFAULT_RADII, parse_composition
    from pdfusion.inference.report import format_table, write_report
    from pdfusion.inference.solve import solve

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    from pdfusion.limits import check_finite, check_output_path, limits_from_args

    t0 = time.perf_counter()
    check_finite(rmin=args.rmin, rmax=args.rmax, qmin=args.qmin, qmax=args.qmax, qdamp=args.qdamp, qbroad=args.qbroad)
    check_output_path(args.outdir, "-o", folder=True)
    for radius in args.radii or ():
        if not (math.isfinite(radius) and 0 < radius <= MAX_RADIUS):
            raise ValueError(f"--radii: each radius must be a number of Å in (0, {MAX_RADIUS:g}], got {radius:g}")
    if args.model:
        from pdfusion.cli.sample_cmd import check_checkpoint_source

        check_checkpoint_source(args.model)
    r, g, meta = read_data(args.data, limits_from_args(args).max_points)
    composition = resolve_composition(args.composition, meta, args.data)
    comp = parse_composition(composition)
    cfg = SolveConfig(
        top=args.top, per_type=args.per_type, radii=tuple(args.radii) if args.radii else DEFAULT_RADII,
        families=tuple(args.families) if args.families else None, rmin=args.rmin, rmax=args.rmax, qmin=args.qmin,
        qmax=args.qmax, qdamp=args.qdamp, qbroad=args.qbroad, refine_qdamp=args.refine_qdamp,
        use_ray=args.use_ray, num_cpus=args.num_cpus,
    )
    extra = []
    if args.model:
        extra = model_candidates(args.model, args.data, comp.metal, args.n_samples, args.seed)
    log = None if args.quiet else (lambda s: print(s, file=sys.stderr))
    result = solve(r, g, composition, cfg, meta=meta, extra=extra, progress=not args.quiet, log=log)
    name = Path(args.data).name
    write_report(result, args.outdir, data_name=name, plots=not args.no_plot,
                 extra={"data_file": str(args.data), "model": args.model,
                        "wall_time_s": round(time.perf_counter() - t0, 2)})
    best = result.best
    print(f"{name} ({result.composition}): {len(result.screening)} candidates screened, {len(result.candidates)} "
          f"refined ({result.config['refine_backend']}); fit {result.window['rmin']:g}-{result.window['rmax']:g} Å, "
          f"Qmax {result.config['qmax']:g}, Qdamp {cfg.qdamp:g}")
    print(format_table(result))
    print(f"best: {best.structure_type} ({best.n_atoms} atoms, {best.diameter:.1f} Å), Rw {best.rw:.4f}; "
          f"report in {args.outdir}/report.json ({time.perf_counter() - t0:.1f} s)")
    return 0
