"""`pdfusion sample [CHECKPOINT] PDF_FILE --metal Ti`: ranked candidate structures for one measured PDF.

Without a checkpoint it uses the model that ships with the repository (models/README.md) or $PDFUSION_MODEL.

Writes `rank01_rwp0.0432.xyz`, ... (best first), `summary.json` and `overlay.png` (target vs the best
candidates' simulated G(r)) into the output folder.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from pdfusion.config import ConfigError
from pdfusion.io_utils import atomic_write
from pdfusion.limits import add_limit_flags, limits_from_args


def register(sub) -> None:
    p = sub.add_parser("sample", help="generate ranked candidate structures for a PDF file",
                       description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", nargs="?", default=None,
                   help="trainer checkpoint (.pt), its folder, or an MLflow models:/ or runs:/ URI "
                        "(default: the shipped model, models/pdfusion-cpu-v2, or $PDFUSION_MODEL)")
    p.add_argument("pdf_file", help="PDF to fit: xPDFsuite .gr, two-column .csv/.txt, or a seed-oxides .h5")
    p.add_argument("--metal", required=True, help="the oxide's metal, symbol or Z (e.g. Ti or 22)")
    p.add_argument("-k", "--n-samples", type=int, default=16, help="candidates to generate (default 16)")
    p.add_argument("--n-atoms", type=int, default=None,
                   help="fix the atom count sampled (default: predicted from the PDF); detached atoms are then "
                        "dropped unless --no-prune-fragments")
    p.add_argument("--sizing", choices=("head", "library"), default=None,
                   help="where atom counts come from: the model's count head, or the perfect spherical cuts of the "
                        "metal that fit the PDF best after an expansion fit (default: the model's)")
    p.add_argument("--size-scale", type=float, default=None,
                   help="with --sizing library, sample this much larger than the library's counts, for "
                        "--prune-atoms to carve (default: the model's)")
    p.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the model's)")
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: the model's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pdf-guidance", type=float, default=None,
                   help="steer sampling toward the PDF through the simulator: RMS step per atom in Å at full noise "
                        "(default: the model's; 0 = off)")
    p.add_argument("--pdf-guidance-iters", type=int, default=None,
                   help="fit steps per sampler step (default: the model's)")
    p.add_argument("--pdf-guidance-cohesion", type=float, default=None,
                   help="weight of the stray-atom penalty in PDF guidance, per Å² beyond 3.5 Å to the nearest "
                        "neighbour (default: the model's; 0 = off)")
    p.add_argument("--pdf-guidance-window", type=float, nargs=2, default=None, metavar=("START", "END"),
                   help="shares of the sampler's steps that are guided, 0 = the first at full noise (default: the "
                        "model's; guidance acts where structure is decided, late)")
    p.add_argument("--prune-fragments", action=argparse.BooleanOptionalAction, default=None,
                   help="drop atoms outside each candidate's largest bonded group (< 3.5 Å) before scoring "
                        "(default: the model's)")
    p.add_argument("--refine", action="store_true", help="refine every candidate by gradient descent on R_wp")
    p.add_argument("--refine-steps", type=int, default=100)
    p.add_argument("--prune-atoms", action="store_true",
                   help="after refinement (implies --refine), delete from the best --prune-top candidates the atoms "
                        "whose removal lowers R_wp and refine again (kept only where R_wp falls)")
    p.add_argument("--prune-top", type=int, default=4, help="candidates pruned with --prune-atoms (default 4)")
    p.add_argument("-o", "--outdir", default="pdfusion_samples", help="output folder (default ./pdfusion_samples)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-plot", action="store_true", help="skip overlay.png")
    add_limit_flags(p, memory=False)
    p.set_defaults(func=run)


def load_target(path: str | Path, r_grid: np.ndarray, *, normalize: bool = True) -> np.ndarray:
    """Read a PDF file and put it on the model's r grid, scaled to max 1 like the training PDFs.

    The file goes through :func:`pdfusion.pdf.files.read_pdf_file` and
    :func:`pdfusion.pdf.files.map_to_grid` -- the reader and grid rule of the HTTP service, so both accept the
    same files and give the same curve. Data starting above the grid's rmin or ending below its rmax are
    mapped with G = 0 where they do not reach, and interpolation from a coarser step is done: each prints a
    one-line warning to stderr. Raises ValueError naming the file (and line) for a malformed file, and
    ConfigError (a ValueError) when the r range covers less than half of the model's or the mapped curve is
    unusable (zero, a lone spike, a negligible positive part: map_to_grid's rules)."""
    path = Path(path)
    return map_target(path, read_target(path), r_grid, normalize=normalize)


def read_target(path: str | Path, max_points: int | None = None):
    """The PDF file read and checked (finite values, strictly increasing r, no lone spike), before any model
    is loaded: a typo in the file name costs no checkpoint download."""
    from pdfusion.pdf.files import read_pdf_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"PDF file {path} does not exist")
    return read_pdf_file(path, max_points=max_points)


def map_target(path: Path, data, r_grid: np.ndarray, *, normalize: bool = True) -> np.ndarray:
    """``data`` (a read PDF) on the model's r grid, with the warnings :func:`load_target` prints."""
    from pdfusion.pdf.files import PDFValueError, map_to_grid

    try:
        mapped = map_to_grid(data.r, data.g, np.asarray(r_grid, dtype=np.float64), normalize=normalize)
    except PDFValueError as exc:
        raise ConfigError(f"{path}: {exc.message}") from None
    for note in mapped.warnings:
        print(f"warning: {path.name}: {note}", file=sys.stderr)
    return mapped.g


def check_checkpoint_source(source: str) -> None:
    """An MLflow URI needs a tracking store that exists: MLflow would otherwise create an empty
    ``mlflow.db`` as a side effect of looking, and then report the model missing."""
    if not str(source).startswith(("models:/", "runs:/")):
        return
    from pdfusion.tracking import default_tracking_uri

    uri = default_tracking_uri()
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        raise ConfigError(f"checkpoint {source!r}: no MLflow store at {uri[len('sqlite:///'):]}; set "
                          "MLFLOW_TRACKING_URI to the store that registered the model, or give a checkpoint file")


def run(args: argparse.Namespace) -> int:
    import torch

    from pdfusion.config import SampleConfig
    from pdfusion.inference.bundle import load_bundle
    from pdfusion.inference.candidates import generate_candidates, metal_number
    from pdfusion.limits import check_output_path
    from pdfusion.structures.prototypes import check_cation

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    limits = limits_from_args(args)
    refine = args.refine or args.prune_atoms  # pruning works on refined candidates
    SampleConfig(guidance=1.0 if args.guidance is None else args.guidance, steps=args.steps, n_samples=args.n_samples,
                 n_atoms=args.n_atoms, refine=refine, refine_steps=args.refine_steps,
                 prune_atoms=args.prune_atoms, prune_top=args.prune_top, seed=args.seed,
                 size_scale=1.0 if args.size_scale is None else args.size_scale,
                 pdf_guidance=args.pdf_guidance or 0.0,
                 pdf_guidance_iters=args.pdf_guidance_iters or 1,
                 pdf_guidance_cohesion=args.pdf_guidance_cohesion or 0.0,
                 pdf_guidance_window=(0.0, 1.0) if args.pdf_guidance_window is None
                 else tuple(args.pdf_guidance_window))  # ranges, before loading
    check_output_path(args.outdir, "-o", folder=True)
    z = metal_number(check_cation(args.metal))
    data = read_target(args.pdf_file, limits.max_points)
    if args.checkpoint is None:
        from pdfusion.inference.bundle import default_model_path

        args.checkpoint = str(default_model_path())
    check_checkpoint_source(args.checkpoint)
    bundle = load_bundle(args.checkpoint, device=args.device)
    target = map_target(Path(args.pdf_file), data, bundle.r_grid, normalize=bool(bundle.pdf_config.normalize))
    max_atoms = args.n_atoms or bundle.config.model.max_atoms
    if args.n_samples * max_atoms > limits.max_atoms:
        raise ConfigError(f"-k: {args.n_samples} candidates of up to {max_atoms} atoms are "
                          f"{args.n_samples * max_atoms:,} atoms, more than the limit of {limits.max_atoms:,} "
                          "(fewer -k, or raise it with --max-atoms)")
    cfg = bundle.sample_config(guidance=args.guidance, steps=args.steps, n_samples=args.n_samples,
                               n_atoms=args.n_atoms, refine=refine, refine_steps=args.refine_steps,
                               prune_atoms=args.prune_atoms, prune_top=args.prune_top,
                               seed=args.seed, pdf_guidance=args.pdf_guidance,
                               pdf_guidance_iters=args.pdf_guidance_iters,
                               pdf_guidance_cohesion=args.pdf_guidance_cohesion,
                               pdf_guidance_window=None if args.pdf_guidance_window is None
                               else tuple(args.pdf_guidance_window),
                               prune_fragments=args.prune_fragments, sizing=args.sizing,
                               size_scale=args.size_scale)
    if cfg.n_atoms is not None and cfg.n_atoms > bundle.config.model.max_atoms:
        raise ValueError(f"--n-atoms: {cfg.n_atoms} exceeds the model's max_atoms {bundle.config.model.max_atoms}")
    cands = generate_candidates(bundle, target[None], [z], cfg, progress=True)[0]
    out = Path(args.outdir)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for i, c in enumerate(cands, start=1):
        name = f"rank{i:02d}_rwp{c.rwp:.4f}.xyz"
        atomic_write(out / name, c.to_xyz())
        files.append(name)
    summary = {
        "checkpoint": str(args.checkpoint), "model": bundle.name, "version": bundle.version,
        "pdf_file": str(args.pdf_file), "metal": z,
        "sample_config": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__},
        "candidates": [
            {"rank": i, "file": f, "rwp": c.rwp, "rwp_before_refine": c.rwp_before_refine, "n_atoms": c.n_atoms}
            for i, (f, c) in enumerate(zip(files, cands, strict=True), start=1)
        ],
    }
    atomic_write(out / "summary.json", json.dumps(summary, indent=2))
    if not args.no_plot:
        from pdfusion.evaluation.plots import candidate_overlay

        candidate_overlay(bundle.r_grid, target, cands, f"{Path(args.pdf_file).name} ({args.metal})",
                          out / "overlay.png")
    best = cands[0]
    print(f"{len(cands)} candidates in {out}; best R_wp {best.rwp:.4f} ({best.n_atoms} atoms) -> {files[0]}")
    return 0
