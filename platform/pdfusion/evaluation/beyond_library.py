"""The beyond-library benchmark: PDFs of particles no library of perfect spherical cuts holds.

Why: on the seed-oxides data a library lookup plus an expansion fit is nearly exact, because every seed
particle is a perfect spherical cut; a generative model earns its place on the particles a library lacks.
Targets are off-library variants (:mod:`pdfusion.structures.variants`: faceted or elongated, off-centre,
surface vacancies, relaxed, strained, thermal) at metals absent from the seed-oxides data
(:data:`~pdfusion.config.BEYOND_LIBRARY_METALS`), regenerated exactly from
:class:`~pdfusion.config.BeyondLibraryConfig`'s seed. The library holds, for the target's metal, the perfect
atom-centred spherical cut of every oxide prototype at every radius of ``library_radii``
(:func:`pdfusion.inference.library.build_library`): the composition is known, the shape is not.

Both methods are scored the same way on ``k`` candidates per target: *raw* best R_wp; *fitted*, each candidate
scaled by its best isotropic expansion (:func:`pdfusion.pdf.fitting.fit_expansion`), the lattice step of any
refinement; *refined*, the ``refine_top`` best fitted candidates refined on R_wp
(:func:`pdfusion.inference.refine.refine_ragged`); and the RMSD (:func:`pdfusion.evaluation.metrics.rmsd`)
to the true structure of the best candidate whose composition equals the truth's, where one does.
The library's candidates are its ``k`` nearest PDFs by raw R_wp
(:func:`~pdfusion.inference.lookup.nearest_library`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pdfusion.config import BEYOND_LIBRARY_METALS, BeyondLibraryConfig, PDFConfig, SampleConfig, to_dict
from pdfusion.data.store import MANIFEST, StoreReader
from pdfusion.diffusion import NonFiniteError
from pdfusion.evaluation import metrics
from pdfusion.evaluation.harness import Target, simulate_many
from pdfusion.inference.candidates import generate_candidates
from pdfusion.inference.lookup import nearest_library
from pdfusion.inference.refine import pad_structures, refine_ragged
from pdfusion.inference.sizing import library_fit_sizes, metal_library
from pdfusion.inference.topology import reshape_and_refine
from pdfusion.pdf import rwp
from pdfusion.pdf.fitting import fit_expansion
from pdfusion.structures.particle import Particle
from pdfusion.structures.prototypes import PROTOTYPES, canonical_type, element_symbol
from pdfusion.structures.variants import is_off_library, make_variant, sample_variant

__all__ = ["HELD_OUT_METALS", "build_targets", "library_for", "library_proposals", "model_proposals", "run_benchmark",
           "score_proposals", "summarise", "table", "training_overlap"]

HELD_OUT_METALS = BEYOND_LIBRARY_METALS
MAX_DRAWS = 50  # redraws of one target before giving up (a variant too large, or dropped for a close pair)

Proposals = list[list[Particle]]
SIZINGS = ("head", "library", "fit")


# --------------------------------------------------------------------------------------------------
# targets and library
# --------------------------------------------------------------------------------------------------
def _types(cfg: BeyondLibraryConfig) -> tuple[str, ...]:
    return tuple(canonical_type(t) for t in cfg.types) if cfg.types else tuple(PROTOTYPES)


def build_targets(cfg: BeyondLibraryConfig, pdf_cfg: PDFConfig = PDFConfig()) -> list[Target]:
    """The ``cfg.n_targets`` targets, each a pure function of (``cfg.seed``, its index): its true particle
    (``meta['variant_params']`` says how it was made) and its G(r) simulated with ``pdf_cfg``."""
    types, metals = _types(cfg), tuple(element_symbol(m) for m in cfg.metals)
    truths = []
    for i in range(cfg.n_targets):
        rng = np.random.default_rng([int(cfg.seed), i])
        metal, stype = metals[i % len(metals)], types[i % len(types)]
        for _ in range(MAX_DRAWS):
            radius = float(rng.uniform(*cfg.radius_range))
            vc = sample_variant(stype, metal, radius, rng, cfg.mix)
            if not is_off_library(vc):
                continue
            try:
                p = make_variant(vc)
            except ValueError:
                continue
            if p is not None and len(p) <= cfg.max_atoms:
                break
        else:
            raise RuntimeError(f"target {i}: no off-library {stype} {metal} variant within {cfg.max_atoms} atoms "
                               f"in {MAX_DRAWS} draws; raise max_atoms or lower radius_range")
        p.meta.update(id=f"beyond_{cfg.seed}_{i:03d}_{stype}_{metal}", source=f"beyond-library:{cfg.seed}:{i}")
        truths.append(p)
    pdfs = simulate_many(truths, pdf_cfg)
    return [Target(i, pdfs[i], p, dict(p.meta)) for i, p in enumerate(truths)]


def library_for(metal: str, cfg: BeyondLibraryConfig, pdf_cfg: PDFConfig = PDFConfig()
                ) -> tuple[list[Particle], np.ndarray]:
    """Perfect atom-centred spherical cuts of every oxide prototype of ``metal`` (one per distinct size)
    across ``cfg.library_radii``, and their G(r)."""
    lib, g = metal_library(metal, pdf_cfg, tuple(cfg.library_radii), 4 * cfg.max_atoms)
    return list(lib), g


def library_proposals(targets: Sequence[Target], cfg: BeyondLibraryConfig, pdf_cfg: PDFConfig = PDFConfig(),
                      libraries: dict[str, tuple[list[Particle], np.ndarray]] | None = None) -> Proposals:
    """For each target, the ``cfg.k`` library entries of its metal whose PDFs are nearest by raw R_wp."""
    libraries = {} if libraries is None else libraries
    out = []
    for t in targets:
        metal = element_symbol(t.metal)
        if metal not in libraries:
            libraries[metal] = library_for(metal, cfg, pdf_cfg)
        lib, pdfs = libraries[metal]
        idx = nearest_library(t.pdf[None], pdfs, cfg.k)[0]
        out.append([lib[j] for j in idx])
    return out


def model_proposals(bundle, targets: Sequence[Target], cfg: BeyondLibraryConfig,
                    sample_cfg: SampleConfig | None = None,
                    sizes: Sequence[Sequence[int]] | None = None) -> tuple[Proposals, list[int]]:
    """``cfg.k`` samples of a trained model per target (one target per sampler call), at the count head's atom
    counts or, with ``sizes``, at each target's given ones; non-finite runs give no candidates and count ``k``
    NaNs. Returns (proposals, NaN count per target)."""
    base = sample_cfg or bundle.sample_config()
    out, nans = [], []
    for i, t in enumerate(targets):
        scfg = replace(base, n_samples=cfg.k, seed=base.seed + t.index, refine=False)
        try:
            cands = generate_candidates(bundle, t.pdf[None].astype(np.float32), [t.metal], scfg,
                                        sizes=None if sizes is None else [list(sizes[i])])[0]
        except NonFiniteError:
            out.append([])
            nans.append(cfg.k)
            continue
        out.append([Particle(c.numbers, c.positions, {"rwp": c.rwp}) for c in cands])
        nans.append(cfg.k - len(cands))
    return out, nans


# --------------------------------------------------------------------------------------------------
# scoring
# --------------------------------------------------------------------------------------------------
def score_proposals(target: Target, cands: Sequence[Particle], cfg: BeyondLibraryConfig,
                    pdf_cfg: PDFConfig = PDFConfig(), nan_count: int = 0) -> dict[str, Any]:
    """Raw, fitted and refined best-of-k R_wp, validity and composition-matched RMSD of one target's candidates."""
    row: dict[str, Any] = {"index": target.index, "id": target.meta.get("id"),
                           "structure_type": target.meta.get("structure_type"), "metal": target.meta.get("metal"),
                           "shape": target.meta["variant_params"]["shape"],
                           "n_atoms_true": len(target.truth), "n_candidates": len(cands), "nan_count": int(nan_count)}
    if not cands:
        row.update({k: math.nan for k in ("rwp_raw", "rwp_fitted", "rwp_refined", "rmsd", "valid_fraction")})
        row["composition_match"] = 0.0
        return row
    t0 = time.perf_counter()
    tgt = torch.as_tensor(target.pdf, dtype=torch.float64)
    g = torch.as_tensor(simulate_many(cands, pdf_cfg))
    raw = rwp(g, tgt[None].expand_as(g)).numpy()
    pos, num, mask = (torch.as_tensor(a) for a in pad_structures([c.positions for c in cands],
                                                                 [c.numbers for c in cands]))
    coarse, fine = cfg.expansion_grid
    fit = fit_expansion(pos, num, mask, tgt[None].expand(len(cands), -1), pdf_cfg, lo=cfg.expansion[0],
                        hi=cfg.expansion[1], coarse=coarse, fine=fine)
    fitted = fit.rwp.numpy()
    fitted_pos = [fit.positions[i, : len(c)].numpy() for i, c in enumerate(cands)]
    best_pos = list(fitted_pos)
    final = fitted.copy()
    top = np.argsort(fitted, kind="stable")[: cfg.refine_top]
    if cfg.refine_steps > 0 and top.size:
        res = refine_ragged([fitted_pos[i] for i in top], [cands[i].numbers for i in top], target.pdf, pdf_cfg,
                            steps=cfg.refine_steps)
        for j, i in enumerate(top):
            final[i] = min(fitted[i], float(res.rwp_after[j]))
            if res.rwp_after[j] <= fitted[i]:
                best_pos[i] = res.positions[j, : len(cands[i])]
    best_num = [c.numbers for c in cands]
    pruned = 0
    if (cfg.prune_atoms or cfg.grow_atoms) and cfg.refine_steps > 0 and top.size:
        shaped = reshape_and_refine([best_pos[i] for i in top], [best_num[i] for i in top], final[top], target.pdf,
                                    pdf_cfg, cfg.refine_steps, prune=cfg.prune_atoms, grow=cfg.grow_atoms)
        for j, i in enumerate(top):
            if shaped.changed[j]:
                final[i], best_pos[i], best_num[i] = shaped.rwp[j], shaped.positions[j], shaped.numbers[j]
                pruned += len(cands[i]) - len(best_num[i])  # net: negative when growth added atoms
    truth = np.sort(target.truth.numbers)
    match = [i for i in range(len(cands)) if np.array_equal(np.sort(best_num[i]), truth)]
    rmsd = math.nan
    if match:
        i = min(match, key=lambda j: final[j])
        rmsd = metrics.rmsd(Particle(best_num[i], best_pos[i]), target.truth)
    row.update({
        "rwp_raw": float(raw.min()), "rwp_fitted": float(fitted.min()),
        "rwp_refined": float(final[top].min()) if top.size and cfg.refine_steps > 0 else float(fitted.min()),
        "expansion_best": float(fit.factor[int(np.argmin(fitted))]),
        "valid_fraction": float(np.mean([metrics.validity(c.positions).valid for c in cands])),
        "composition_match": float(len(match) / len(cands)), "rmsd": float(rmsd), "atoms_pruned": int(pruned),
        "n_atoms_best": int(len(best_num[int(np.argmin(final))])),
        "score_s": time.perf_counter() - t0,
    })
    return row


def save_proposals(path: str | Path, cands: Sequence[Particle]) -> None:
    """One target's candidates as an npz of padded arrays (positions, numbers, mask), written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if cands:
        pos, num, mask = pad_structures([c.positions for c in cands], [c.numbers for c in cands])
    else:
        pos, num, mask = np.zeros((0, 0, 3)), np.zeros((0, 0), np.int64), np.zeros((0, 0), bool)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        np.savez(fh, positions=pos, numbers=num, mask=mask)
    tmp.replace(path)


def load_proposals(path: str | Path) -> list[Particle]:
    """The candidates :func:`save_proposals` wrote, as particles (no pickles)."""
    with np.load(path, allow_pickle=False) as z:
        pos, num, mask = z["positions"], z["numbers"], z["mask"]
    return [Particle(num[i][mask[i]], pos[i][mask[i]]) for i in range(len(num))]


def _finite(rows: Sequence[dict[str, Any]], key: str) -> np.ndarray:
    a = np.asarray([r.get(key, math.nan) for r in rows], dtype=np.float64)
    return a[np.isfinite(a)]


def summarise(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """One table row: medians over targets (finite values), NaN total, RMSD coverage."""
    out: dict[str, float] = {"n_targets": len(rows), "nan_total": int(sum(r["nan_count"] for r in rows))}
    for key in ("rwp_raw", "rwp_fitted", "rwp_refined", "valid_fraction"):
        v = _finite(rows, key)
        out[f"{key}_median"] = float(np.median(v)) if v.size else math.nan
    rm = _finite(rows, "rmsd")
    out["rmsd_median"] = float(np.median(rm)) if rm.size else math.nan
    out["rmsd_defined"] = int(rm.size)
    return out


def head_to_head(a: Sequence[dict[str, Any]], b: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Fraction of targets where ``a`` beats ``b`` (strictly lower R_wp), per stage; a NaN loses."""
    out = {}
    for key in ("rwp_raw", "rwp_fitted", "rwp_refined"):
        x = np.asarray([r.get(key, math.nan) for r in a], dtype=np.float64)
        y = np.asarray([r.get(key, math.nan) for r in b], dtype=np.float64)
        out[f"frac_{key}_beats"] = float(np.mean(np.nan_to_num(x, nan=np.inf) < np.nan_to_num(y, nan=np.inf)))
    return out


# --------------------------------------------------------------------------------------------------
# the whole benchmark
# --------------------------------------------------------------------------------------------------
def run_benchmark(cfg: BeyondLibraryConfig = BeyondLibraryConfig(), *, bundle=None,
                  sample_cfg: SampleConfig | None = None, model_targets: int | None = None, library: bool = True,
                  sizes: str = "head", size_scale: float = 1.0, model_start: int = 0,
                  save_candidates: str | Path | None = None,
                  progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Targets, the library side (unless ``library=False``) and, with ``bundle``, the model side on the first
    ``model_targets`` targets from ``model_start`` (default all), sized by its count head (``sizes="head"``), at
    the atom counts of each target's ``k`` nearest library entries (``"library"``), or at those of the best
    expansion-fitted of them times ``size_scale`` (``"fit"``, :func:`pdfusion.inference.sizing.library_fit_sizes`,
    the product's ``SampleConfig.sizing``). The PDF settings are the
    bundle's, else the seed-oxides defaults. With ``save_candidates`` (a folder) each target's unscored candidates
    go there (:func:`save_proposals`), so later stages can be compared on the same samples without sampling
    again."""
    pdf_cfg = bundle.pdf_config if bundle is not None else PDFConfig()
    say = progress or (lambda _msg: None)
    t0 = time.perf_counter()
    targets = build_targets(cfg, pdf_cfg)
    say(f"beyond-library: {len(targets)} targets in {time.perf_counter() - t0:.1f} s")
    report: dict[str, Any] = {"config": to_dict(cfg), "pdf": to_dict(pdf_cfg), "n_targets": len(targets),
                              "targets": [{"id": t.meta["id"], "n_atoms": len(t.truth),
                                           "variant_params": t.meta["variant_params"]}
                                          for t in targets]}
    if sizes not in SIZINGS:
        raise ValueError(f"sizes: expected one of {SIZINGS}, got {sizes!r}")
    lib_props = library_proposals(targets, cfg, pdf_cfg) if library or sizes == "library" else None
    if library:
        t1 = time.perf_counter()
        rows = []
        for t, props in zip(targets, lib_props, strict=True):
            if save_candidates is not None:
                save_proposals(Path(save_candidates) / f"library_{t.index:03d}.npz", props)
            rows.append(score_proposals(t, props, cfg, pdf_cfg))
            say(f"library {t.index}: {t.meta['id']} raw {rows[-1]['rwp_raw']:.3f} fitted {rows[-1]['rwp_fitted']:.3f} "
                f"refined {rows[-1]['rwp_refined']:.3f}")
        report["library"] = {"rows": rows, "summary": summarise(rows), "wall_s": time.perf_counter() - t1}
    if bundle is not None:
        t1 = time.perf_counter()
        sub = targets[model_start: model_start + (model_targets or len(targets))]
        rows = []
        for t in sub:  # one target at a time, so a long run reports as it goes
            counts = None
            if sizes == "library":
                counts = [[len(p) for p in lib_props[t.index]]]
            elif sizes == "fit":
                lib, lib_g = library_for(element_symbol(t.metal), cfg, pdf_cfg)  # cached: metal_library
                counts = [library_fit_sizes(t.pdf, lib, lib_g, pdf_cfg, cfg.k, scale=size_scale,
                                            max_atoms=bundle.diffusion.model_cfg.max_atoms)]
            props, nans = model_proposals(bundle, [t], cfg, sample_cfg, counts)
            if save_candidates is not None:
                save_proposals(Path(save_candidates) / f"model_{t.index:03d}.npz", props[0])
            rows.append(score_proposals(t, props[0], cfg, pdf_cfg, nans[0]))
            say(f"model {t.index}: {t.meta['id']} raw {rows[-1]['rwp_raw']:.3f} fitted {rows[-1]['rwp_fitted']:.3f} "
                f"refined {rows[-1]['rwp_refined']:.3f} valid {rows[-1]['valid_fraction']:.2f}")
        report["model"] = {"rows": rows, "summary": summarise(rows), "wall_s": time.perf_counter() - t1,
                           "sample": to_dict(sample_cfg) if sample_cfg else None,
                           "sizes": {"head": "count head", "library": "library",
                                     "fit": f"library fit x {size_scale:g}"}[sizes]}
        if library:
            lib_rows = report["library"]["rows"][model_start: model_start + len(sub)]
            report["model"]["vs_library"] = head_to_head(rows, lib_rows)
            report["model"]["library_on_same_targets"] = summarise(lib_rows)
    return report


def table(report: dict[str, Any]) -> str:
    """Markdown table of the report: one row per method."""
    head = ("| method | targets | median best-of-k R_wp raw | fitted | refined | RMSD Å (n) | valid | NaN | "
            "refined beats library |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    lines = [head]
    for name in ("library", "model"):
        if name not in report:
            continue
        s = report[name]["summary"]
        vs = report[name].get("vs_library", {}).get("frac_rwp_refined_beats")
        rm = f"{s['rmsd_median']:.3f} ({s['rmsd_defined']})" if s["rmsd_defined"] else "- (0)"
        lines.append(f"| {name} | {s['n_targets']} | {s['rwp_raw_median']:.4f} | {s['rwp_fitted_median']:.4f} | "
                     f"{s['rwp_refined_median']:.4f} | {rm} | {s['valid_fraction_median']:.2f} | {s['nan_total']} | "
                     f"{'-' if vs is None else f'{vs:.0%}'} |")
        if name == "model" and "library_on_same_targets" in report["model"]:
            s = report["model"]["library_on_same_targets"]
            lines.append(f"| library, same targets | {s['n_targets']} | {s['rwp_raw_median']:.4f} | "
                         f"{s['rwp_fitted_median']:.4f} | {s['rwp_refined_median']:.4f} | - | "
                         f"{s['valid_fraction_median']:.2f} | - | - |")
    return "\n".join(lines)


def training_overlap(data_path: str | Path, metals: Sequence[str] = HELD_OUT_METALS) -> list[str]:
    """Which of ``metals`` occur in a training store or seed-oxides folder (should be none)."""
    import re

    from pymatgen.core import Composition

    p = Path(data_path)
    if (p / MANIFEST).is_file():
        with StoreReader(p) as reader:
            present = set(reader.metadata()["metal"])
    else:
        present = set()
        for f in p.rglob("*.h5"):
            m = re.match(r"(?:graph_)?[A-Za-z0-9]+?_([A-Za-z0-9]+?)(?:_r\d+)?\.h5$", f.name)
            if m:
                present |= {e.symbol for e in Composition(m.group(1)).elements if e.symbol != "O"}
    return sorted(set(metals) & present)
