"""`pdfusion pdf STRUCTURE_FILE`: simulate the X-ray (or neutron) G(r) of a structure file.

Reads XYZ / extended XYZ / CIF / seed-oxides .h5 through ``pdfusion.structures.io.read_structure``. For a
seed .h5 the stored (diffpy.srreal) curve is compared with ours: R_wp is printed and ``--plot`` draws both.
``--out g.gr`` writes PDFgui-style text whose ``key = value`` header records the parameters (read back by
``pdfusion.pdf.files.read_pdf_file``, so ``pdfusion fit`` finds its qmax), ``--out g.csv`` writes ``r,G``;
without ``--out`` or ``--plot`` the curve goes to stdout as CSV. Sizes are checked before anything is
allocated (``pdfusion.limits``: ``--max-points``, ``--max-memory``, ``--max-atoms``), and a structure with
two atoms closer than ``--min-distance`` (0.5 Å) is refused as a duplicated atom.

The simulator is a Debye sum over a finite set of atoms. A periodic crystal (a CIF with a unit cell whose
atoms touch those of the neighbouring cells, ``pdfusion.structures.io.is_periodic``) is refused: one unit
cell simulated as a cluster is not the crystal's PDF. ``--radius R`` cuts a spherical particle of radius R Å
from the crystal first (atoms within R of the atom nearest the cell centre, plus the oxygens bonded to a
kept metal, as ``pdfusion structure`` cuts); the bulk crystal's PDF is ``pdfusion fit --periodic``'s job.
``--as-cluster`` simulates the listed atoms anyway (a particle stored in a narrow vacuum box).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from pdfusion.config import RADIATIONS, ConfigError, PDFConfig
from pdfusion.limits import MIN_DISTANCE, add_limit_flags, limits_from_args

OUT_SUFFIXES = (".gr", ".csv")
PLOT_SUFFIXES = (".png", ".pdf", ".svg")


def register(sub) -> None:
    d = PDFConfig()
    p = sub.add_parser("pdf", help="simulate the PDF G(r) of a structure file (XYZ, CIF, seed .h5)",
                       description=__doc__.splitlines()[0])
    p.add_argument("structure", metavar="STRUCTURE_FILE", help="XYZ, extended XYZ, CIF or seed-oxides .h5")
    p.add_argument("--qmin", type=float, default=d.qmin, help=f"Å⁻¹ (default {d.qmin})")
    p.add_argument("--qmax", type=float, default=d.qmax, help=f"Å⁻¹ (default {d.qmax})")
    p.add_argument("--qdamp", type=float, default=d.qdamp, help=f"Q-resolution damping, Å⁻¹ (default {d.qdamp})")
    p.add_argument("--biso", type=float, default=d.biso, help=f"isotropic B of every atom, Å² (default {d.biso})")
    p.add_argument("--delta2", type=float, default=d.delta2,
                   help=f"correlated-motion sharpening, Å² (default {d.delta2})")
    p.add_argument("--rmin", type=float, default=d.rmin, help=f"Å (default {d.rmin})")
    p.add_argument("--rmax", type=float, default=d.rmax, help=f"Å (default {d.rmax})")
    p.add_argument("--rstep", type=float, default=d.rstep, help=f"Å (default {d.rstep})")
    p.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=d.normalize,
                   help="divide G(r) by its maximum, as the seed-oxides data are (default on)")
    p.add_argument("--radiation", choices=RADIATIONS, default=d.radiation)
    p.add_argument("--radius", type=float, default=None, metavar="R",
                   help="for a periodic crystal (CIF): cut a spherical particle of radius R Å and simulate it")
    p.add_argument("--periodic", action="store_true",
                   help="the bulk crystal's PDF: not done here, use `pdfusion fit --periodic`")
    p.add_argument("--as-cluster", action="store_true",
                   help="simulate a periodic file's listed atoms as a finite cluster (a particle in a vacuum box)")
    p.add_argument("--plot", type=Path, default=None, metavar="OUT.png", help="write a plot of G(r) (.png, .pdf, .svg)")
    p.add_argument("--out", type=Path, default=None, metavar="G.gr|G.csv",
                   help="write G(r): .gr = PDFgui-style text with a parameter header, .csv = r,G")
    p.add_argument("--min-distance", type=float, default=MIN_DISTANCE, metavar="Å",
                   help=f"refuse structures with two atoms closer than this (default {MIN_DISTANCE} Å; 0 accepts any)")
    add_limit_flags(p)
    p.set_defaults(func=run)


def _atomic_savefig(fig, path: Path) -> None:
    from pdfusion.io_utils import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format=path.suffix[1:].lower() or "png")


def _plot(path: Path, r, g, title: str, stored=None, score: float | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    if stored is not None:
        ax.plot(stored[0], stored[1], lw=1.5, color="0.6", label="stored (diffpy.srreal)")
    label = "pdfusion" if score is None else f"pdfusion (R_wp = {score:.3g})"
    ax.plot(r, g, lw=1.0, color="C0", label=label)
    ax.set_xlabel("r (Å)")
    ax.set_ylabel("G(r)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    _atomic_savefig(fig, path)
    plt.close(fig)


def cut_from_crystal(particle, radius: float, max_atoms: int | None = None):
    """A spherical particle of ``radius`` Å cut from a periodic ``particle`` (meta['lattice']): the atoms
    within ``radius`` of the non-oxygen atom nearest the cell centre, plus every oxygen within
    1.4 x the shortest metal-oxygen distance of a kept atom (``structures.particles.cut_sphere``)."""
    from pymatgen.core import Lattice, Structure

    from pdfusion.structures.particle import OXYGEN, Particle
    from pdfusion.structures.particles import BOND_FACTOR, cut_sphere

    if not (np.isfinite(radius) and radius > 0):
        raise ValueError(f"--radius: must be a positive number of Å, got {radius}")
    lattice = np.asarray(particle.meta["lattice"], dtype=np.float64).reshape(3, 3)
    pos, numbers = np.asarray(particle.positions, dtype=np.float64), np.asarray(particle.numbers)
    metal = numbers != OXYGEN
    rows = np.flatnonzero(metal) if metal.any() else np.arange(len(numbers))
    centre = lattice.sum(axis=0) / 2
    c = pos[rows[np.argmin(np.linalg.norm(pos[rows] - centre, axis=1))]]
    cutoff = 0.0
    if metal.any() and (~metal).any():
        s = Structure(Lattice(lattice), numbers.tolist(), pos, coords_are_cartesian=True)
        i, j, _, d = s.get_neighbor_list(6.0)
        mo = (metal[i] != metal[j]) & (d > 1e-8)
        if mo.any():
            cutoff = BOND_FACTOR * float(d[mo].min())
    from pdfusion.limits import Limits, check_atoms, particle_atoms_estimate

    limit = Limits(max_atoms=max_atoms) if max_atoms is not None else Limits()
    check_atoms(particle_atoms_estimate(lattice, len(numbers), float(radius), cutoff), limit,
                f"--radius: a sphere of {radius:g} Å cut from this crystal (estimated)")
    z, xyz = cut_sphere(pos, numbers, lattice, c, float(radius), cutoff)
    meta = {k: v for k, v in particle.meta.items() if k not in ("lattice", "periodic")}
    return Particle(z, xyz - xyz.mean(axis=0), {**meta, "radius": float(radius)})


def _finite_particle(path: Path, particle, args: argparse.Namespace):
    """The finite particle to simulate: a periodic crystal is refused, cut (--radius) or kept (--as-cluster)."""
    from pdfusion.structures.io import is_periodic

    periodic = particle.meta.get("periodic")
    if periodic is None:
        periodic = is_periodic(particle)
    if args.periodic:
        raise ValueError("--periodic: `pdfusion pdf` simulates finite particles; for the bulk crystal's PDF use "
                         "`pdfusion fit --periodic`, or cut a particle here with --radius R")
    if not periodic:
        if args.radius is not None:
            raise ValueError(f"--radius: {path.name} is a finite particle, not a periodic crystal; drop --radius")
        return particle, ""
    if args.radius is not None:
        cut = cut_from_crystal(particle, args.radius, getattr(args, "max_atoms", None))
        return cut, f" (a sphere of radius {args.radius:g} Å cut from the {len(particle)}-atom cell)"
    if args.as_cluster:
        return particle, " (a periodic cell's atoms simulated as a cluster, --as-cluster)"
    raise ValueError(
        f"{path}: is a periodic crystal ({len(particle)} atoms in its unit cell), and one cell simulated as a cluster "
        "is not its PDF; add --radius R to cut a particle of radius R Å from it (as `pdfusion structure` does), "
        "or use `pdfusion fit --periodic` for the bulk crystal"
    )


def run(args: argparse.Namespace) -> int:
    import torch

    from pdfusion.limits import (
        check_atoms,
        check_coordinates,
        check_finite,
        check_min_distance,
        check_output_path,
    )
    from pdfusion.pdf import r_grid, rwp, simulate_pdf
    from pdfusion.pdf.files import covered, interpolate_pdf, write_pdf
    from pdfusion.pdf.limits import check_pdf_config
    from pdfusion.structures.io import read_seed_h5, read_structure, xyz_atom_count

    limits = limits_from_args(args)
    if args.out is not None:
        check_output_path(args.out, "--out", OUT_SUFFIXES)
    if args.plot is not None:
        check_output_path(args.plot, "--plot", PLOT_SUFFIXES)
    check_finite(rmin=args.rmin, rmax=args.rmax, rstep=args.rstep, qmin=args.qmin, qmax=args.qmax, qdamp=args.qdamp,
                 biso=args.biso, delta2=args.delta2, radius=args.radius, min_distance=args.min_distance)
    if args.min_distance < 0:
        raise ConfigError(f"--min-distance: must be >= 0 Å (0 accepts any distance), got {args.min_distance}")
    cfg = PDFConfig(rmin=args.rmin, rmax=args.rmax, rstep=args.rstep, qmin=args.qmin, qmax=args.qmax,
                    qdamp=args.qdamp, biso=args.biso, delta2=args.delta2, radiation=args.radiation,
                    normalize=args.normalize)
    check_pdf_config(cfg, limits)
    path = Path(args.structure)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such structure file")
    n_head = xyz_atom_count(path)  # the count line of an XYZ, read before the file
    if n_head is not None:
        check_atoms(n_head, limits, str(path))
    stored = None
    if path.suffix.lower() in (".h5", ".hdf5"):
        rec = read_seed_h5(path)
        particle, stored = rec.particle, (np.asarray(rec.r), np.asarray(rec.pdf))
    else:
        particle = read_structure(path)
    check_coordinates(particle.positions, str(path))
    note = ""
    if "lattice" in particle.meta or args.radius is not None or args.periodic or args.as_cluster:
        particle, note = _finite_particle(path, particle, args)
    if len(particle) < 2:
        raise ValueError(f"{path}: a PDF needs at least two atoms, found {len(particle)}")
    check_atoms(len(particle), limits, str(path))
    check_min_distance(particle.positions, str(path), args.min_distance)
    check_pdf_config(cfg, limits, len(particle))
    pos = torch.as_tensor(particle.positions, dtype=torch.float64)
    num = torch.as_tensor(particle.numbers, dtype=torch.long)
    try:
        with torch.no_grad():
            g = simulate_pdf(pos, num, cfg=cfg).numpy()
    except ValueError as exc:
        if "no positive maximum" not in str(exc):
            raise
        raise ConfigError(f"{path}: G(r) has no positive maximum on {cfg.rmin:g}..{cfg.rmax:g} Å (are all pairs "
                          "farther apart than --rmax?); cannot normalise it -- raise --rmax, or add --no-normalize "
                          "for the unnormalised curve") from None
    r = r_grid(cfg).numpy()

    score = None
    if stored is not None:
        sel = covered(stored[0], r)
        target = interpolate_pdf(stored[0], stored[1], r[sel])
        score = float(rwp(torch.as_tensor(g[sel]), torch.as_tensor(target)))

    summary = (f"{path.name}: {len(particle)} atoms{note}, {cfg.radiation} G(r) on {r.size} points "
               f"r = {r[0]:.3f}..{r[-1]:.3f} Å, maximum at r = {r[int(np.argmax(g))]:.3f} Å")
    if score is not None:
        summary += f", R_wp vs stored = {score:.3g}"
    if args.out is not None:
        header = {"source": "pdfusion pdf", "structure": path.name, "natoms": len(particle),
                  "composition": particle.formula, "radiation": cfg.radiation, "qmin": cfg.qmin, "qmax": cfg.qmax,
                  "qdamp": cfg.qdamp, "biso": cfg.biso, "delta2": cfg.delta2, "rmin": cfg.rmin, "rmax": cfg.rmax,
                  "rstep": cfg.rstep, "normalized": cfg.normalize}
        write_pdf(args.out, r, g, header)
        summary += f"; wrote {args.out}"
    if args.plot is not None:
        _plot(args.plot, r, g, path.name, stored, score)
        summary += f"; plotted {args.plot}"
    if args.out is None and args.plot is None:
        sys.stdout.write("r,G\n" + "".join(f"{a:.10g},{b:.10g}\n" for a, b in zip(r, g, strict=True)))
        print(summary, file=sys.stderr)
    else:
        print(summary)
    return 0
