"""Fast screening of candidate particles against a measured G(r): simulate each on the data's r grid,
fit scale (closed form), isotropic expansion (grid search) and Uiso (grid), rank by PDFgui's Rw.

Why not call ``simulate_pdf`` per trial expansion: a library of ~100 particles x ~80 expansions x several
Uiso values is ~40,000 Debye sums of up to ~3,000 atoms. Here each candidate's pairs are histogrammed
*once* (per element pair, linear weights on a 0.005 Å node grid) and turned into the pair sum
P(Q) = sum_ij sin(Q r_ij) / r_ij on a fine Q grid with one FFT. An expansion s then only rescales Q
(sin(Q s r) / (s r) = P(s Q) / s: a cubic interpolation), and Uiso only multiplies F(Q) by exp(-Uiso Q^2),
so every (s, Uiso) trial costs one small matrix product F(Q) -> G(r). The sum follows diffpy.srreal's
DebyePDFCalculator (X-ray form factors, F(Q) = 2 / (N <f>^2) sum_{i<j} f_i f_j DW sin(Q r)/r, zero below
Qmin, sine transform to Qmax, Qdamp envelope exp(-(Qdamp r)^2 / 2)) and agrees with ``simulate_pdf`` to
Rw ~1e-3 (tests/inference/test_screen.py). Not modelled here (left to the refinement): Qbroad, Uiso per
element; delta2 enters in a second stage (:func:`rescore`, exact for pairs shorter than 12 Å).
Every pair is summed, as in the real particle -- unlike srreal (and ``simulate_pdf``), which drops pairs
beyond its extended rmax, a cut that matters for a particle larger than the fit window (docs/evaluation.md,
"Solving measured PDFs").

Rw is PDFgui's: sqrt(sum (Gobs - scale Gcalc)^2 / sum Gobs^2) over the fit window, unit weights.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from pdfusion.config import ScreenConfig
from pdfusion.pdf.formfactors import scattering_factors
from pdfusion.pdf.realspace import pair_distances
from pdfusion.pdf.refine import FitResult
from pdfusion.structures.particle import Particle

__all__ = ["ScreenConfig", "ScreenScore", "ScreenTarget", "Curves", "local_fit", "prepare_target", "rescore",
           "score_candidate", "screen", "RAY_THRESHOLD"]

RAY_THRESHOLD = 200  # libraries larger than this are screened as Ray tasks (or with use_ray=True)
NODE_STEP = 0.005  # Å, pair-distance histogram spacing (linear weights: relative error (Q h)^2 / 8 < 0.3%)
FINE_DQ = 0.01  # 1/Å, largest spacing of the FFT's Q grid (cubic interpolation onto s*Q)
DELTA2_RANGE = 12.0  # Å; pairs shorter than this get the delta2 correction in `rescore`
DELTA2_GRID = (0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0)  # Å^2


@dataclass
class ScreenTarget:
    """The measured curve in the fit window, and the sine-transform matrices on it."""

    cfg: ScreenConfig
    r: np.ndarray  # (n_r,) fit window
    g: np.ndarray  # (n_r,) observed G(r)
    q: np.ndarray  # (nq,) Q points of the sine transform (Qmin <= Q < Qmax)
    transform: np.ndarray  # (nq, n_r): G = F @ transform (incl. Qdamp envelope)
    stride: int  # screening uses r[::stride]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def rmax(self) -> float:
        return float(self.r[-1])

    def thin(self) -> tuple[np.ndarray, np.ndarray]:
        """(transform, g) on every ``stride``-th point, contiguous (cached)."""
        if self.stride == 1:
            return self.transform, self.g
        if "_thin" not in self.__dict__:
            self.__dict__["_thin"] = (np.ascontiguousarray(self.transform[:, :: self.stride]),
                                      np.ascontiguousarray(self.g[:: self.stride]))
        return self.__dict__["_thin"]


def _sine_transform(q: np.ndarray, r: np.ndarray, dq: float, qdamp: float) -> np.ndarray:
    t = (2.0 / math.pi) * dq * np.sin(q[:, None] * r[None, :])
    if qdamp > 0:
        t *= np.exp(-0.5 * (r * qdamp) ** 2)[None, :]
    return t


def prepare_target(r: np.ndarray, g: np.ndarray, cfg: ScreenConfig = ScreenConfig(), **meta) -> ScreenTarget:
    """Cut the data to the fit window [rmin, rmax] (rmax: ``cfg.rmax``, else the data's end capped at
    ``cfg.rmax_cap``) and build the transform. Raises ValueError for too few points or a flat curve."""
    r = np.asarray(r, dtype=np.float64).reshape(-1)
    g = np.asarray(g, dtype=np.float64).reshape(-1)
    if r.shape != g.shape or r.size < 2:
        raise ValueError(f"g: expected as many points as r (>= 2), got r {r.shape}, g {g.shape}")
    if not (np.isfinite(r).all() and np.isfinite(g).all()):
        raise ValueError("r/g: contain NaN or inf")
    if not np.all(np.diff(r) > 0):
        raise ValueError("r: must be strictly increasing")
    rmax = min(float(r[-1]), cfg.rmax) if cfg.rmax is not None else min(float(r[-1]), cfg.rmax_cap)
    win = (r >= cfg.rmin - 1e-9) & (r <= rmax + 1e-9)
    if win.sum() < 10:
        raise ValueError(f"rmin/rmax: the fit window {cfg.rmin:g}-{rmax:g} Å holds {int(win.sum())} data points "
                         f"(data cover {r[0]:g}-{r[-1]:g} Å); widen it")
    rw, gw = r[win], g[win]
    if not np.any(gw != 0):
        raise ValueError("g: the data are zero over the whole fit window")
    dr = float(np.median(np.diff(rw)))
    stride = max(1, int(round(cfg.screen_rstep / dr))) if cfg.screen_rstep > 0 else 1
    # Q step: pairs up to max_pair_distance alias beyond 2 pi / dq - d, outside any window below ~60 Å
    dq = math.pi / max(cfg.max_pair_distance, rmax + 10.0)
    k0, k1 = int(math.ceil(cfg.qmin / dq - 1e-9)), int(math.ceil(cfg.qmax / dq - 1e-9))
    q = np.arange(k0, k1) * dq
    return ScreenTarget(cfg, rw, gw, q, _sine_transform(q, rw, dq, cfg.qdamp), stride, dict(meta))


# --------------------------------------------------------------------------------------------------
# one candidate: pair histogram -> P(Q) -> F(Q) for any expansion and Uiso
# --------------------------------------------------------------------------------------------------
def _pair_weights(numbers: np.ndarray, pos: np.ndarray, h: float, dcut: float
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[tuple[int, int]]]:
    """Per element pair (a <= b) the linear-weight histogram of pair distances on nodes n·h (pairs beyond
    ``dcut`` and coincident atoms dropped)."""
    types, local, counts = np.unique(numbers, return_inverse=True, return_counts=True)
    pairs = [(a, b) for a in range(len(types)) for b in range(a, len(types))]
    centre = pos.mean(0)
    dmax = min(dcut, 2 * float(np.linalg.norm(pos - centre, axis=1).max()) + 1e-6)
    n_nodes = int(math.ceil(dmax / h)) + 3
    w = np.zeros((len(pairs), n_nodes))
    groups = [pos[local == t] for t in range(len(types))]
    for k, (a, b) in enumerate(pairs):
        for d in pair_distances(groups[a], None if a == b else groups[b]):
            d = d[(d > 1e-8) & (d <= dmax)] / h
            i = d.astype(np.int64)
            f = d - i
            w[k] += np.bincount(i, 1.0 - f, minlength=n_nodes)[:n_nodes]
            w[k] += np.bincount(i + 1, f, minlength=n_nodes)[:n_nodes]
    return types, counts, w, pairs


class Curves:
    """A candidate's F(Q) on a target's Q points for any (expansion, Uiso), and G(r) from it."""

    def __init__(self, particle: Particle, q: np.ndarray, cfg: ScreenConfig):
        import torch

        self.q = np.asarray(q, dtype=np.float64)
        hi = cfg.expansion[1]
        types, counts, w, pairs = _pair_weights(particle.numbers, particle.positions, NODE_STEP,
                                                cfg.max_pair_distance / hi)
        self.n_atoms = int(counts.sum())
        n_nodes = w.shape[1]
        r_nodes = np.arange(n_nodes) * NODE_STEP
        v = np.zeros_like(w)
        v[:, 1:] = w[:, 1:] / r_nodes[1:]
        m = 1 << int(math.ceil(math.log2(max(n_nodes, math.pi / (NODE_STEP * FINE_DQ)))))
        self.dqf = math.pi / (m * NODE_STEP)
        n_keep = int(math.ceil(self.q.max() * hi * 1.05 / self.dqf)) + 4 if self.q.size else 4
        spec = np.fft.rfft(v, n=2 * m, axis=-1)[:, : n_keep + 1]
        p = -spec.imag  # P(Q_m) = sum_n v_n sin(pi m n / M), Q_m = m * dqf
        self.p = np.concatenate([-p[:, 1:2], p], axis=1)  # odd in Q: one node below Q = 0 for interpolation
        z = torch.as_tensor(types, dtype=torch.long)
        ff = scattering_factors(z, torch.as_tensor(self.q), cfg.radiation).numpy()  # (T, nq)
        fbar = (counts[:, None] * ff).sum(0) / self.n_atoms
        norm = np.where(fbar != 0, 2.0 / (self.n_atoms * np.where(fbar != 0, fbar, 1.0) ** 2), 0.0)
        self.coef = np.stack([ff[a] * ff[b] for a, b in pairs]) * norm[None, :]  # (n_pt, nq)
        # short pairs kept node by node for the delta2 correction (fq_delta2)
        short = (r_nodes > 0) & (r_nodes < DELTA2_RANGE) & (w.sum(0) > 0)
        self.short_r = r_nodes[short]
        self.short_w = w[:, short]

    def amplitude(self, s: np.ndarray) -> np.ndarray:
        """sum over element pairs of f_a f_b / (N <f>^2) * 2 * P(s q) / s: (n_s, nq), before the DW factor."""
        s = np.atleast_1d(np.asarray(s, dtype=np.float64))
        x = s[:, None] * self.q[None, :] / self.dqf + 1.0  # +1: the node below Q = 0
        k = np.floor(x).astype(np.int64)
        t = x - k
        k = np.clip(k, 1, self.p.shape[1] - 3)
        w_m1 = -t * (t - 1) * (t - 2) / 6
        w_0 = (t + 1) * (t - 1) * (t - 2) / 2
        w_1 = -(t + 1) * t * (t - 2) / 2
        w_2 = (t + 1) * t * (t - 1) / 6
        p = self.p
        interp = (p[:, k - 1] * w_m1 + p[:, k] * w_0 + p[:, k + 1] * w_1 + p[:, k + 2] * w_2)  # (n_pt, n_s, nq)
        return np.einsum("pq,psq->sq", self.coef, interp) / s[:, None]

    def fq(self, s: np.ndarray, uiso: np.ndarray) -> np.ndarray:
        """F(Q) for every (uiso, s): (n_u, n_s, nq)."""
        amp = self.amplitude(s)
        dw = np.exp(-np.asarray(uiso, dtype=np.float64)[:, None] * self.q[None, :] ** 2)
        return dw[:, None, :] * amp[None, :, :]


    def fq_delta2(self, s: float, uiso: np.ndarray, delta2: np.ndarray) -> np.ndarray:
        """F(Q) at expansion ``s`` for every (delta2, uiso): (n_d, n_u, nq). The Jeong correlated-motion term
        (pair sigma^2 = 2 Uiso (1 - delta2 / r^2), clipped at 0 as simulate_pdf does) is applied exactly to
        pairs shorter than DELTA2_RANGE (there delta2 / r^2 >= 0.03 matters); longer pairs keep delta2 = 0."""
        uiso = np.atleast_1d(np.asarray(uiso, dtype=np.float64))
        delta2 = np.atleast_1d(np.asarray(delta2, dtype=np.float64))
        base = self.fq(np.array([s]), uiso)[:, 0]  # (n_u, nq), every pair with delta2 = 0
        out = np.repeat(base[None], len(delta2), axis=0)
        if self.short_r.size == 0:
            return out
        rs = s * self.short_r
        q2 = self.q**2
        sinc = np.sin(self.q[None, :] * rs[:, None]) / rs[:, None]  # (n_nz, nq)
        for i, d2 in enumerate(delta2):
            if d2 == 0:
                continue
            corr = np.clip(1.0 - d2 / rs**2, 0.0, None)
            for j, u in enumerate(uiso):
                # exp(-u q^2 corr) - exp(-u q^2): the change against the delta2 = 0 curve in `base`
                e = np.exp(-u * corr[:, None] * q2[None, :]) - np.exp(-u * q2)[None, :]
                x = self.short_w @ (e * sinc)  # (n_pt, nq)
                out[i, j] += (self.coef * x).sum(0) / s
        return out


def _fit_scale(gcalc: np.ndarray, gobs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Closed-form scale (>= 0) and Rw for each row of gcalc (..., n_r) against gobs (n_r,)."""
    cg = gcalc @ gobs
    cc = np.einsum("...r,...r->...", gcalc, gcalc)
    gg = float(gobs @ gobs)
    scale = np.where((cc > 0) & (cg > 0), cg / np.where(cc > 0, cc, 1.0), 0.0)
    rw2 = 1.0 - np.where(cc > 0, cg * scale, 0.0) / gg
    return scale, np.sqrt(np.clip(rw2, 0.0, None))


@dataclass
class ScreenScore:
    """Best (scale, expansion, Uiso) of one candidate and its Rw on the (thinned) fit window."""

    index: int
    rw: float
    scale: float
    expansion: float
    uiso: float
    n_atoms: int
    delta2: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"rw": self.rw, "scale": self.scale, "expansion": self.expansion, "uiso": self.uiso,
                "delta2": self.delta2}


def score_candidate(particle: Particle, target: ScreenTarget, index: int = 0) -> ScreenScore:
    """Grid search, scale in closed form throughout: expansion on the coarse grid at the middle Uiso, Uiso
    at that expansion, expansion again at a tenth of the step (+- one coarse step) at that Uiso, Uiso again
    (R_w is nearly separable in the two; this costs ~90 trial curves instead of ~400 for the full grid)."""
    cfg = target.cfg
    curves = Curves(particle, target.q, cfg)
    t, g = target.thin()
    u_grid = np.asarray(cfg.uiso, dtype=np.float64)
    lo, hi = cfg.expansion
    s_grid = np.arange(lo, hi + 1e-9, cfg.expansion_step)
    if not np.any(np.isclose(s_grid, 1.0)):
        s_grid = np.sort(np.append(s_grid, 1.0))

    def search(s: np.ndarray, u: np.ndarray) -> tuple[float, float, float, float]:
        gcalc = (curves.fq(s, u).reshape(-1, len(curves.q)) @ t)  # (n_u * n_s, n_r)
        scale, rw = _fit_scale(gcalc, g)
        k = int(np.argmin(rw))
        return float(rw[k]), float(scale[k]), float(s[k % len(s)]), float(u[k // len(s)])

    u0 = np.array([u_grid[len(u_grid) // 2]])
    _, _, s_best, _ = search(s_grid, u0)
    _, _, _, u_best = search(np.array([s_best]), u_grid)
    fine = np.clip(s_best + cfg.expansion_step * np.linspace(-1, 1, 21), lo, hi)
    _, _, s_best, _ = search(fine, np.array([u_best]))
    rw, scale, s_best, u_best = search(np.array([s_best]), u_grid)
    return ScreenScore(index, rw, scale, s_best, u_best, curves.n_atoms)


def rescore(particle: Particle, target: ScreenTarget, score: ScreenScore, delta2: Sequence[float] = DELTA2_GRID
            ) -> ScreenScore:
    """Second screening stage: from ``score``'s expansion, grid-search delta2 x Uiso, then the expansion again
    (+- half a coarse step at a tenth of it) at the best pair, scale in closed form. Includes delta2 = 0 at
    the stage-1 optimum, so the Rw never gets worse."""
    cfg = target.cfg
    curves = Curves(particle, target.q, cfg)
    t, g = target.thin()
    u_grid = np.asarray(cfg.uiso, dtype=np.float64)
    d_grid = np.asarray(sorted(set(float(d) for d in delta2) | {0.0}), dtype=np.float64)
    best = (score.rw, score.scale, score.expansion, score.uiso, 0.0)
    gc = curves.fq_delta2(score.expansion, u_grid, d_grid) @ t  # (n_d, n_u, n_r)
    sc, rw = _fit_scale(gc, g)
    i, j = np.unravel_index(int(np.argmin(rw)), rw.shape)
    if rw[i, j] <= best[0]:
        best = (float(rw[i, j]), float(sc[i, j]), score.expansion, float(u_grid[j]), float(d_grid[i]))
    lo, hi = cfg.expansion
    for s_try in np.clip(best[2] + cfg.expansion_step * np.linspace(-0.5, 0.5, 11), lo, hi):
        gc = curves.fq_delta2(float(s_try), np.array([best[3]]), np.array([best[4]]))[0, 0] @ t
        sc1, rw1 = _fit_scale(gc[None], g)
        if rw1[0] < best[0]:
            best = (float(rw1[0]), float(sc1[0]), float(s_try), best[3], best[4])
    return ScreenScore(score.index, best[0], best[1], best[2], best[3], score.n_atoms, best[4])


def _score_chunk(particles: Sequence[Particle], indices: Sequence[int], target: ScreenTarget) -> list[ScreenScore]:
    import os

    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1") or 1))
    return [score_candidate(p, target, i) for p, i in zip(particles, indices, strict=True)]


def screen(candidates: Sequence[Particle], target: ScreenTarget, *, use_ray: bool | None = None,
           num_cpus: int = 2, progress: bool = True) -> list[ScreenScore]:
    """Score every candidate; returns the scores sorted by Rw (best first), ``index`` pointing into
    ``candidates``. Ray tasks when ``use_ray`` (default: more than :data:`RAY_THRESHOLD` candidates;
    a local ``ray.init(num_cpus=num_cpus)`` unless Ray is already up), else a serial loop."""
    from tqdm.auto import tqdm

    n = len(candidates)
    if n == 0:
        raise ValueError("candidates: empty library")
    use_ray = n > RAY_THRESHOLD if use_ray is None else use_ray
    scores: list[ScreenScore] = []
    if not use_ray:
        for i, p in enumerate(tqdm(candidates, desc="screen", disable=not progress, unit="cand")):
            scores.append(score_candidate(p, target, i))
    else:
        import ray

        if not ray.is_initialized():
            # a private local instance: never join a cluster that training may be running on this machine
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
        remote = ray.remote(num_cpus=1)(_score_chunk)
        tref = ray.put(target)
        # largest first, in ~4 chunks per CPU so the two queues finish together
        order = sorted(range(n), key=lambda i: -len(candidates[i]))
        n_chunks = min(n, 4 * max(1, int(ray.available_resources().get("CPU", num_cpus))))
        chunks = [order[k::n_chunks] for k in range(n_chunks)]
        pending = {remote.remote([candidates[i] for i in c], c, tref): len(c) for c in chunks}
        bar = tqdm(total=n, desc="screen (ray)", disable=not progress, unit="cand")
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                scores.extend(ray.get(ref))
                bar.update(pending.pop(ref))
        bar.close()
    return sorted(scores, key=lambda s: (s.rw, s.index))


# --------------------------------------------------------------------------------------------------
# a local refinement on the same model (used when pdf.refine is unavailable, and for generated candidates'
# first sizing)
# --------------------------------------------------------------------------------------------------
def local_fit(particle: Particle, target: ScreenTarget, init: ScreenScore | None = None) -> FitResult:
    """Continuous refinement of expansion, Uiso and delta2 (Nelder-Mead; scale in closed form) with the
    screening model on the full-resolution fit window, from ``init`` (default: a fresh two-stage screen).
    Uncertainties from the Gauss-Newton curvature of the residuals, scaled by the reduced chi^2. Returns a
    ``pdf.refine.FitResult`` (one 'uiso' for every element; ``meta['method']`` 'screen-local')."""
    from scipy.optimize import minimize

    if init is None:
        init = rescore(particle, target, score_candidate(particle, target))
    curves = Curves(particle, target.q, target.cfg)
    t, g = target.transform, target.g
    lo, hi = target.cfg.expansion
    gg = float(g @ g)

    def gcalc_of(p: np.ndarray) -> np.ndarray:  # p = (expansion, uiso, delta2)
        return curves.fq_delta2(float(p[0]), np.array([max(p[1], 0.0)]), np.array([max(p[2], 0.0)]))[0, 0] @ t

    def rw_of(p: np.ndarray) -> float:
        if not (lo * 0.97 <= p[0] <= hi * 1.03) or not (0 <= p[1] <= 0.1) or not (0 <= p[2] <= 20):
            return 10.0
        gc = gcalc_of(p)
        sc, rw = _fit_scale(gc[None], g)
        return float(rw[0])

    x0 = np.array([init.expansion, init.uiso, init.delta2])
    simplex = [x0, x0 + [0.002, 0, 0], x0 + [0, 0.002, 0], x0 + [0, 0, 0.5]]
    res = minimize(rw_of, x0, method="Nelder-Mead",
                   options={"xatol": 1e-6, "fatol": 1e-7, "maxfev": 400, "initial_simplex": simplex})
    x = res.x if res.fun <= rw_of(x0) else x0
    gc = gcalc_of(x)
    scale = float(_fit_scale(gc[None], g)[0][0])
    gcalc = scale * gc
    rw = float(np.sqrt(((g - gcalc) ** 2).sum() / gg))
    names = ("scale", "expansion", "uiso", "delta2")
    p0 = np.array([scale, x[0], max(x[1], 0.0), max(x[2], 0.0)])

    def resid(p: np.ndarray) -> np.ndarray:
        return g - p[0] * gcalc_of(p[1:])

    steps = np.array([1e-4 * max(abs(scale), 1e-6), 1e-5, 1e-5, 1e-3])
    cols = []
    for k in range(4):
        dp = np.eye(4)[k] * steps[k]
        lo_p = p0 - dp if p0[k] - steps[k] >= 0 or k == 0 else p0  # one-sided at a zero bound
        cols.append((resid(p0 + dp) - resid(lo_p)) / float((p0 + dp)[k] - lo_p[k]))
    jac = np.stack(cols, axis=1)
    r0 = resid(p0)
    dof = max(1, len(g) - 4)
    try:
        cov = np.linalg.inv(jac.T @ jac) * float(r0 @ r0) / dof
        unc = {k: float(math.sqrt(max(cov[i, i], 0.0))) for i, k in enumerate(names)}
    except np.linalg.LinAlgError:
        unc = {k: float("nan") for k in names}
    structure = Particle(particle.numbers.copy(), particle.positions * x[0],
                         {**particle.meta, "expansion": float(x[0])})
    params = {"scale": scale, "expansion": float(x[0]), "uiso": float(p0[2]), "delta2": float(p0[3]),
              "qdamp": target.cfg.qdamp}
    return FitResult(params=params, uncertainties=unc, rw=rw, r=target.r, gobs=g, gcalc=gcalc, gdiff=g - gcalc,
                     structure=structure, free=list(names), meta={"model": "particle", "method": "screen-local"})


def with_window(cfg: ScreenConfig, **changes) -> ScreenConfig:
    """``cfg`` with some fields replaced (validated again)."""
    return replace(cfg, **changes)
