"""Dataset generation: a :class:`~pdfusion.config.GenerateConfig` grid -> deterministic shards of the store.

The grid (structure type x metal x radius x variant) is expanded into :class:`WorkUnit` s of at most
``shard_size`` structures; each unit is one shard with a deterministic name, so a unit is the unit of
parallelism (one Ray task), of atomicity (the store writes a shard atomically and only then lists it in
the manifest) and of resumption (a rerun skips units whose shard is listed *and* matches its checksum).
Every structure's randomness (its particle centre for variants >= 1, its augmentation) comes from its own
seed, derived from the global seed and the structure's grid key, so the data do not depend on the shard
size, the order in which tasks run, or on how often the job was interrupted.

Variant 0 of every grid point is the seed-oxides convention (particle centred on a metal atom); variants
>= 1 centre the sphere on a random point of the cell, which gives genuinely different particles. A
:class:`~pdfusion.config.VariantGenerateConfig` instead makes every structure an off-library variant
(:mod:`pdfusion.structures.variants`: shape, centre, vacancies, strain, displacements) drawn from its own seed,
recorded in the row's ``variant_params``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np

from pdfusion.config import AugmentConfig, ConfigError, GenerateConfig, PDFConfig, to_dict
from pdfusion.data.store import Manifest, StoreReader, StoreRecord, recover, write_shard
from pdfusion.io_utils import atomic_path, atomic_write
from pdfusion.pdf import r_grid, simulate_pdf
from pdfusion.structures.features import node_attributes
from pdfusion.structures.particle import Particle
from pdfusion.structures.particles import make_particle, min_radius
from pdfusion.structures.prototypes import PrototypeError, canonical_type, element_symbol
from pdfusion.structures.variants import make_variant, sample_variant

CONFIG_FILE = "generate_config.json"
SHARD_PREFIX = "gen"
PDF_BATCH = 16  # structures per simulate_pdf call (padded to the largest)


@dataclass(frozen=True)
class WorkItem:
    """One structure of the grid."""

    structure_type: str
    metal: str
    radius: float
    variant: int

    @property
    def key(self) -> str:
        return f"{self.structure_type}_{self.metal}_r{self.radius:g}_v{self.variant}"


@dataclass(frozen=True)
class WorkUnit:
    """One shard's worth of structures: ``index`` in the grid, deterministic ``shard_name``."""

    index: int
    shard_name: str
    items: tuple[WorkItem, ...]


# --------------------------------------------------------------------------------------------------
# config -> work units
# --------------------------------------------------------------------------------------------------
def config_hash(cfg: GenerateConfig) -> str:
    """Short hash of everything that changes the data (not the output folder; aliases normalised)."""
    d = to_dict(normalize_config(cfg))
    d.pop("out_dir", None)
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:8]


def normalize_config(cfg: GenerateConfig) -> GenerateConfig:
    """Canonical type names and element symbols, duplicates removed (order kept)."""
    types = tuple(dict.fromkeys(canonical_type(t) for t in cfg.types))
    metals = tuple(dict.fromkeys(element_symbol(m) for m in cfg.metals))
    radii = tuple(dict.fromkeys(float(r) for r in cfg.radii))
    return replace(cfg, types=types, metals=metals, radii=radii)


def validate_config(cfg: GenerateConfig, *, check_writable: bool = True) -> GenerateConfig:
    """Check the whole grid before any work starts; raise :class:`ConfigError` naming the field.

    Unknown structure types (``types``) or elements (``metals``); radii below the shortest metal-metal
    distance of a cell, i.e. a particle of a single coordination polyhedron (``radii``); an output folder
    that cannot be written (``out_dir``); a folder holding a different grid (``out_dir``).
    Returns the normalised config."""
    for t in cfg.types:
        try:
            canonical_type(t)
        except PrototypeError as exc:
            raise ConfigError(f"types: {exc}") from None
    for m in cfg.metals:
        try:
            if element_symbol(m) == "O":
                raise PrototypeError("oxygen is the anion of every prototype; choose a metal")
        except PrototypeError as exc:
            raise ConfigError(f"metals: {m!r}: {exc}") from None
    norm = normalize_config(cfg)
    for t, m in product(norm.types, norm.metals):
        try:
            need = min_radius(t, m)
        except PrototypeError as exc:
            raise ConfigError(f"metals: {m}: {exc}") from None
        small = [r for r in norm.radii if r < need]
        if small:
            raise ConfigError(
                f"radii: {small} Å is smaller than one metal-metal distance of {t} {m} ({need:.2f} Å), which "
                f"leaves a single coordination polyhedron; use radii >= {need:.2f} Å"
            )
    if not (0 < cfg.min_distance < 5):
        raise ConfigError(f"min_distance: must be in (0, 5) Å, got {cfg.min_distance}")
    if check_writable:
        _check_out_dir(norm)
    return norm


def _check_out_dir(cfg: GenerateConfig) -> None:
    out = Path(cfg.out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe.", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ConfigError(f"out_dir: cannot write to {str(out)!r} ({exc.strerror or exc}); choose a writable "
                          "folder") from None
    saved = out / CONFIG_FILE
    if saved.is_file():
        try:
            old = json.loads(saved.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"out_dir: {saved} is unreadable ({exc}); remove it or use another folder") from None
        if old.get("config_hash") != config_hash(cfg):
            raise ConfigError(
                f"out_dir: {str(out)!r} holds a dataset of a different grid (config hash {old.get('config_hash')} "
                f"!= {config_hash(cfg)}); use a new out_dir or the same settings to resume"
            )


def save_config(cfg: GenerateConfig) -> Path:
    """Record the grid next to the data (atomically); a later run must match it to resume."""
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    payload = {"config_hash": config_hash(cfg), "config": to_dict(cfg)}
    return atomic_write(out / CONFIG_FILE, json.dumps(payload, indent=2, sort_keys=True))


def expand_grid(cfg: GenerateConfig) -> list[WorkUnit]:
    """Deterministic work units: grid order type, metal, radius, variant; ``shard_size`` items each."""
    cfg = normalize_config(cfg)
    items = [WorkItem(t, m, r, v) for t, m, r, v in product(cfg.types, cfg.metals, cfg.radii, range(cfg.variants))]
    h = config_hash(cfg)
    units = []
    for i, start in enumerate(range(0, len(items), cfg.shard_size)):
        units.append(WorkUnit(i, f"{SHARD_PREFIX}-{h}-{i:05d}.h5", tuple(items[start:start + cfg.shard_size])))
    return units


def item_seed(cfg: GenerateConfig, item: WorkItem) -> np.random.SeedSequence:
    """Per-structure seed from the global seed and the structure's grid key (not its position)."""
    digest = hashlib.sha256(item.key.encode()).digest()
    return np.random.SeedSequence([int(cfg.seed), *np.frombuffer(digest[:16], dtype=np.uint32).tolist()])


# --------------------------------------------------------------------------------------------------
# one shard
# --------------------------------------------------------------------------------------------------
def _particle(cfg: GenerateConfig, item: WorkItem, rng: np.random.Generator) -> Particle | None:
    mix = getattr(cfg, "off_library", None)
    if mix is not None:
        try:
            return make_variant(sample_variant(item.structure_type, item.metal, item.radius, rng, mix),
                                min_distance=cfg.min_distance)
        except ValueError:  # a thin shape that holds no metal with a bonded oxygen: dropped like a close pair
            return None
    center = None if item.variant == 0 else tuple(rng.random(3))
    return make_particle(item.structure_type, item.metal, item.radius, center=center, min_distance=cfg.min_distance)


def _augmentation(aug: AugmentConfig, base: PDFConfig, rng: np.random.Generator) -> dict[str, float]:
    """Sampled per-structure augmentation (always all keys, so the metadata are uniform)."""
    def draw(rng_range, default):
        if rng_range is None:
            return float(default)
        lo, hi = rng_range
        return float(round(rng.uniform(lo, hi), 6)) if hi > lo else float(lo)

    return {
        "qdamp": draw(aug.qdamp_range, base.qdamp),
        "biso": draw(aug.biso_range, base.biso),
        "scale": draw(aug.scale_range, 1.0),
        "noise_std": float(aug.noise_std),
        "noise_seed": int(rng.integers(2**31 - 1)),
    }


def simulate_batch(particles: Sequence[Particle], cfg: PDFConfig) -> np.ndarray:
    """G(r) (B, n_r) float64 of several particles with one ``cfg``, batched and padded through
    ``pdfusion.pdf.simulate_pdf``; raises naming the structure if a value is not finite."""
    import torch

    order = np.argsort([len(p) for p in particles], kind="stable")
    result: list[np.ndarray | None] = [None] * len(particles)
    for start in range(0, len(order), PDF_BATCH):
        idx = order[start:start + PDF_BATCH]
        n = max(len(particles[i]) for i in idx)
        pos = torch.zeros(len(idx), n, 3, dtype=torch.float64)
        num = torch.full((len(idx), n), 8, dtype=torch.int64)
        mask = torch.zeros(len(idx), n, dtype=torch.bool)
        for b, i in enumerate(idx):
            p = particles[i]
            pos[b, : len(p)] = torch.from_numpy(p.positions)
            num[b, : len(p)] = torch.from_numpy(p.numbers)
            mask[b, : len(p)] = True
        with torch.no_grad():
            g = simulate_pdf(pos, num, mask, cfg).cpu().numpy()
        for b, i in enumerate(idx):
            if not np.all(np.isfinite(g[b])):
                raise FloatingPointError(f"simulate_pdf: non-finite G(r) for structure {particles[i].meta.get('id')}")
            result[i] = g[b]
    return np.stack(result) if result else np.zeros((0, cfg.n_r))


def build_records(cfg: GenerateConfig, unit: WorkUnit, progress: Callable[[int], None] | None = None):
    """Particles -> node features -> (augmented) PDFs for one unit. Returns (records, dropped keys)."""
    particles: list[Particle] = []
    augs: list[dict[str, float]] = []
    dropped: list[str] = []
    for item in unit.items:
        rng = np.random.default_rng(item_seed(cfg, item))
        p = _particle(cfg, item, rng)
        if p is None:
            dropped.append(item.key)
            continue
        p.meta.update(id=item.key, source=f"generated:{item.key}", variant=item.variant)
        particles.append(p)
        augs.append(_augmentation(cfg.augment, cfg.pdf, rng))
    pdfs: list[np.ndarray | None] = [None] * len(particles)
    groups: dict[tuple[float, float], list[int]] = {}
    for i, a in enumerate(augs):
        groups.setdefault((a["qdamp"], a["biso"]), []).append(i)
    for (qdamp, biso), idx in groups.items():
        pcfg = replace(cfg.pdf, qdamp=qdamp, biso=biso)
        g = simulate_batch([particles[i] for i in idx], pcfg)
        for k, i in enumerate(idx):
            pdfs[i] = g[k]
        if progress is not None:
            progress(len(idx))
    records = []
    for p, a, g in zip(particles, augs, pdfs, strict=True):
        g = g * a["scale"]
        if a["noise_std"] > 0:
            g = g + np.random.default_rng(a["noise_seed"]).normal(0.0, a["noise_std"], size=g.shape)
        meta = dict(p.meta)
        meta["augment"] = a
        meta["n_atoms"] = len(p)
        records.append(StoreRecord(p.numbers, p.positions, node_attributes(p.numbers, p.positions),
                                   g.astype(np.float32), meta))
    return records, dropped


def r_grid_array(cfg: GenerateConfig) -> np.ndarray:
    return r_grid(cfg.pdf).cpu().numpy().astype(np.float64)


def run_unit(cfg: GenerateConfig, unit: WorkUnit) -> dict[str, Any]:
    """Build and write one shard unless a verified copy is already listed. Returns a small report."""
    root = Path(cfg.out_dir)
    if Manifest.load_or_empty(root).has_shard(root, unit.shard_name, verify=True):
        return {"shard": unit.shard_name, "skipped": True, "written": 0, "dropped": []}
    records, dropped = build_records(cfg, unit)
    if records:
        write_shard(root, unit.shard_name, records, r_grid_array(cfg))
    return {"shard": unit.shard_name, "skipped": False, "written": len(records), "dropped": dropped}


def pending_units(cfg: GenerateConfig, units: Sequence[WorkUnit]) -> list[WorkUnit]:
    """Units whose shard is not yet listed with a matching checksum (a corrupt shard is redone)."""
    root = Path(cfg.out_dir)
    m = Manifest.load_or_empty(root)
    bad = set(m.verify(root)) if m.shards else set()
    listed = {s.name for s in m.shards} - bad
    return [u for u in units if u.shard_name not in listed]


def prepare(cfg: GenerateConfig) -> tuple[GenerateConfig, list[WorkUnit]]:
    """Validate, record the config, clean up after a killed run (store ``recover``), expand the grid."""
    cfg = validate_config(cfg)
    save_config(cfg)
    recover(cfg.out_dir)
    return cfg, expand_grid(cfg)


def _unit_task(cfg: GenerateConfig, unit: WorkUnit) -> dict[str, Any]:
    """One shard, as a Ray task or in-process; one thread (tasks run side by side, one per core)."""
    import torch

    torch.set_num_threads(1)
    return run_unit(cfg, unit)


def generate(cfg: GenerateConfig, progress: Callable[[dict[str, Any]], None] | None = None, *,
             use_ray: bool = False, num_cpus: int | None = None, ship_package: bool = False) -> list[dict[str, Any]]:
    """Generate the grid's pending shards (resumable: a rerun verifies and skips finished ones), in this process
    or with `use_ray` one Ray task per shard; `progress(report)` after each shard. Returns the shard reports."""
    cfg, units = prepare(cfg)
    return generate_units(cfg, pending_units(cfg, units), progress, use_ray=use_ray, num_cpus=num_cpus,
                          ship_package=ship_package)


def generate_units(cfg: GenerateConfig, todo: Sequence[WorkUnit],
                   progress: Callable[[dict[str, Any]], None] | None = None, *, use_ray: bool = False,
                   num_cpus: int | None = None, ship_package: bool = False) -> list[dict[str, Any]]:
    """`generate` for a config `prepare` already returned and its pending units (a caller that reports the plan
    first prepares once, not twice)."""
    if not use_ray or not todo:
        reports = []
        for unit in todo:
            reports.append(_unit_task(cfg, unit))
            if progress is not None:
                progress(reports[-1])
        return reports
    import ray

    if not ray.is_initialized():
        # With RAY_ADDRESS set (as under `ray job submit`) this connects to that cluster and the job's
        # runtime_env (e.g. --working-dir .) applies to the tasks; otherwise it starts a local cluster. The
        # tasks import the installed `pdfusion` package, or the copy shipped with `ship_package`.
        kwargs: dict = {"include_dashboard": False, "log_to_driver": False}
        if ship_package:
            import pdfusion

            kwargs["runtime_env"] = {"py_modules": [os.path.dirname(pdfusion.__file__)]}
        if not os.environ.get("RAY_ADDRESS"):
            # a fresh local cluster, even if another `ray start` cluster runs on this machine
            kwargs.update(address="local", num_cpus=num_cpus)
        ray.init(**kwargs)
    task = ray.remote(num_cpus=1, max_retries=2)(_unit_task)
    cfg_ref = ray.put(cfg)
    pending = {task.remote(cfg_ref, u): u for u in todo}
    reports = []
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            pending.pop(ref)
            reports.append(ray.get(ref))
            if progress is not None:
                progress(reports[-1])
    return reports


# --------------------------------------------------------------------------------------------------
# summary
# --------------------------------------------------------------------------------------------------
def summarize(root: str | Path) -> dict[str, Any]:
    """Counts per structure type / metal and the atom-count distribution of a store."""
    with StoreReader(root) as reader:
        meta = reader.metadata()
        sizes = np.asarray(reader.sizes())
    types = Counter(meta["structure_type"])
    metals = Counter(meta["metal"])
    return {
        "n_structures": len(sizes),
        "per_type": dict(sorted(types.items())),
        "per_metal": dict(sorted(metals.items())),
        "atoms": ({"min": int(sizes.min()), "median": float(np.median(sizes)), "max": int(sizes.max())}
                  if len(sizes) else {}),
        "sizes": sizes.tolist(),
    }


def write_summary(root: str | Path, json_path: str | Path | None = None,
                  png_path: str | Path | None = None) -> dict[str, Any]:
    """Write ``summary.json`` (counts per type) and ``atom_counts.png`` (histogram) into ``root``."""
    root = Path(root)
    s = summarize(root)
    json_path = Path(json_path) if json_path else root / "summary.json"
    png_path = Path(png_path) if png_path else root / "atom_counts.png"
    body = {k: v for k, v in s.items() if k != "sizes"}
    atomic_write(json_path, json.dumps(body, indent=2))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist(s["sizes"], bins=min(50, max(5, len(set(s["sizes"])))), color="tab:blue")
    ax.set_xlabel("atoms per particle")
    ax.set_ylabel("structures")
    ax.set_title(f"{s['n_structures']} structures, {len(s['per_type'])} types")
    fig.tight_layout()
    try:
        with atomic_path(png_path) as tmp:
            fig.savefig(tmp, dpi=100, format="png")
    finally:
        plt.close(fig)
    return body
