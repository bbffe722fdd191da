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

from pdfusion.inference.library import DEFAULT_RADII, build_library, parse_composition
from pdfusion.inference.screen import (
    ScreenConfig,
    ScreenScore,
    ScreenTarget,
    local_fit,
    prepare_target,
    screen,
)
from pdfusion.structures.particle import Particle

__all__ = ["DEFAULT_QMIN", "DEFAULT_QMAX", "SolveConfig", "SolveResult", "SolvedCandidate", "refine_backend", "solve"]

DEFAULT_QMIN = 1.0  # used when neither the caller nor the file header gives Qmin / Qmax
DEFAULT_QMAX = 25.0


@dataclass(frozen=True)
class SolveConfig:
    """Options of :func:`solve` (a frozen dataclass local to inference; config.py is not extended).

    ``qmin`` / ``qmax`` None: from the file header (``meta``), else the defaults above. ``refine_qdamp``
    frees Qdamp in the refinement (default fixed at ``qdamp``, the instrument's value)."""

    top: int = 5
    per_type: int = 2
    radii: tuple[float, ...] = DEFAULT_RADII
    families: tuple[str, ...] | None = None
    oxide_types: tuple[str, ...] | None = None
    cluster_types: tuple[str, ...] | None = None
    max_atoms: int = 6000
    rmin: float = 1.5
    rmax: float | None = None
    rmax_cap: float = 30.0
    qmin: float | None = None
    qmax: float | None = None
    qdamp: float = 0.04
    qbroad: float = 0.0
    refine_qdamp: bool = False
    uiso: tuple[float, ...] = ScreenConfig.uiso
    expansion: tuple[float, float] = ScreenConfig.expansion
    refine: bool = True
    use_ray: bool | None = None
    num_cpus: int = 2

    def __post_init__(self) -> None:
        if self.top < 1:
            raise ValueError(f"top: must be >= 1, got {self.top}")
        if self.per_type < 1:
            raise ValueError(f"per_type: must be >= 1, got {self.per_type}")
        if self.qbroad < 0:
            raise ValueError(f"qbroad: must be >= 0, got {self.qbroad}")

    def screen_config(self, meta: dict[str, Any] | None = None) -> ScreenConfig:
        qmin, qmax = resolve_q(self, meta)
        return ScreenConfig(rmin=self.rmin, rmax=self.rmax, rmax_cap=self.rmax_cap, qmin=qmin, qmax=qmax,
                            qdamp=self.qdamp, uiso=tuple(self.uiso), expansion=tuple(self.expansion))


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
def refine_backend() -> str:
    """'pdf.refine' when pdfusion.pdf.refine.fit_particle is importable, else 'screen-local'."""
    try:
        from pdfusion.pdf.refine import fit_particle  # noqa: F401
    except ImportError:
        return "screen-local"
    return "pdf.refine"


def _refine_pdf(particle: Particle, score: ScreenScore, target: ScreenTarget, r: np.ndarray, g: np.ndarray,
                cfg: SolveConfig):
    from pdfusion.pdf.refine import fit_particle

    free = ["scale", "expansion", "uiso", "delta2"] + (["qdamp"] if cfg.refine_qdamp else [])
    init = {"scale": score.scale, "expansion": score.expansion, "uiso": score.uiso, "delta2": 0.0}
    sc = target.cfg
    return fit_particle(particle, r, g, free=tuple(free), init=init, qmin=sc.qmin, qmax=sc.qmax, qdamp=sc.qdamp,
                        qbroad=cfg.qbroad, rmin=sc.rmin, rmax=target.rmax)


def _refine(particle: Particle, score: ScreenScore, target: ScreenTarget, r: np.ndarray, g: np.ndarray,
            cfg: SolveConfig, backend: str) -> tuple[Any, str]:
    if backend == "pdf.refine":
        return _refine_pdf(particle, score, target, r, g, cfg), backend
    return local_fit(particle, target, score), "screen-local"


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


def _lattice(meta: dict[str, Any], expansion: float) -> dict[str, float]:
    lat = meta.get("lattice_params") or {}
    out = {}
    for k in ("a", "b", "c"):
        if k in lat:
            out[k] = round(float(lat[k]) * expansion, 5)
    return out


def _fit_value(fit: Any, name: str):
    v = getattr(fit, name)
    return v() if callable(v) else v


def solve(r: np.ndarray, g: np.ndarray, composition: str, cfg: SolveConfig = SolveConfig(), *,
          meta: dict[str, Any] | None = None, extra: Sequence[Particle] = (), progress: bool = True,
          log: Callable[[str], None] | None = None) -> SolveResult:
    """Rank candidate structures for the measured G(r) (``r``, ``g``) of a ``composition`` particle.

    ``meta``: the file header (Qmin / Qmax are read from it unless ``cfg`` sets them). ``extra``:
    further candidates (e.g. a model's samples; their meta 'structure_type' defaults to "generated").
    Raises ValueError for a bad composition, window or empty library."""
    t0 = time.perf_counter()
    comp = parse_composition(composition)
    scfg = cfg.screen_config(meta)
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
    t2 = time.perf_counter()
    picked = _pick(scores, cands, cfg)
    backend = refine_backend() if cfg.refine else "none"
    solved: list[SolvedCandidate] = []
    r_all, g_all = np.asarray(r, dtype=np.float64), np.asarray(g, dtype=np.float64)
    from tqdm.auto import tqdm

    for s in tqdm(picked, desc=f"refine ({backend})", disable=not progress, unit="cand"):
        p = cands[s.index]
        if cfg.refine:
            fit, method = _refine(p, s, target, r_all, g_all, cfg, backend)
        else:
            fit, method = local_fit(p, target, s), "screen-local"
        params = {k: float(v) for k, v in dict(_fit_value(fit, "params")).items()}
        unc = {k: float(v) for k, v in dict(_fit_value(fit, "uncertainties") or {}).items()}
        structure = _fit_value(fit, "structure")
        if not isinstance(structure, Particle):
            structure = Particle(p.numbers, p.positions * params.get("expansion", 1.0), dict(p.meta))
        expansion = float(params.get("expansion", s.expansion))
        pos = structure.positions - structure.positions.mean(0)
        gobs = np.asarray(_fit_value(fit, "gobs"), dtype=np.float64)
        gcalc = np.asarray(_fit_value(fit, "gcalc"), dtype=np.float64)
        extra_meta = {k: p.meta[k] for k in ("stoichiometry_mismatch", "radius", "shells", "p", "q", "r", "length",
                                             "cutoff", "formula", "note") if k in p.meta}
        solved.append(SolvedCandidate(
            rank=0, structure_type=str(p.meta.get("structure_type", "?")), family=str(p.meta.get("family", "?")),
            label=str(p.meta.get("label", f"candidate_{s.index}")), n_atoms=len(p),
            diameter=round(2 * float(np.linalg.norm(pos, axis=1).max()), 3), rw=float(_fit_value(fit, "rw")),
            params=params, uncertainties=unc, screen=s.to_dict(), lattice_params=_lattice(p.meta, expansion),
            structure=Particle(structure.numbers, pos, {**p.meta, "expansion": expansion}),
            r=np.asarray(_fit_value(fit, "r"), dtype=np.float64), gobs=gobs, gcalc=gcalc, method=method,
            meta=extra_meta,
        ))
    solved.sort(key=lambda c: c.rw)
    for i, c in enumerate(solved, start=1):
        c.rank = i
    t3 = time.perf_counter()
    screening = [{"label": cands[s.index].meta.get("label"), "structure_type": cands[s.index].meta.get("structure_type"),
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
