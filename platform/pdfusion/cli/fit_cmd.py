"""`pdfusion fit STRUCTURE DATA`: refine a structure against a measured PDF (PDFgui-style least squares).

STRUCTURE is a CIF fitted as a crystal (``--periodic``, the attenuated-crystal model), a CIF cut into a
spherical particle (``--radius R``), or an XYZ / extended XYZ particle (Debye model). DATA is a PDF file
(.gr, .csv, ...); Qmax (and Qmin) come from its header unless given. Writes to OUTDIR: the refined structure
(xyz and cif), the parameter table (``*.fit.json``, value ± standard uncertainty), the curves
(``*.fit.csv``: r, G_obs, G_calc, G_diff) and the figure (``*.fit.png`` and ``*.fit.pdf``).

    pdfusion fit Ni.cif Ni.gr --periodic -o fit_ni/        # calibrant: refines Qdamp, Qbroad, a, Uiso, delta2
    pdfusion fit particle.xyz data.gr --qdamp 0.045 --qbroad 0.017 --free scale,expansion,uiso,delta2
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from pdfusion.limits import add_limit_flags


def register(sub) -> None:
    p = sub.add_parser("fit", help="refine a structure (CIF crystal or particle) against a measured PDF",
                       description=__doc__.splitlines()[0])
    p.add_argument("structure", metavar="STRUCTURE", help="CIF (with --periodic or --radius), XYZ or extended XYZ")
    p.add_argument("data", metavar="DATA", help="measured PDF file (.gr, .fgr, .dat, .csv, ...)")
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--periodic", action="store_true", help="fit a CIF as a periodic crystal")
    kind.add_argument("--radius", type=float, default=None, metavar="R",
                      help="cut a sphere of radius R Å (around an atom) from the CIF and fit it as a particle")
    p.add_argument("--free", default=None, metavar="LIST",
                   help="comma-separated refined parameters: scale, lattice (or a, c, ...), expansion, uiso, "
                        "uiso_<El>, delta1, delta2, qdamp, qbroad, spdiameter, positions (particle). Default: "
                        "scale,lattice,uiso,delta2,qdamp,qbroad (--periodic) or scale,expansion,uiso,delta2")
    p.add_argument("--fix", default=None, metavar="LIST",
                   help="comma-separated parameters to hold (removed from --free)")
    p.add_argument("--init", default=None, metavar="K=V,...",
                   help="starting values, e.g. 'uiso=0.006,delta2=2' (names as --free; biso=... accepted)")
    p.add_argument("--qdamp", type=float, default=0.04, help="Q-resolution damping Å⁻¹ (start, or fixed value) "
                                                             "(default 0.04; take it from a calibrant)")
    p.add_argument("--qbroad", type=float, default=0.0, help="peak broadening Å⁻¹ (start or fixed) (default 0)")
    p.add_argument("--qmax", type=float, default=None, help="Qmax Å⁻¹ of the data (default: the file header's qmax)")
    p.add_argument("--qmin", type=float, default=None, help="Qmin Å⁻¹ of the data (default: the header's qmin, else 0)")
    p.add_argument("--rmin", type=float, default=1.5, help="fit window start Å (default 1.5)")
    p.add_argument("--rmax", type=float, default=None, help="fit window end Å (default: end of the data)")
    p.add_argument("--spdiameter", type=float, default=None,
                   help="spherical-particle envelope diameter Å (periodic; add 'spdiameter' to --free to refine)")
    p.add_argument("--weights", choices=("unit", "dg"), default="unit",
                   help="least-squares weights: unit (default, as PDFgui without dG) or 1/dG²")
    p.add_argument("--convention", choices=("srreal", "pdffit2"), default="srreal",
                   help="periodic engine: srreal PDFCalculator (default) or PDFgui's pdffit2")
    p.add_argument("--nyquist", action="store_true", help="fit the data resampled onto the Nyquist grid π/Qmax")
    p.add_argument("--max-nfev", type=int, default=200, help="least-squares evaluations at most (default 200)")
    p.add_argument("-o", "--out", type=Path, default=None, metavar="OUTDIR",
                   help="output folder (default fit_<DATA stem>)")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG/PDF figure")
    p.add_argument("--min-distance", type=float, default=None, metavar="Å",
                   help="refuse a particle with two atoms closer than this (default 0.5 Å; 0 accepts any)")
    add_limit_flags(p, memory=False)
    p.set_defaults(func=run)


# --------------------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------------------
def _read_data(path: Path, max_points: int | None = None):
    """(r, g, dg, meta) from the data file; meta has lower-case header keys (qmax, qmin, ...)."""
    from pdfusion.pdf.files import read_pdf_file

    d = read_pdf_file(path, max_points=max_points)
    return d.r, d.g, d.dg, {str(k).lower(): v for k, v in (d.meta or {}).items()}


def _meta_float(meta: dict, key: str) -> float | None:
    v = meta.get(key)
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _parse_list(text: str | None) -> list[str] | None:
    if text is None:
        return None
    return [t.strip() for t in text.split(",") if t.strip()]


def _parse_init(text: str | None) -> dict[str, float]:
    out: dict[str, float] = {}
    for item in _parse_list(text) or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--init: expected NAME=VALUE items, got {item!r}")
        try:
            out[key.strip()] = float(value)
        except ValueError:
            raise ValueError(f"--init: {key.strip()} must be a number, got {value!r}") from None
    return out


def _free_list(default: tuple[str, ...], free: list[str] | None, fix: list[str] | None, symbols: list[str],
               lattice_names: list[str] = ()) -> list[str]:
    """--free (or the default) minus --fix; 'uiso' and 'lattice' groups lose the members named in --fix."""
    names = list(free) if free is not None else list(default)
    if not fix:
        return names
    fix_l = {f.lower() for f in fix}
    lattice_all = {"a", "b", "c", "alpha", "beta", "gamma"}
    out: list[str] = []
    for n in names:
        low = n.lower()
        if low in fix_l:
            continue
        if low in ("uiso", "biso"):  # keep the elements not fixed one by one
            out += [f"uiso_{s}" for s in symbols if f"uiso_{s}".lower() not in fix_l
                    and f"biso_{s}".lower() not in fix_l]
        elif low == "lattice" and fix_l & lattice_all:
            out += [x for x in lattice_names if x not in fix_l]
        else:
            out.append(n)
    if "uiso" in fix_l or "biso" in fix_l:
        out = [n for n in out if not n.lower().startswith(("uiso_", "biso_"))]
    if "lattice" in fix_l:
        out = [n for n in out if n.lower() not in lattice_all]
    if not out:
        raise ValueError("--fix: nothing left to refine")
    return out


def _cut_particle(path: Path, radius: float, limits=None):
    from pdfusion.limits import Limits, check_atoms, particle_atoms_estimate
    from pdfusion.pdf.periodic import Crystal
    from pdfusion.structures.particle import Particle
    from pdfusion.structures.particles import cut_sphere

    if not (math.isfinite(radius) and radius > 0):
        raise ValueError(f"--radius: must be a positive number of Å, got {radius}")
    cr = Crystal.from_cif(path)
    check_atoms(particle_atoms_estimate(cr.lattice, len(cr.numbers), radius, 3.0), limits or Limits(),
                f"--radius: a sphere of {radius:g} Å cut from {path.name} (estimated)")
    cart = cr.cart
    numbers = cr.numbers
    metal = np.flatnonzero(numbers != 8)
    centre = cart[metal[0] if metal.size else 0]
    oxy = numbers == 8
    cutoff = 0.0
    if metal.size and oxy.any():  # keep the oxygens bonded to kept metals (1.4 x the shortest M-O distance)
        from pdfusion.structures.particles import BOND_FACTOR, lattice_translations

        shifts = lattice_translations(cr.lattice, 6.0) @ cr.lattice
        d = np.linalg.norm(cart[oxy][None, :, None, :] + shifts[None, None] - cart[metal][:, None, None, :], axis=-1)
        cutoff = BOND_FACTOR * float(d[d > 0.1].min())
    z, pos = cut_sphere(cart, numbers, cr.lattice, centre, radius, cutoff)
    if len(z) < 2:
        raise ValueError(f"--radius {radius:g}: the sphere holds {len(z)} atom(s); a PDF needs at least two")
    return Particle(z, pos, {"source": path.name, "radius": radius})


# --------------------------------------------------------------------------------------------------
# outputs
# --------------------------------------------------------------------------------------------------
def _figure(res, title: str) -> tuple[bytes, bytes]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r, gobs, gcalc, gdiff = res.r, res.gobs, res.gcalc, res.gdiff
    fig, ax = plt.subplots(figsize=(8, 5))
    every = max(1, len(r) // 600)
    ax.plot(r[::every], gobs[::every], "o", mfc="none", mec="C0", ms=4, mew=0.8, label="data")
    ax.plot(r, gcalc, "-", color="C3", lw=1.2, label=f"fit (Rw = {res.rw:.3f})")
    low = float(min(gobs.min(), gcalc.min()))
    offset = low - 0.05 * float(np.ptp(gobs)) - float(np.abs(gdiff).max())
    ax.plot(r, gdiff + offset, "-", color="C2", lw=1.0, label="difference (offset)")
    ax.axhline(offset, color="0.5", lw=0.6, ls="--")
    ax.set_xlabel("r (Å)")
    ax.set_ylabel("G(r) (Å$^{-2}$)")
    ax.set_xlim(r[0], r[-1])
    ax.set_title(title, fontsize=10)
    ax.legend(loc="upper right", frameon=False)
    fig.tight_layout()
    out = []
    for fmt in ("png", "pdf"):
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, dpi=150)
        out.append(buf.getvalue())
    plt.close(fig)
    return out[0], out[1]


def _write_outputs(res, out: Path, stem: str, args, title: str, cmd: str) -> list[Path]:
    from pdfusion.io_utils import atomic_write
    from pdfusion.pdf.periodic import Crystal
    from pdfusion.structures.io import _write_cif_text, _write_xyz_text
    from pdfusion.structures.particle import Particle

    written: list[Path] = []

    def put(name: str, data: bytes) -> None:
        path = out / name
        atomic_write(path, data)
        written.append(path)

    st = res.structure
    if isinstance(st, Crystal):
        p = Particle(st.numbers, st.cart, {"lattice": st.lattice.tolist(), "formula": st.meta.get("formula", ""),
                                           "fit_rw": round(res.rw, 6)})
        put(f"{stem}.refined.xyz", _write_xyz_text(p, extended=True).encode())
        put(f"{stem}.refined.cif", st.cif_text().encode())
    else:
        put(f"{stem}.refined.xyz", _write_xyz_text(st, extended=False).encode())
        put(f"{stem}.refined.cif", _write_cif_text(st).encode())
    doc = {"command": cmd, "structure": str(args.structure), "data": str(args.data), **res.to_json()}
    put(f"{stem}.fit.json", (json.dumps(doc, indent=2, sort_keys=False, allow_nan=False) + "\n").encode())
    rows = "".join(f"{a:.6f},{b:.8g},{c:.8g},{d:.8g}\n" for a, b, c, d in
                   zip(res.r, res.gobs, res.gcalc, res.gdiff, strict=True))
    put(f"{stem}.fit.csv", ("r,G_obs,G_calc,G_diff\n" + rows).encode())
    if not args.no_plot:
        png, pdf = _figure(res, title)
        put(f"{stem}.fit.png", png)
        put(f"{stem}.fit.pdf", pdf)
    return written


# --------------------------------------------------------------------------------------------------
# the command
# --------------------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
    from pdfusion.config import FitConfig
    from pdfusion.limits import (
        MIN_DISTANCE,
        check_atoms,
        check_coordinates,
        check_finite,
        check_min_distance,
        check_output_path,
        limits_from_args,
    )
    from pdfusion.pdf.refine import FREE_PARTICLE, FREE_PERIODIC, FitWarning, fit_particle, fit_periodic

    t0 = time.perf_counter()
    limits = limits_from_args(args)
    spath, dpath = Path(args.structure), Path(args.data)
    check_finite(qdamp=args.qdamp, qbroad=args.qbroad, qmax=args.qmax, qmin=args.qmin, rmin=args.rmin, rmax=args.rmax,
                 spdiameter=args.spdiameter, radius=args.radius, min_distance=args.min_distance)
    min_distance = MIN_DISTANCE if args.min_distance is None else args.min_distance
    if min_distance < 0:
        raise ValueError(f"--min-distance: must be >= 0 Å (0 accepts any distance), got {min_distance}")
    out = args.out if args.out is not None else Path(f"fit_{dpath.stem}")
    check_output_path(out, "-o", folder=True)
    if not spath.is_file():
        raise FileNotFoundError(f"{spath}: no such structure file")
    if not dpath.is_file():
        raise FileNotFoundError(f"{dpath}: no such PDF file")
    r, g, dg, meta = _read_data(dpath, limits.max_points)
    qmax = args.qmax if args.qmax is not None else _meta_float(meta, "qmax")
    if qmax is None:
        raise ValueError(f"{dpath}: no qmax in the file header; pass --qmax (the Qmax the PDF was computed with)")
    qmin = args.qmin if args.qmin is not None else (_meta_float(meta, "qmin") or 0.0)
    if args.convention == "pdffit2" and not args.periodic:
        raise ValueError("--convention pdffit2 applies to --periodic fits only")
    init = _parse_init(args.init)
    cfg = FitConfig(qmin=qmin, qmax=qmax, qdamp=args.qdamp, qbroad=args.qbroad, rmin=args.rmin, rmax=args.rmax,
                    weights=args.weights, max_nfev=args.max_nfev, convention=args.convention, nyquist=args.nyquist)
    is_cif = spath.suffix.lower() == ".cif"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", FitWarning)
        if args.periodic:
            if not is_cif:
                raise ValueError(f"{spath}: --periodic needs a CIF (a unit cell), got {spath.suffix or 'no suffix'}")
            from pdfusion.pdf.periodic import Crystal, lattice_family

            structure = Crystal.from_cif(spath)
            symbols = _symbols(structure.numbers)
            free = _free_list(FREE_PERIODIC, _parse_list(args.free), _parse_list(args.fix), symbols,
                              lattice_family(structure).names)
            res = fit_periodic(structure, r, g, cfg, free=free, spdiameter=args.spdiameter, init=init, dg=dg)
        else:
            if args.spdiameter is not None:
                raise ValueError("--spdiameter applies to --periodic fits (a particle model has its own shape)")
            if is_cif and args.radius is None:
                raise ValueError(f"{spath}: a CIF is a crystal; pass --periodic to fit it as one, or --radius R "
                                 "to cut a spherical particle from it")
            if args.radius is not None:
                if not is_cif:
                    raise ValueError(f"{spath}: --radius cuts a particle from a CIF, got {spath.suffix or 'no suffix'}")
                particle = _cut_particle(spath, args.radius, limits)
            else:
                from pdfusion.structures.io import read_structure, xyz_atom_count

                check_atoms(xyz_atom_count(spath) or 0, limits, str(spath))
                particle = read_structure(spath)
                check_coordinates(particle.positions, str(spath))
            check_atoms(len(particle), limits, str(spath))
            check_min_distance(particle.positions, str(spath), min_distance)
            symbols = _symbols(particle.numbers)
            free = _free_list(FREE_PARTICLE, _parse_list(args.free), _parse_list(args.fix), symbols)
            res = fit_particle(particle, r, g, cfg, free=free, init=init, dg=dg)
    for w in caught:
        if issubclass(w.category, FitWarning):
            print(f"pdfusion fit: warning: {w.message}", file=sys.stderr)
    seconds = time.perf_counter() - t0
    res.meta["seconds_total"] = round(seconds, 3)
    kind = "periodic crystal" if args.periodic else f"particle ({len(res.structure)} atoms)"
    title = f"{spath.name} ({kind}) vs {dpath.name}"
    cmd = " ".join(["pdfusion", "fit", *sys.argv[2:]]) if sys.argv[1:2] == ["fit"] else "pdfusion fit"
    try:
        written = _write_outputs(res, out, dpath.stem, args, title, cmd)
    except OSError as exc:
        raise ValueError(f"{out}: cannot write the outputs ({exc.strerror or exc})") from None
    print(f"{title}: Qmin {qmin:g}, Qmax {qmax:g} Å⁻¹, {res.meta['model']} model, {len(res.free)} free parameters, "
          f"{res.nfev} evaluations, {seconds:.1f} s")
    print(res.table())
    print(f"wrote {', '.join(str(p) for p in written)}")
    return 0


def _symbols(numbers) -> list[str]:
    from pymatgen.core import Element

    return [Element.from_Z(int(z)).symbol for z in np.unique(numbers)]
