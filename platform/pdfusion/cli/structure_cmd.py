"""`pdfusion structure TYPE METAL RADIUS -o particle.xyz`: cut one oxide nanoparticle from a prototype.

TYPE is a prototype name or alias (rocksalt/NaCl, fluorite, antifluorite, rutile, cdi2, reo3, spinel,
wurtzite, zincblende, cscl, corundum, cuprite, litharge); the lattice comes from the seed-calibrated
radius rule unless ``--lattice a[,c]`` gives the real one. Prints a one-line summary.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pdfusion.structures.prototypes import PROTOTYPES


def _lattice(text: str) -> tuple[float, ...]:
    try:
        vals = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a or a,c in Å, got {text!r}") from None
    if len(vals) not in (1, 2):
        raise argparse.ArgumentTypeError(f"expected a or a,c in Å, got {text!r}")
    return vals


def register(sub) -> None:
    p = sub.add_parser("structure", help="cut a spherical oxide nanoparticle from a crystal prototype",
                       description=__doc__.splitlines()[0])
    p.add_argument("structure_type", metavar="TYPE", help=f"one of {sorted(PROTOTYPES)} (or an alias such as NaCl)")
    p.add_argument("metal", metavar="METAL", help="metal element symbol, e.g. Ti")
    p.add_argument("radius", metavar="RADIUS", type=float, help="particle radius in Å (metals within it are kept)")
    p.add_argument("-o", "--out", type=Path, required=True, help="output file: .xyz, .extxyz or .cif")
    p.add_argument("--lattice", type=_lattice, default=None, metavar="a[,c]", help="real lattice constant(s) in Å")
    p.add_argument("--center", default=None, metavar="atom|x,y,z",
                   help="'atom' = a random metal atom, or fractional x,y,z (default: the central metal atom)")
    p.add_argument("--seed", type=int, default=0, help="random seed for --center atom")
    p.add_argument("--min-distance", type=float, default=1.2, help="refuse particles with a closer pair (Å)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from pdfusion.structures.io import write_structure
    from pdfusion.structures.particles import make_particle

    center = args.center
    if center is not None and center != "atom":
        center = _lattice(center) if "," in center else center
        if isinstance(center, tuple) and len(center) != 3:
            raise ValueError(f"--center: expected 'atom' or x,y,z, got {args.center!r}")
    particle = make_particle(args.structure_type, args.metal, args.radius, lattice=args.lattice, center=center,
                             rng=np.random.default_rng(args.seed), min_distance=args.min_distance)
    if particle is None:
        raise ValueError(f"--min-distance: the particle has atoms closer than {args.min_distance} Å; check --lattice")
    path = write_structure(particle, args.out)
    m = particle.meta
    lat = ", ".join(f"{k}={v:g}" for k, v in m["lattice_params"].items())
    print(f"{path}: {m['structure_type']} {m['formula']} r={m['radius']:g} Å, {len(particle)} atoms "
          f"({int((particle.numbers != 8).sum())} metal), lattice {lat}")
    return 0
