"""`solve`: the automated answer to "what is this particle?" for one measured PDF.

1. library: every candidate the composition allows (:func:`pdfusion.inference.library.build_library`),
   plus any ``extra`` particles (a trained model's samples, structure_type "generated");
2. screen: each scored on the data's r grid with scale, expansion and Uiso fitted, ranked by Rw
   (:func:`pdfusion.inference.screen.screen`; Ray tasks for large libraries);
3. refine: the best ``top`` (at most ``per_type`` of one structure type, so rivals appear) and the best
   ``top`` generated ones, by the measured-data least squares of ``pdfusion.pdf.refine.fit_particle``
   (free scale, expansion, Uiso, delta2; Qdamp fixed unless asked), or by the screening model's own local
   fit when that module is absent;
4. rank by refined Rw (PDFgui's, over the fit window).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from pdfusion.config import ScreenConfig, SolveConfig
from pdfusion.inference.library import build_library, parse_composition
from pdfusion.inference.screen import (
    ScreenScore,
    ScreenTarget,
    local_fit,
    prepare_target,
    rescore,
    screen,
)
from pdfusion.pdf.refine import FitResult, fit_particle
from pdfusion.structures.particle import Particle

__all__ = ["DEFAULT_QMIN", "DEFAULT_QMAX", "SolveConfig", "SolveResult", "SolvedCandidate", "REFINE_BACKEND",
           "screen_config", "solve"]

DEFAULT_QMIN = 1.0  # used when neither the caller nor the file header gives Qmin / Qmax
DEFAULT_QMAX = 25.0


def screen_config(cfg: SolveConfig, meta: dict[str, Any] | None = None) -> ScreenConfig:
    """The screening options of ``cfg``, with Qmin / Qmax resolved against the file header ``meta``."""
    qmin, qmax = resolve_q(cfg, meta)
    return ScreenConfig(rmin=cfg.rmin, rmax=cfg.rmax, rmax_cap=cfg.rmax_cap, qmin=qmin, qmax=qmax,
                        qdamp=cfg.qdamp, uiso=tuple(cfg.uiso), expansion=tuple(cfg.expansion))


def _meta_float(meta: dict[str, Any] | None, *keys: str) -> float | None:
    for k in keys:
        v = (meta or {}).get(k)
        if v is None:
            continue
        try:
            f = float(v)
        except (TypeError, ValueError):
            continue
        if math.isfinite(f):
            return f
    return None


def resolve_q(cfg: SolveConfig, meta: dict[str, Any] | None) -> tuple[float, float]:
    """(qmin, qmax): the caller's, else the file header's ('qmin', 'qmax'), else the defaults."""
    qmin = cfg.qmin if cfg.qmin is not None else _meta_float(meta, "qmin", "Qmin")
    qmax = cfg.qmax if cfg.qmax is not None else _meta_float(meta, "qmax", "Qmax")
    return (DEFAULT_QMIN if qmin is None else qmin), (DEFAULT_QMAX if qmax is None else qmax)


@dataclass
class SolvedCandidate:
    """One ranked, refined candidate."""

    rank: int
    structure_type: str
    family: str
    label: str
    n_atoms: int
    diameter: float  # Å, of the refined (expanded) particle
    rw: float
    params: dict[str, float]
    uncertainties: dict[str, float]
    screen: dict[str, float]
    lattice_params: dict[str, float]  # refined: the prototype's x expansion
    structure: Particle
    r: np.ndarray
    gobs: np.ndarray
    gcalc: np.ndarray
    method: str
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def gdiff(self) -> np.ndarray:
        return self.gobs - self.gcalc

    def to_dict(self) -> dict[str, Any]:
        return {
            "rank": self.rank, "structure_type": self.structure_type, "family": self.family, "label": self.label,
            "rw": self.rw, "n_atoms": self.n_atoms, "diameter": self.diameter, "lattice_params": self.lattice_params,
            "params": self.params, "uncertainties": self.uncertainties, "screen": self.screen,
            "refine_method": self.method, **{k: v for k, v in self.meta.items() if k not in ("label",)},
        }


@dataclass
class SolveResult:
    composition: str
    candidates: list[SolvedCandidate]
    screening: list[dict[str, Any]]  # every library candidate's screening score, best first
    config: dict[str, Any]
    window: dict[str, float]
    timings: dict[str, float]
    data_meta: dict[str, Any] = field(default_factory=dict)

    @property
    def best(self) -> SolvedCandidate:
        return self.candidates[0]

    def to_dict(self) -> dict[str, Any]:
        return _jsonable({
            "composition": self.composition, "window": self.window, "config": self.config,
            "timings_s": self.timings, "data_meta": self.data_meta,
            "n_library": len(self.screening),
            "candidates": [c.to_dict() for c in self.candidates],
            "screening": self.screening,
        })


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (np.floating, np.integer)):
        x = x.item()
    if isinstance(x, float):
        return x if math.isfinite(x) else None  # strict JSON: NaN / inf become null
    if isinstance(x, (str, int, bool)) or x is None:
        return x
    return str(x)


# --------------------------------------------------------------------------------------------------
# refinement back ends
# --------------------------------------------------------------------------------------------------
REFINE_BACKEND = "pdf.refine"  # what refines the screen's best candidates (reported in SolveResult.config)


def _refine_pdf(particle: Particle, score: ScreenScore, target: ScreenTarget, r: np.ndarray, g: np.ndarray,
                cfg: SolveConfig) -> FitResult:
    """pdf.refine.fit_particle from the screening optimum (its expansion bound contains the screen's range)."""
    import warnings

    free = ["scale", "expansion", "uiso", "delta2"] + (["qdamp"] if cfg.refine_qdamp else [])
    init = {"scale": score.scale, "expansion": score.expansion, "uiso": score.uiso, "delta2": score.delta2}
    sc = target.cfg
    with warnings.catch_warnings(record=True) as caught:  # kept in the report instead of printed
        warnings.simplefilter("always")
        fit = fit_particle(particle, r, g, free=tuple(free), init=init, qmin=sc.qmin, qmax=sc.qmax, qdamp=sc.qdamp,
                           qbroad=cfg.qbroad, rmin=sc.rmin, rmax=target.rmax)
    notes = list(fit.warnings) + [str(w.message) for w in caught]
    fit.warnings = sorted({n for n in notes if "torch.jit" not in n})  # not a torch deprecation notice
    fit.meta["method"] = "pdf.refine"
    return fit


def _per_element(values: dict[str, float], particle: Particle) -> dict[str, float]:
    """One 'uiso' for all atoms written as 'uiso_<El>' per element, the names pdf.refine reports."""
    if "uiso" not in values:
        return dict(values)
    from pymatgen.core import Element

    out = {k: v for k, v in values.items() if k != "uiso"}
    for z in np.unique(particle.numbers):
        out[f"uiso_{Element.from_Z(int(z)).symbol}"] = values["uiso"]
    return out


def _refine_local(particle: Particle, score: ScreenScore, target: ScreenTarget) -> FitResult:
    fit = local_fit(particle, target, score)
    fit.params = _per_element(fit.params, particle)
    fit.uncertainties = _per_element(fit.uncertainties, particle)
    return fit


def _pick(scores: Sequence[ScreenScore], candidates: Sequence[Particle], cfg: SolveConfig) -> list[ScreenScore]:
    """Best `top` library candidates with at most `per_type` per structure type, plus the best `top` generated."""
    picked, per_type, n_gen = [], {}, 0
    for s in scores:
        meta = candidates[s.index].meta
        if meta.get("family") == "generated":
            if n_gen < cfg.top:
                picked.append(s)
                n_gen += 1
            continue
        st = meta.get("structure_type", "?")
        if sum(1 for p in picked if candidates[p.index].meta.get("family") != "generated") >= cfg.top:
            continue
        if per_type.get(st, 0) >= cfg.per_type:
            continue
        per_type[st] = per_type.get(st, 0) + 1
        picked.append(s)
    return picked


def _extend_sizes(cands: list[Particle], scores: list[ScreenScore], comp, cfg: SolveConfig, target: ScreenTarget,
                  progress: bool, log: Callable[[str], None] | None) -> list[ScreenScore]:
    """While the best particle of one of the (up to three) leading structure types -- those screened within the
    refinement margin of the best -- is also its largest, add that type
    at two larger radii (steps of the library's top radius spacing, at least 2 Å) and screen them; up to
    ``cfg.max_radius``. The size of a nanoparticle sets how fast its PDF dies out, so the library's edge must
    not decide it. Appends to ``cands``; returns all scores, best first."""
    radii = sorted(cfg.radii)
    step = max(2.0, radii[-1] - radii[-2]) if len(radii) > 1 else 2.5
    labels = {p.meta.get("label") for p in cands}
    for _ in range(4):
        leaders: list[str] = []
        limit = max(scores[0].rw * (1 + cfg.refine_margin), scores[0].rw + 0.05)
        for sc in scores:
            m = cands[sc.index].meta
            if sc.rw > limit or len(leaders) == 3:
                break
            if m.get("family") in ("oxide", "metal") and m["structure_type"] not in leaders:
                leaders.append(m["structure_type"])
        new: list[Particle] = []
        for st in leaders:
            members = [sc for sc in scores if cands[sc.index].meta.get("structure_type") == st
                       and cands[sc.index].meta.get("family") in ("oxide", "metal")]
            best = members[0]
            largest = max(members, key=lambda sc: len(cands[sc.index]))
            if best.index != largest.index:
                continue
            meta = cands[best.index].meta
            r_top = float(meta.get("cut_radius", meta.get("radius", radii[-1])))
            more = [r for r in (r_top + step, r_top + 2 * step) if r <= cfg.max_radius + 1e-9]
            if not more:
                continue
            fam = meta["family"]
            try:
                lib = build_library(comp, more, families=(fam,), oxide_types=(st,) if fam == "oxide" else None,
                                    cluster_types=(st,) if fam == "metal" else None,
                                    max_atoms=cfg.max_atoms_extended)
            except ValueError:  # nothing new within max_atoms_extended
                continue
            for p in lib:
                if p.meta["label"] not in labels and len(p) > len(cands[largest.index]):
                    labels.add(p.meta["label"])
                    new.append(p)
        if not new:
            break
        if log:
            log(f"size edge: screening {len(new)} larger particles of "
                f"{sorted({p.meta['structure_type'] for p in new})}")
        start = len(cands)
        cands.extend(new)
        extra = screen(new, target, use_ray=False, progress=progress)
        scores = sorted(scores + [ScreenScore(sc.index + start, sc.rw, sc.scale, sc.expansion, sc.uiso, sc.n_atoms)
                                  for sc in extra], key=lambda sc: (sc.rw, sc.index))
    return scores


def _lattice(meta: dict[str, Any], expansion: float) -> dict[str, float]:
    lat = meta.get("lattice_params") or {}
    out = {}
    for k in ("a", "b", "c"):
        if k in lat:
            out[k] = round(float(lat[k]) * expansion, 5)
    return out


def solve(r: np.ndarray, g: np.ndarray, composition: str, cfg: SolveConfig = SolveConfig(), *,
          meta: dict[str, Any] | None = None, extra: Sequence[Particle] = (), progress: bool = True,
          log: Callable[[str], None] | None = None) -> SolveResult:
    """Rank candidate structures for the measured G(r) (``r``, ``g``) of a ``composition`` particle.

    ``meta``: the file header (Qmin / Qmax are read from it unless ``cfg`` sets them). ``extra``:
    further candidates (e.g. a model's samples; their meta 'structure_type' defaults to "generated").
    Raises ValueError for a bad composition, window or empty library."""
    t0 = time.perf_counter()
    comp = parse_composition(composition)
    scfg = screen_config(cfg, meta)
    target = prepare_target(r, g, scfg)
    library = build_library(comp, cfg.radii, families=cfg.families, oxide_types=cfg.oxide_types,
                            cluster_types=cfg.cluster_types, max_atoms=cfg.max_atoms)
    cands = list(library)
    for k, p in enumerate(extra):
        m = dict(p.meta)
        m.setdefault("structure_type", "generated")
        m["family"] = "generated"
        m.setdefault("label", f"generated_{k:03d}_{len(p)}")
        m["n_atoms"] = len(p)
        pos = p.positions - p.positions.mean(0)
        m.setdefault("diameter", round(2 * float(np.linalg.norm(pos, axis=1).max()), 4))
        cands.append(Particle(p.numbers, pos, m))
    t1 = time.perf_counter()
    if log:
        log(f"{len(library)} library candidates ({comp.formula}) + {len(extra)} generated; window "
            f"{target.r[0]:g}-{target.rmax:g} Å, Qmin {scfg.qmin:g}, Qmax {scfg.qmax:g}, Qdamp {scfg.qdamp:g}")
    scores = screen(cands, target, use_ray=cfg.use_ray, num_cpus=cfg.num_cpus, progress=progress)
    if cfg.extend_sizes:
        scores = _extend_sizes(cands, scores, comp, cfg, target, progress, log)
    if cfg.rescore > 0:
        head = [rescore(cands[sc.index], target, sc) for sc in scores[: cfg.rescore]]
        scores = sorted(head + scores[cfg.rescore:], key=lambda sc: (sc.rw, sc.index))
    t2 = time.perf_counter()
    picked = _pick(scores, cands, cfg)
    backend = REFINE_BACKEND if cfg.refine else "none"
    solved: list[SolvedCandidate] = []
    r_all, g_all = np.asarray(r, dtype=np.float64), np.asarray(g, dtype=np.float64)
    from tqdm.auto import tqdm

    best_rw = scores[0].rw
    full_limit = max(best_rw * (1 + cfg.refine_margin), best_rw + 0.05)
    for s in tqdm(picked, desc=f"refine ({backend})", disable=not progress, unit="cand"):
        p = cands[s.index]
        t_fit = time.perf_counter()
        fit = None
        if backend == "pdf.refine" and s.rw <= full_limit:
            try:
                fit = _refine_pdf(p, s, target, r_all, g_all, cfg)
            except ValueError as exc:  # e.g. a generated candidate with atoms closer than the model allows
                fit = _refine_local(p, s, target)
                fit.warnings.append(f"pdf.refine refused this candidate ({exc}); screening-model fit instead")
        if fit is None:  # refinement off, pdf.refine absent, or far behind the leader: the screening model's fit
            fit = _refine_local(p, s, target)
        params = dict(fit.params)
        structure = fit.structure if isinstance(fit.structure, Particle) else \
            Particle(p.numbers, p.positions * params.get("expansion", 1.0), dict(p.meta))
        expansion = float(params.get("expansion", s.expansion))
        pos = structure.positions - structure.positions.mean(0)
        extra_meta = {k: p.meta[k] for k in ("stoichiometry_mismatch", "radius", "shells", "p", "q", "r", "length",
                                             "cutoff", "formula", "note", "source", "model_rwp") if k in p.meta}
        if fit.warnings:
            extra_meta["fit_warnings"] = fit.warnings
        extra_meta["fit_seconds"] = round(time.perf_counter() - t_fit, 2)
        if fit.nfev:
            extra_meta["nfev"] = fit.nfev
        method = fit.meta["method"]
        solved.append(SolvedCandidate(
            rank=0, structure_type=str(p.meta.get("structure_type", "?")), family=str(p.meta.get("family", "?")),
            label=str(p.meta.get("label", f"candidate_{s.index}")), n_atoms=len(p),
            diameter=round(2 * float(np.linalg.norm(pos, axis=1).max()), 3), rw=float(fit.rw),
            params=params, uncertainties=dict(fit.uncertainties), screen=s.to_dict(),
            lattice_params=_lattice(p.meta, expansion),
            structure=Particle(structure.numbers, pos, {**p.meta, "expansion": expansion}),
            r=np.asarray(fit.r, dtype=np.float64), gobs=np.asarray(fit.gobs, dtype=np.float64),
            gcalc=np.asarray(fit.gcalc, dtype=np.float64), method=method, meta=extra_meta,
        ))
    solved.sort(key=lambda c: c.rw)
    for i, c in enumerate(solved, start=1):
        c.rank = i
    t3 = time.perf_counter()
    screening = [{"label": cands[s.index].meta.get("label"),
                  "structure_type": cands[s.index].meta.get("structure_type"),
                  "family": cands[s.index].meta.get("family"), "n_atoms": s.n_atoms,
                  "diameter": cands[s.index].meta.get("diameter"), **s.to_dict()} for s in scores]
    cfg_dict = _jsonable(asdict(cfg))
    cfg_dict.update(qmin=scfg.qmin, qmax=scfg.qmax, refine_backend=backend)
    return SolveResult(
        composition=comp.formula, candidates=solved, screening=screening, config=cfg_dict,
        window={"rmin": float(target.r[0]), "rmax": float(target.rmax), "n_points": int(target.r.size)},
        timings={"library": round(t1 - t0, 3), "screen": round(t2 - t1, 3), "refine": round(t3 - t2, 3),
                 "total": round(t3 - t0, 3)},
        data_meta=dict(meta or {}),
    )
