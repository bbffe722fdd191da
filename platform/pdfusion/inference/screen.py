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
Rw ~1e-3 (tests/inference/test_screen.py). Not modelled here (left to the refinement): delta2, Qbroad,
and srreal's cut of pairs beyond its extended rmax (all pairs are summed, as in the real particle).

Rw is PDFgui's: sqrt(sum (Gobs - scale Gcalc)^2 / sum Gobs^2) over the fit window, unit weights.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from pdfusion.structures.particle import Particle

__all__ = ["ScreenConfig", "ScreenScore", "ScreenTarget", "Curves", "local_fit", "prepare_target", "score_candidate",
           "screen", "RAY_THRESHOLD"]

RAY_THRESHOLD = 200  # libraries larger than this are screened as Ray tasks (or with use_ray=True)
NODE_STEP = 0.005  # Å, pair-distance histogram spacing (linear weights: relative error (Q h)^2 / 8 < 0.3%)
FINE_DQ = 0.01  # 1/Å, largest spacing of the FFT's Q grid (cubic interpolation onto s*Q)


@dataclass(frozen=True)
class ScreenConfig:
    """How candidates are scored against a measured PDF (a small frozen config local to inference; the
    project's config.py is not extended for it). Lengths in Å, Q in 1/Å, Uiso in Å^2."""

    rmin: float = 1.5
    rmax: float | None = None  # None: end of the data, capped at rmax_cap
    rmax_cap: float = 30.0
    qmin: float = 1.0
    qmax: float = 25.0
    qdamp: float = 0.04
    radiation: str = "xray"
    expansion: tuple[float, float] = (0.85, 1.15)  # isotropic expansion search range
    expansion_step: float = 0.005  # coarse grid; then +- one step at expansion_step / 10
    uiso: tuple[float, ...] = (0.002, 0.004, 0.007, 0.011, 0.016)
    screen_rstep: float = 0.02  # data thinned to about this r step while screening (peaks are >= 0.1 Å wide)
    max_pair_distance: float = 60.0  # sets the Q step of the sine transform (pi / this); longer pairs cut

    def __post_init__(self) -> None:
        def need(ok: bool, name: str, msg: str) -> None:
            if not ok:
                raise ValueError(f"{name}: {msg}")

        need(self.rmin >= 0, "rmin", f"must be >= 0 Å, got {self.rmin}")
        need(self.rmax is None or self.rmax > self.rmin, "rmax", f"must exceed rmin {self.rmin}, got {self.rmax}")
        need(self.rmax_cap > self.rmin, "rmax_cap", f"must exceed rmin {self.rmin}, got {self.rmax_cap}")
        need(self.qmax > self.qmin >= 0, "qmax", f"need qmax > qmin >= 0, got qmin={self.qmin}, qmax={self.qmax}")
        need(self.qdamp >= 0, "qdamp", f"must be >= 0, got {self.qdamp}")
        need(self.radiation in ("xray", "neutron"), "radiation", f"must be 'xray' or 'neutron', got {self.radiation!r}")
        lo, hi = self.expansion
        need(0 < lo <= 1 <= hi, "expansion", f"need 0 < lo <= 1 <= hi, got {self.expansion}")
        need(self.expansion_step > 0, "expansion_step", f"must be > 0, got {self.expansion_step}")
        need(len(self.uiso) > 0 and all(u >= 0 for u in self.uiso), "uiso", f"need values >= 0, got {self.uiso}")
        need(self.screen_rstep >= 0, "screen_rstep", f"must be >= 0, got {self.screen_rstep}")
        need(self.max_pair_distance > 0, "max_pair_distance", f"must be > 0, got {self.max_pair_distance}")


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
        return self.transform[:, :: self.stride], self.g[:: self.stride]


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
    """Per element pair (a <= b) the linear-weight histogram of pair distances on nodes n·h."""
    types, local, counts = np.unique(numbers, return_inverse=True, return_counts=True)
    t = len(types)
    pairs = [(a, b) for a in range(t) for b in range(a, t)]
    pt_index = np.zeros((t, t), dtype=np.int64)
    for k, (a, b) in enumerate(pairs):
        pt_index[a, b] = pt_index[b, a] = k
    n = len(numbers)
    centre = pos.mean(0)
    dmax = min(dcut, 2 * float(np.linalg.norm(pos - centre, axis=1).max()) + 1e-6)
    n_nodes = int(math.ceil(dmax / h)) + 3
    w = np.zeros(len(pairs) * n_nodes)
    block = max(1, 4_000_000 // max(n, 1))
    for i0 in range(0, n - 1, block):
        i1 = min(n - 1, i0 + block)
        d = np.sqrt(((pos[i0:i1, None, :] - pos[None, i0:, :]) ** 2).sum(-1))  # rows i, columns j >= i0
        ii, jj = np.nonzero(np.arange(i0, n)[None, :] > np.arange(i0, i1)[:, None])
        dd = d[ii, jj]
        keep = (dd > 1e-8) & (dd <= dcut)
        dd, ii, jj = dd[keep], ii[keep] + i0, jj[keep] + i0
        u = dd / h
        k = u.astype(np.int64)
        f = u - k
        idx = pt_index[local[ii], local[jj]] * n_nodes + k
        w += np.bincount(idx, 1.0 - f, minlength=w.size)[: w.size]
        w += np.bincount(idx + 1, f, minlength=w.size)[: w.size]
    return types, counts, w.reshape(len(pairs), n_nodes), pairs


class Curves:
    """A candidate's F(Q) on a target's Q points for any (expansion, Uiso), and G(r) from it."""

    def __init__(self, particle: Particle, q: np.ndarray, cfg: ScreenConfig):
        import torch

        from pdfusion.pdf.formfactors import scattering_factors

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

    def to_dict(self) -> dict[str, Any]:
        return {"rw": self.rw, "scale": self.scale, "expansion": self.expansion, "uiso": self.uiso}


def score_candidate(particle: Particle, target: ScreenTarget, index: int = 0) -> ScreenScore:
    """Grid search of expansion (coarse, then +- one step at a tenth of it) and Uiso, scale in closed form."""
    cfg = target.cfg
    curves = Curves(particle, target.q, cfg)
    t, g = target.thin()
    u = np.asarray(cfg.uiso, dtype=np.float64)
    lo, hi = cfg.expansion
    s = np.arange(lo, hi + 1e-9, cfg.expansion_step)
    if not np.any(np.isclose(s, 1.0)):
        s = np.sort(np.append(s, 1.0))

    def search(s_grid: np.ndarray):
        gcalc = curves.fq(s_grid, u) @ t  # (n_u, n_s, n_r)
        scale, rw = _fit_scale(gcalc, g)
        iu, js = np.unravel_index(int(np.argmin(rw)), rw.shape)
        return float(rw[iu, js]), float(scale[iu, js]), float(s_grid[js]), float(u[iu])

    rw, scale, s_best, u_best = search(s)
    fine = np.clip(s_best + cfg.expansion_step * np.linspace(-1, 1, 21), lo, hi)
    rw, scale, s_best, u_best = search(fine)
    return ScreenScore(index, rw, scale, s_best, u_best, curves.n_atoms)


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
@dataclass
class LocalFit:
    """Refined (scale, expansion, uiso) on the full fit window; attribute names as pdf.refine's FitResult."""

    params: dict[str, float]
    uncertainties: dict[str, float]
    rw: float
    r: np.ndarray
    gobs: np.ndarray
    gcalc: np.ndarray
    structure: Particle
    method: str = "screen-local"

    @property
    def gdiff(self) -> np.ndarray:
        return self.gobs - self.gcalc

    def to_json(self) -> dict[str, Any]:
        return {"params": self.params, "uncertainties": self.uncertainties, "rw": self.rw, "method": self.method}


def local_fit(particle: Particle, target: ScreenTarget, init: ScreenScore | None = None) -> LocalFit:
    """Continuous refinement of expansion and Uiso (Nelder-Mead; scale in closed form) on the full-resolution
    fit window, from ``init`` (default: a fresh screen). Uncertainties from the curvature of chi^2 (PDFgui's
    convention: scaled by the reduced chi^2)."""
    from scipy.optimize import minimize

    if init is None:
        init = score_candidate(particle, target)
    curves = Curves(particle, target.q, target.cfg)
    t, g = target.transform, target.g

    def model(x: np.ndarray) -> tuple[np.ndarray, float]:
        gcalc = curves.fq(np.array([x[0]]), np.array([max(x[1], 0.0)]))[0, 0] @ t
        scale, _ = _fit_scale(gcalc[None], g)
        return gcalc * scale[0], float(scale[0])

    def rw_of(x: np.ndarray) -> float:
        lo, hi = target.cfg.expansion
        if not (lo * 0.97 <= x[0] <= hi * 1.03) or x[1] < 0 or x[1] > 0.1:
            return 10.0
        gc, _ = model(x)
        return float(np.sqrt(((g - gc) ** 2).sum() / (g * g).sum()))

    x0 = np.array([init.expansion, init.uiso])
    res = minimize(rw_of, x0, method="Nelder-Mead",
                   options={"xatol": 1e-6, "fatol": 1e-7, "initial_simplex": [x0, x0 + [0.002, 0], x0 + [0, 0.002]]})
    x = res.x
    gcalc, scale = model(x)
    rw = rw_of(x)
    # uncertainties: Gauss-Newton on the residuals with numerical derivatives in (scale, expansion, uiso)
    names = ("scale", "expansion", "uiso")
    p0 = np.array([scale, x[0], x[1]])

    def resid(p: np.ndarray) -> np.ndarray:
        gc = curves.fq(np.array([p[1]]), np.array([max(p[2], 0.0)]))[0, 0] @ t
        return g - p[0] * gc

    steps = np.array([1e-4 * max(abs(scale), 1e-6), 1e-5, 1e-5])
    jac = np.stack([(resid(p0 + np.eye(3)[k] * steps[k]) - resid(p0 - np.eye(3)[k] * steps[k])) / (2 * steps[k])
                    for k in range(3)], axis=1)
    r0 = resid(p0)
    dof = max(1, len(g) - 3)
    try:
        cov = np.linalg.inv(jac.T @ jac) * float(r0 @ r0) / dof
        unc = {k: float(math.sqrt(max(cov[i, i], 0.0))) for i, k in enumerate(names)}
    except np.linalg.LinAlgError:
        unc = {k: float("nan") for k in names}
    structure = Particle(particle.numbers.copy(), particle.positions * x[0],
                         {**particle.meta, "expansion": float(x[0])})
    params = {"scale": float(scale), "expansion": float(x[0]), "uiso": float(max(x[1], 0.0)), "delta2": 0.0,
              "qdamp": target.cfg.qdamp}
    return LocalFit(params, unc, rw, target.r, g, gcalc, structure)


def with_window(cfg: ScreenConfig, **changes) -> ScreenConfig:
    """``cfg`` with some fields replaced (validated again)."""
    return replace(cfg, **changes)
