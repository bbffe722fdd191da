"""`pdfusion structure TYPE METAL RADIUS -o particle.xyz`: cut one oxide nanoparticle from a prototype.

TYPE is a prototype name or alias (rocksalt/NaCl, fluorite, antifluorite, rutile, cdi2, reo3, spinel,
wurtzite, zincblende, cscl, corundum, cuprite, litharge); the lattice comes from the seed-calibrated
radius rule unless ``--lattice a[,c]`` gives the real one. Prints a one-line summary.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from pdfusion.limits import add_limit_flags
from pdfusion.structures.prototypes import PROTOTYPES


def _lattice(text: str) -> tuple[float, ...]:
    try:
        vals = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a or a,c in Å, got {text!r}") from None
    if len(vals) not in (1, 2):
        raise argparse.ArgumentTypeError(f"expected a or a,c in Å, got {text!r}")
    return vals


def _center(text: str) -> str | tuple[float, float, float]:
    """'atom' or fractional x,y,z (finite); refused by argparse itself with a usage line, not a traceback."""
    if text.strip().lower() == "atom":
        return "atom"
    try:
        vals = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'atom' or fractional x,y,z, got {text!r}") from None
    if len(vals) != 3 or not all(math.isfinite(v) for v in vals):
        raise argparse.ArgumentTypeError(f"expected 'atom' or three finite fractional coordinates x,y,z, got {text!r}")
    return vals


def register(sub) -> None:
    p = sub.add_parser("structure", help="cut a spherical oxide nanoparticle from a crystal prototype",
                       description=__doc__.splitlines()[0])
    p.add_argument("structure_type", metavar="TYPE", help=f"one of {sorted(PROTOTYPES)} (or an alias such as NaCl)")
    p.add_argument("metal", metavar="METAL", help="metal element symbol, e.g. Ti")
    p.add_argument("radius", metavar="RADIUS", type=float, help="particle radius in Å (metals within it are kept)")
    p.add_argument("-o", "--out", type=Path, required=True, help="output file: .xyz, .extxyz or .cif")
    p.add_argument("--lattice", type=_lattice, default=None, metavar="a[,c]", help="real lattice constant(s) in Å")
    p.add_argument("--center", type=_center, default=None, metavar="atom|x,y,z",
                   help="'atom' = a random metal atom, or fractional x,y,z (default: the central metal atom)")
    p.add_argument("--seed", type=int, default=0, help="random seed for --center atom")
    p.add_argument("--min-distance", type=float, default=1.2,
                   help="refuse particles with a closer pair (Å; default 1.2, 0 keeps any)")
    add_limit_flags(p, points=False, memory=False)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from pdfusion.config import ConfigError
    from pdfusion.limits import check_output_path
    from pdfusion.structures.io import write_structure
    from pdfusion.structures.particles import make_particle

    if not (math.isfinite(args.min_distance) and args.min_distance >= 0):
        raise ConfigError(f"--min-distance: must be >= 0 Å (0 keeps every particle), got {args.min_distance}")
    if not (math.isfinite(args.radius) and args.radius > 0):
        raise ConfigError(f"RADIUS: must be a positive number of Å, got {args.radius}")
    check_output_path(args.out, "-o", (".xyz", ".extxyz", ".exyz", ".cif"))
    particle = make_particle(args.structure_type, args.metal, args.radius, lattice=args.lattice, center=args.center,
                             rng=np.random.default_rng(args.seed), min_distance=args.min_distance or None,
                             max_atoms=args.max_atoms)
    if particle is None:
        raise ValueError(f"--min-distance: the particle has atoms closer than {args.min_distance} Å; check --lattice")
    path = write_structure(particle, args.out)
    m = particle.meta
    lat = ", ".join(f"{k}={v:g}" for k, v in m["lattice_params"].items())
    print(f"{path}: {m['structure_type']} {m['formula']} r={m['radius']:g} Å, {len(particle)} atoms "
          f"({int((particle.numbers != 8).sum())} metal), lattice {lat}")
    return 0
