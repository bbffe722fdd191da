"""Generate a mono-metal oxide nanoparticle dataset (structures + simulated PDFs) on Ray, resumably.

    python jobs/generate_dataset.py --out data_out/gen --types NaCl Rutile --metals Ti Zn --radii 5 6 --variants 2
    ray job submit --working-dir . -- python jobs/generate_dataset.py --out /tmp/gen ...

One Ray task per shard (``--shard-size`` structures). A rerun with the same settings verifies the shards
already listed in the store's manifest by checksum, skips them and completes the rest, so an interrupted
run loses and duplicates nothing. Writes ``summary.json`` (counts per type) and ``atom_counts.png``.
``--local`` runs the same units in this process, without Ray. ``--off-library`` makes every structure an
off-library variant (``pdfusion.structures.variants``; ``default`` or KEY=FRACTION items of
``VariantMixConfig``, e.g. ``ellipsoid=0.4 faceted=0.4 off_centre=0.5 vacancies=0.5 strain=0.3 relaxation=0.5
thermal=0.5``), each row recording its parameters in ``variant_params``.
"""

from __future__ import annotations

import argparse
import sys
import time

from pdfusion.config import AugmentConfig, ConfigError, GenerateConfig, PDFConfig
from pdfusion.data.generate import generate_units, pending_units, prepare, write_summary


def _range(text: str | None) -> tuple[float, float] | None:
    if text is None:
        return None
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH, got {text!r}") from None
    return lo, hi


def _mix(items: list[str] | None):
    """--off-library items -> VariantMixConfig (None without the flag): 'default' and/or KEY=VALUE."""
    if items is None:
        return None
    from dataclasses import fields, replace

    from pdfusion.config import DEFAULT_VARIANT_MIX, VariantMixConfig

    mix = DEFAULT_VARIANT_MIX if not items else VariantMixConfig()
    names = {f.name for f in fields(VariantMixConfig)}
    changes = {}
    for item in items:
        if item == "default":
            mix = DEFAULT_VARIANT_MIX
            continue
        key, sep, value = item.partition("=")
        if not sep or key not in names:
            raise ConfigError(f"--off-library: expected 'default' or KEY=VALUE with KEY in {sorted(names)}, got "
                              f"{item!r}")
        try:
            changes[key] = tuple(float(v) for v in value.split(",")) if "," in value else float(value)
        except ValueError:
            raise ConfigError(f"--off-library {key}: expected a number or LOW,HIGH, got {value!r}") from None
    return replace(mix, **changes)


def build_parser() -> argparse.ArgumentParser:
    d = GenerateConfig()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=d.out_dir, help="store directory (created; reuse it to resume)")
    p.add_argument("--types", nargs="+", default=list(d.types), help="prototypes (see `pdfusion structure --help`)")
    p.add_argument("--metals", nargs="+", default=list(d.metals), help="metal symbols")
    p.add_argument("--radii", nargs="+", type=float, default=list(d.radii), help="particle radii (Å)")
    p.add_argument("--variants", type=int, default=d.variants,
                   help="particles per grid point (v0 atom-centred, others random centre)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--shard-size", type=int, default=d.shard_size, help="structures per shard = per Ray task")
    p.add_argument("--min-distance", type=float, default=d.min_distance, help="drop particles with a closer pair (Å)")
    p.add_argument("--qmax", type=float, default=d.pdf.qmax)
    p.add_argument("--rmax", type=float, default=d.pdf.rmax)
    p.add_argument("--noise-std", type=float, default=0.0, help="augmentation: Gaussian noise on G(r)")
    p.add_argument("--scale-range", type=_range, default=None, help="augmentation: LOW,HIGH scale factor")
    p.add_argument("--qdamp-range", type=_range, default=None, help="augmentation: LOW,HIGH qdamp")
    p.add_argument("--biso-range", type=_range, default=None, help="augmentation: LOW,HIGH Biso (Å²)")
    p.add_argument("--off-library", nargs="*", default=None, metavar="KEY=FRACTION",
                   help="off-library variants: 'default' or fractions such as ellipsoid=0.4 faceted=0.4 "
                        "off_centre=0.5 vacancies=0.5 strain=0.3 relaxation=0.5 thermal=0.5 (VariantMixConfig)")
    p.add_argument("--local", action="store_true", help="run in this process, without Ray")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs for a local Ray cluster (default: all)")
    p.add_argument("--ship-package", action="store_true",
                   help="send this checkout's pdfusion package to the workers (clusters where it is not installed)")
    return p


def config_from_args(args: argparse.Namespace) -> GenerateConfig:
    aug = AugmentConfig(noise_std=args.noise_std, scale_range=args.scale_range or (1.0, 1.0),
                        qdamp_range=args.qdamp_range, biso_range=args.biso_range)
    pdf = PDFConfig(qmax=args.qmax, rmax=args.rmax)
    kwargs = dict(out_dir=args.out, types=tuple(args.types), metals=tuple(args.metals), radii=tuple(args.radii),
                  variants=args.variants, seed=args.seed, shard_size=args.shard_size,
                  min_distance=args.min_distance, pdf=pdf, augment=aug)
    mix = _mix(getattr(args, "off_library", None))
    if mix is not None:
        from pdfusion.config import VariantGenerateConfig

        return VariantGenerateConfig(**kwargs, off_library=mix)
    return GenerateConfig(**kwargs)


def run(cfg: GenerateConfig, *, local: bool = False, num_cpus: int | None = None, ship_package: bool = False) -> dict:
    """`pdfusion.data.generate.generate_units` (Ray tasks, or in-process with `local`) with a plan, a progress bar and
    a closing line; writes the summary."""
    from tqdm import tqdm

    plan_cfg, units = prepare(cfg)  # validates the whole grid before any work starts, once
    todo = pending_units(plan_cfg, units)
    n_items = sum(len(u.items) for u in units)
    print(f"generate: {len(units)} shards ({n_items} structures), {len(units) - len(todo)} already done, "
          f"{len(todo)} to go -> {plan_cfg.out_dir}", flush=True)
    t0, cpu0 = time.perf_counter(), time.process_time()
    bar = tqdm(total=sum(len(u.items) for u in todo), unit="struct", desc="generate")
    reports = generate_units(plan_cfg, todo, lambda rep: bar.update(rep["written"] + len(rep["dropped"])),
                             use_ray=not local, num_cpus=num_cpus, ship_package=ship_package)
    bar.close()
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0  # this process only: meaningful for --local
    written = sum(r["written"] for r in reports)
    dropped = [k for r in reports for k in r["dropped"]]
    summary = write_summary(plan_cfg.out_dir)
    print(f"generate: wrote {written} structures in {len(reports)} shards in {wall:.1f} s "
          f"({written / wall if wall > 0 else 0:.2f} structures/s"
          + (f", {written / cpu if cpu > 0 else 0:.2f} per CPU-second" if local else "")
          + f"); dropped {len(dropped)} (min distance); "
          f"store holds {summary['n_structures']}: {summary['per_type']}", flush=True)
    return {"written": written, "dropped": dropped, "wall_s": wall, "cpu_s": cpu, "summary": summary,
            "shards": len(reports)}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = config_from_args(args)
        run(cfg, local=args.local, num_cpus=args.num_cpus, ship_package=args.ship_package)
    except ConfigError as exc:
        print(f"generate_dataset: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
