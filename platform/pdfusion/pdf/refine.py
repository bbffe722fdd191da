"""Fit a structure model to a measured PDF by least squares, as PDFgui does.

    from pdfusion.pdf.refine import fit_periodic, fit_particle
    res = fit_periodic(Crystal.from_cif("Ni.cif"), r, g, qmin=0.5, qmax=25.0, rmax=50.0)
    print(res.table())            # value ± standard uncertainty per parameter, Rw
    res = fit_particle(particle, r, g, qmax=25.0, qdamp=0.045, qbroad=0.017)   # a finite cluster (Debye)

The model, on the data's own r points inside the fit window [rmin, rmax]:

    G_calc(r) = scale · G_sim(r; structure, Uiso per element, δ1, δ2, Qdamp, Qbroad, Qmin, Qmax, spdiameter)

with G_sim the periodic attenuated-crystal model (``pdfusion.pdf.periodic``) for a crystal or the Debye
equation in real space (``pdfusion.pdf.realspace.ParticleModel``, srreal DebyePDFCalculator semantics plus
per-element Uiso and Qbroad) for a finite particle. The structure changes by an isotropic expansion
(particle; a periodic cell may use it too) or by the lattice parameters its crystal system allows (periodic),
and, for a particle, optionally by every atom position.

Least squares: ``scipy.optimize.least_squares`` (trust-region reflective, bounds) on the residual
G_calc − G_obs, with the Jacobian from torch forward-mode autograd (one pass per free parameter). Atom positions
are refined by torch L-BFGS on the same sum of squares (reverse mode), between two least-squares rounds.

Conventions (PDFgui):
- Rw = sqrt(Σ w (G_obs − G_calc)² / Σ w G_obs²) over the window, neither curve normalised; w = 1 (default) or
  1/dG² with ``weights='dg'``.
- standard uncertainties = sqrt(diag((JᵀJ)⁻¹)·χ²_red), χ²_red = Σ w·res² / (M − P). Data sampled more finely
  than the Nyquist step π/Qmax are correlated point to point, so the uncertainties are multiplied by
  sqrt(oversampling) = sqrt((π/Qmax)/dr): the values PDFgui reports on a Nyquist grid (``meta['oversampling']``).
- Uiso in Å² (Biso = 8π²·Uiso), δ1 in Å, δ2 in Å², Qdamp, Qbroad in Å⁻¹, spdiameter in Å.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor

from pdfusion.config import PARTICLE_EXPANSION, FitConfig  # noqa: F401  (PARTICLE_EXPANSION re-exported)
from pdfusion.pdf.periodic import (
    DEFAULT_UISO,
    LATTICE_NAMES,
    Crystal,
    PeriodicModel,
    as_crystal,
    lattice_family,
)
from pdfusion.pdf.realspace import DTYPE, ParticleModel
from pdfusion.structures.particle import Particle

FREE_PARTICLE = ("scale", "expansion", "uiso", "delta2")
FREE_PERIODIC = ("scale", "lattice", "uiso", "delta2", "qdamp", "qbroad")
SCALAR_PARAMS = ("scale", "delta1", "delta2", "qdamp", "qbroad", "spdiameter")
LENGTH_RANGE = 0.05  # lattice lengths / expansion may change by at most ±5 % in a periodic fit
START_IF_ZERO = {"qdamp": 0.01, "qbroad": 0.01}  # free parameters whose derivative vanishes at 0
BOUNDS = {"scale": (-np.inf, np.inf), "delta1": (0.0, 10.0), "delta2": (0.0, 100.0), "qdamp": (0.0, 1.0),
          "qbroad": (0.0, 1.0), "spdiameter": (2.0, 1e5), "uiso": (1e-6, 1.0)}
SPIKE_MADS = 30.0
MAX_WARN = 5


class FitWarning(UserWarning):
    """Something about the data or the fit the user should look at (the fit still ran)."""


@dataclass
class FitResult:
    """A finished refinement. ``params`` holds every model parameter (free and fixed) by name: 'scale',
    'expansion' or the lattice parameters ('a', ...), 'uiso_<El>' (Å²), 'delta1', 'delta2', 'qdamp', 'qbroad',
    'spdiameter'; ``uncertainties`` the standard uncertainty of each free one."""

    params: dict[str, float]
    uncertainties: dict[str, float]
    rw: float
    r: np.ndarray
    gobs: np.ndarray
    gcalc: np.ndarray
    gdiff: np.ndarray
    structure: Particle | Crystal
    free: list[str]
    chi2_red: float = float("nan")
    nfev: int = 0
    message: str = ""
    warnings: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def table(self) -> str:
        """The parameters as a text table: name, value ± uncertainty (free) or value (fixed), and Rw."""
        lines = [f"{'parameter':<14} {'value':>14}   uncertainty"]
        for name, value in self.params.items():
            if name in self.uncertainties:
                lines.append(f"{name:<14} {value:>14.6g} ± {_fmt_unc(self.uncertainties[name])}")
            else:
                lines.append(f"{name:<14} {value:>14.6g}   (fixed)")
        for name, value in self.meta.get("derived", {}).items():
            unc = self.meta.get("derived_uncertainties", {}).get(name)
            tail = f"± {_fmt_unc(unc)}" if unc is not None else "  (derived)"
            lines.append(f"{name:<14} {value:>14.6g} {tail}")
        lines.append(f"{'Rw':<14} {self.rw:>14.5f}   ({len(self.r)} points, r = {self.r[0]:.3f}..{self.r[-1]:.3f} Å)")
        return "\n".join(lines)

    def to_json(self) -> dict:
        """Everything but the curves, as plain JSON types."""
        out = {"model": self.meta.get("model"), "rw": float(self.rw), "chi2_red": _num(self.chi2_red),
               "params": {k: float(v) for k, v in self.params.items()},
               "uncertainties": {k: _num(v) for k, v in self.uncertainties.items()},
               "free": list(self.free), "nfev": int(self.nfev), "message": self.message,
               "warnings": list(self.warnings), "n_points": int(len(self.r)),
               "r_window": [float(self.r[0]), float(self.r[-1])] if len(self.r) else None}
        for key, value in self.meta.items():
            if key != "model":
                out[key] = _jsonable(value)
        return out


def _fmt_unc(u) -> str:
    return "nan" if u is None or not np.isfinite(u) else f"{u:.2g}"


def _num(x):
    x = float(x)
    return x if math.isfinite(x) else None


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float):
        return _num(x)
    return x


def rw(gobs, gcalc, weights=None) -> float:
    """PDFgui's Rw = sqrt(Σ w (G_obs − G_calc)² / Σ w G_obs²); w = 1 without ``weights``."""
    gobs, gcalc = np.asarray(gobs, dtype=np.float64), np.asarray(gcalc, dtype=np.float64)
    w = np.ones_like(gobs) if weights is None else np.asarray(weights, dtype=np.float64)
    den = float((w * gobs**2).sum())
    if den <= 0:
        raise ValueError("rw: G_obs is zero everywhere in the window")
    return math.sqrt(float((w * (gobs - gcalc) ** 2).sum()) / den)


# --------------------------------------------------------------------------------------------------
# data checks
# --------------------------------------------------------------------------------------------------
@dataclass
class _Data:
    r: np.ndarray
    g: np.ndarray
    w: np.ndarray  # least-squares weights (1 or 1/dG²), on the window
    dr: float
    warnings: list[str]


def _warn(msgs: list[str], text: str) -> None:
    msgs.append(text)
    warnings.warn(text, FitWarning, stacklevel=3)


def prepare_data(r, g, dg=None, *, rmin: float = 1.5, rmax: float | None = None, weights: str = "unit",
                 n_free: int = 1, nyquist_qmax: float | None = None) -> _Data:
    """Validate (r, G[, dG]) and cut the fit window; ValueError with a one-line reason when unusable.

    With ``nyquist_qmax`` the window is resampled (cubic spline) onto rmin + k·π/Qmax, as PDFgui fits."""
    try:
        r = np.asarray(r, dtype=np.float64).reshape(-1)
        g = np.asarray(g, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"data: r and G must be numbers ({exc})") from None
    msgs: list[str] = []
    if r.shape != g.shape:
        raise ValueError(f"data: {r.size} r values but {g.size} G values; give one G per r")
    if r.size < 2:
        raise ValueError(f"data: needs at least 2 points, got {r.size}")
    if not np.all(np.isfinite(r)):
        i = int(np.flatnonzero(~np.isfinite(r))[0])
        raise ValueError(f"data: r[{i}] is {r[i]}; every r must be finite")
    steps = np.diff(r)
    if np.any(steps <= 0):
        i = int(np.flatnonzero(steps <= 0)[0]) + 1
        how = "repeats" if steps[i - 1] == 0 else "is smaller than"
        raise ValueError(f"data: r[{i}] = {r[i]:g} {how} r[{i - 1}] = {r[i - 1]:g}; r must be strictly increasing "
                         "(sort the rows, drop duplicates)")
    if r[0] < 0:
        raise ValueError(f"data: r starts at {r[0]:g} Å; r must be >= 0")
    lo = float(rmin)
    hi = float(r[-1]) if rmax is None else float(rmax)
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        raise ValueError(f"fit window: need rmin < rmax, got rmin = {lo:g}, rmax = {hi:g} Å")
    sel = (r >= lo - 1e-9) & (r <= hi + 1e-9)
    n = int(sel.sum())
    if n < n_free + 2:
        raise ValueError(f"fit window [{lo:g}, {hi:g}] Å holds {n} data point(s), need at least {n_free + 2} for "
                         f"{n_free} free parameter(s); the data cover r = {r[0]:g}..{r[-1]:g} Å")
    bad = np.flatnonzero(sel & ~np.isfinite(g))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"data: G at r = {r[i]:g} Å (point {i}) is {g[i]}; {bad.size} non-finite G value(s) in the "
                         "fit window -- remove them or re-export the PDF")
    if np.any(~np.isfinite(g)):
        _warn(msgs, f"data: {int((~np.isfinite(g)).sum())} non-finite G value(s) outside the fit window ignored")
    if dg is not None:
        dg = np.asarray(dg, dtype=np.float64).reshape(-1)
        if dg.shape != r.shape:
            raise ValueError(f"data: {dg.size} dG values but {r.size} r values")
    if weights == "dg":
        if dg is None:
            raise ValueError("weights='dg' needs dG values; the data have none (use weights='unit')")
        dgw = dg[sel]
        if not np.all(np.isfinite(dgw)) or np.any(dgw <= 0):
            raise ValueError("data: dG must be finite and > 0 everywhere in the fit window to weight by 1/dG²")
        w = 1.0 / dgw**2
    elif weights == "unit":
        w = np.ones(n)
    else:
        raise ValueError(f"weights: must be 'unit' or 'dg', got {weights!r}")
    rw_, gw = r[sel], g[sel]
    if nyquist_qmax is not None:
        from scipy.interpolate import CubicSpline

        step = math.pi / float(nyquist_qmax)
        rn = lo + step * np.arange(int(math.floor((min(hi, r[-1]) - max(lo, r[0])) / step + 1e-9)) + 1)
        rn = rn[(rn >= r[0] - 1e-9) & (rn <= r[-1] + 1e-9)]
        if rn.size < n_free + 2:
            raise ValueError(f"fit window [{lo:g}, {hi:g}] Å holds {rn.size} Nyquist point(s) (step {step:.4g} Å), "
                             f"need at least {n_free + 2}")
        ok = np.isfinite(g)
        gw = CubicSpline(r[ok], g[ok])(rn)
        w = np.interp(rn, rw_, w)
        rw_ = rn
        n = rn.size
    if not np.any(gw != 0):
        raise ValueError(f"data: G is zero everywhere in the fit window [{lo:g}, {hi:g}] Å")
    dr = float(np.median(np.diff(rw_)))
    _check_spikes(rw_, gw, dr, msgs)
    return _Data(rw_, gw, w, dr, msgs)


def _check_spikes(r: np.ndarray, g: np.ndarray, dr: float, msgs: list[str]) -> None:
    """Warn about isolated single-point spikes (finely sampled data only: a real peak spans many points)."""
    if len(g) < 9 or dr > 0.05:
        return
    from scipy.ndimage import median_filter

    dev = g - median_filter(g, size=5, mode="nearest")
    mad = float(np.median(np.abs(dev))) * 1.4826
    scale = float(np.ptp(g))
    if scale <= 0:
        return
    spikes = np.flatnonzero((np.abs(dev) > SPIKE_MADS * max(mad, 1e-12)) & (np.abs(dev) > 0.2 * scale))
    if spikes.size:
        k = int(spikes[np.argmax(np.abs(dev[spikes]))])
        _warn(msgs, f"data: {spikes.size} isolated spike(s) in G, the largest {dev[k]:+.3g} at r = {r[k]:.3f} Å; "
                    "check the data (the fit treats them as signal)")


# --------------------------------------------------------------------------------------------------
# parameters
# --------------------------------------------------------------------------------------------------
@dataclass
class _Spec:
    values: dict[str, float]  # every model parameter, initial values
    bounds: dict[str, tuple[float, float]]
    free: list[str]


def _element_symbols(z_types) -> list[str]:
    from pymatgen.core import Element

    return [Element.from_Z(int(z)).symbol for z in z_types]


def _expand_free(free: Sequence[str], *, symbols: list[str], lattice_names: list[str], allowed: set[str],
                 kind: str) -> list[str]:
    if isinstance(free, str):
        free = [f.strip() for f in free.split(",") if f.strip()]
    out: list[str] = []
    for name in free:
        key = name.strip()
        low = key.lower()
        if low in ("uiso", "biso"):
            names = [f"uiso_{s}" for s in symbols]
        elif low.startswith(("uiso_", "biso_")):
            sym = key[5:]
            if sym not in symbols:
                raise ValueError(f"free: {key!r} names element {sym!r}, which the structure does not contain "
                                 f"({', '.join(symbols)})")
            names = [f"uiso_{sym}"]
        elif low == "lattice":
            if "lattice" not in allowed:
                raise ValueError(f"free: 'lattice' applies to a periodic fit; a {kind} refines 'expansion'")
            names = list(lattice_names)
        elif low in LATTICE_NAMES:
            if "lattice" not in allowed:
                raise ValueError(f"free: {key!r} applies to a periodic fit; a {kind} refines 'expansion'")
            if low not in lattice_names:
                raise ValueError(f"free: lattice parameter {key!r} is fixed or tied by the cell's symmetry; "
                                 f"the free ones are {', '.join(lattice_names)} (or say 'lattice')")
            names = [low]
        elif low in allowed:
            names = [low]
        else:
            raise ValueError(f"free: unknown parameter {key!r} for a {kind} fit; choose from "
                             f"{', '.join(sorted(allowed | {'uiso', 'uiso_<El>'}))}")
        for n in names:
            if n not in out:
                out.append(n)
    if "expansion" in out and any(n in LATTICE_NAMES for n in out):
        raise ValueError("free: give 'expansion' or lattice parameters, not both")
    if not out:
        raise ValueError("free: no parameter to refine")
    return out


def _apply_init(values: dict[str, float], init: dict | None, symbols: list[str]) -> None:
    for key, v in (init or {}).items():
        try:
            v = float(v)
        except (TypeError, ValueError):
            raise ValueError(f"init: {key!r} must be a number, got {v!r}") from None
        if not math.isfinite(v):
            raise ValueError(f"init: {key!r} is {v}; initial values must be finite")
        low = key.lower()
        if low in ("uiso", "biso"):
            for s in symbols:
                values[f"uiso_{s}"] = v / (8 * math.pi**2) if low == "biso" else v
        elif low.startswith(("uiso_", "biso_")):
            sym = key[5:]
            if f"uiso_{sym}" not in values:
                raise ValueError(f"init: {key!r} names an element the structure does not contain "
                                 f"({', '.join(symbols)})")
            values[f"uiso_{sym}"] = v / (8 * math.pi**2) if low.startswith("biso") else v
        elif low in values:
            values[low] = v
        else:
            raise ValueError(f"init: unknown parameter {key!r}; known: {', '.join(sorted(values))}")


def _check_bounds(spec: _Spec, msgs: list[str]) -> None:
    """Free starting values outside their range are moved to the nearest bound (with a warning)."""
    for name, v in spec.values.items():
        lo, hi = spec.bounds.get(name, (-np.inf, np.inf))
        if name in spec.free and not (lo <= v <= hi):
            spec.values[name] = float(np.clip(v, lo, hi))
            _warn(msgs, f"init: {name} = {v:g} is outside its allowed range [{lo:g}, {hi:g}]; starting at "
                        f"{spec.values[name]:g}")


# --------------------------------------------------------------------------------------------------
# the least-squares engine
# --------------------------------------------------------------------------------------------------
class _NonFinite(Exception):
    def __init__(self, x):
        super().__init__("non-finite")
        self.x = x


def _least_squares(evaluate: Callable[[dict[str, Tensor]], Tensor], spec: _Spec, data: _Data, max_nfev: int):
    """Run scipy least_squares over spec.free; returns (x, J (unweighted), nfev, message, status)."""
    from scipy.optimize import least_squares

    names = spec.free
    fixed = {k: torch.tensor(v, dtype=DTYPE) for k, v in spec.values.items() if k not in names}
    sqrt_w = np.sqrt(data.w)
    gobs = data.g

    def full(xt: Tensor) -> dict[str, Tensor]:
        v = dict(fixed)
        v.update({n: xt[k] for k, n in enumerate(names)})
        return v

    last_good = {"x": np.array([spec.values[n] for n in names], dtype=np.float64)}

    def fun(x):
        with torch.no_grad():
            gc = evaluate(full(torch.as_tensor(x, dtype=DTYPE))).numpy()
        if not np.all(np.isfinite(gc)):
            raise _NonFinite(np.array(x))
        last_good["x"] = np.array(x)
        return (gc - gobs) * sqrt_w

    def jac(x):
        return _jacobian(lambda xt: evaluate(full(xt)), x) * sqrt_w[:, None]

    x0 = np.array([spec.values[n] for n in names], dtype=np.float64)
    lb = np.array([spec.bounds.get(n, (-np.inf, np.inf))[0] for n in names])
    ub = np.array([spec.bounds.get(n, (-np.inf, np.inf))[1] for n in names])
    x0 = np.clip(x0, lb, ub)
    try:
        sol = least_squares(fun, x0, jac=jac, bounds=(lb, ub), x_scale="jac", method="trf", max_nfev=max_nfev,
                            ftol=1e-10, xtol=1e-10, gtol=1e-10)
    except _NonFinite as exc:
        raise ValueError(_nonfinite_message(evaluate, full, names, exc.x, last_good["x"])) from None
    jw = jac(sol.x)
    if not np.all(np.isfinite(jw)):
        k = int(np.flatnonzero(~np.all(np.isfinite(jw), axis=0))[0])
        raise ValueError(f"fit: the derivative of G_calc with respect to {names[k]} is not finite at "
                         f"{names[k]} = {sol.x[k]:g}; fix it or change its starting value")
    return sol.x, jw, int(sol.nfev), str(sol.message), int(sol.status)


def _nonfinite_message(evaluate, full, names, x_bad, x_good) -> str:
    """Name the parameter whose trial value makes G_calc non-finite (one parameter moved at a time)."""
    for k, n in enumerate(names):
        x = np.array(x_good, dtype=np.float64)
        x[k] = x_bad[k]
        with torch.no_grad():
            gc = evaluate(full(torch.as_tensor(x, dtype=DTYPE)))
        if not bool(torch.isfinite(gc).all()):
            return (f"fit: G_calc became non-finite at {n} = {x_bad[k]:g} (last finite value {x_good[k]:g}); "
                    f"fix {n} or give it a better starting value")
    vals = ", ".join(f"{n}={v:g}" for n, v in zip(names, x_bad, strict=True))
    return f"fit: G_calc became non-finite at {vals}; fix some parameters or give better starting values"


def _jacobian(fn: Callable[[Tensor], Tensor], x: np.ndarray) -> np.ndarray:
    """d fn / d x (M, P) by forward-mode autograd, one dual pass per parameter."""
    xt = torch.as_tensor(np.asarray(x, dtype=np.float64), dtype=DTYPE)
    cols = []
    with warnings.catch_warnings():  # torch's first make_dual() scripts its jvp decompositions (deprecated API)
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=DeprecationWarning)
        with fwAD.dual_level():
            for k in range(len(xt)):
                tangent = torch.zeros_like(xt)
                tangent[k] = 1.0
                out = fn(fwAD.make_dual(xt, tangent))
                t = fwAD.unpack_dual(out).tangent
                cols.append(torch.zeros_like(fwAD.unpack_dual(out).primal) if t is None else t)
    return torch.stack(cols, 1).detach().numpy()


def _uncertainties(jw: np.ndarray, res_w: np.ndarray, names: list[str], oversampling: float,
                   msgs: list[str]) -> tuple[dict[str, float], float]:
    m, p = jw.shape
    dof = max(m - p, 1)
    chi2_red = float((res_w**2).sum()) / dof
    jtj = jw.T @ jw
    zero = [names[k] for k in range(p) if not np.any(jw[:, k] != 0)]
    for n in zero:
        _warn(msgs, f"fit: {n} does not change G_calc in the window; its uncertainty is undefined (fix it)")
    inv = np.linalg.pinv(jtj, rcond=1e-12, hermitian=True)
    unc = np.sqrt(np.clip(np.diag(inv), 0, None) * chi2_red * oversampling)
    out = {n: (float("nan") if n in zero else float(u)) for n, u in zip(names, unc, strict=True)}
    d = np.sqrt(np.clip(np.diag(inv), 1e-300, None))
    corr = inv / np.outer(d, d)
    worst = [(abs(corr[i, j]), names[i], names[j]) for i in range(p) for j in range(i + 1, p)]
    worst = [w for w in worst if w[0] > 0.98]
    for c, a, b in sorted(worst, reverse=True)[:2]:
        _warn(msgs, f"fit: {a} and {b} are {c:.3f} correlated; their uncertainties are large -- consider fixing one")
    return out, chi2_red


def _oversampling(dr: float, qmax: float | None) -> float:
    if qmax is None or not qmax > 0 or dr <= 0:
        return 1.0
    return max(1.0, (math.pi / qmax) / dr)


def _auto_scale(evaluate, spec: _Spec, data: _Data) -> None:
    """Start 'scale' at the linear least-squares optimum of the initial model (when not given)."""
    v = {k: torch.tensor(x, dtype=DTYPE) for k, x in spec.values.items()}
    v["scale"] = torch.tensor(1.0, dtype=DTYPE)
    with torch.no_grad():
        g1 = evaluate(v).numpy()
    den = float((data.w * g1 * g1).sum())
    if den > 0 and np.all(np.isfinite(g1)):
        s = float((data.w * g1 * data.g).sum()) / den
        if math.isfinite(s) and s != 0:
            spec.values["scale"] = s


def _finish(evaluate, spec: _Spec, data: _Data, x, jw, nfev, message, qmax, t0, model_kind) -> dict:
    names = spec.free
    values = dict(spec.values)
    for n, v in zip(names, x, strict=True):
        lo, hi = spec.bounds.get(n, (-np.inf, np.inf))
        for b in (lo, hi):  # trust-region steps stop a hair inside a bound: report the bound
            if np.isfinite(b) and abs(v - b) <= 1e-10 * max(1.0, abs(b)):
                v = b
        values[n] = float(v)
    with torch.no_grad():
        gcalc = evaluate({k: torch.tensor(v, dtype=DTYPE) for k, v in values.items()}).numpy()
    res_w = (gcalc - data.g) * np.sqrt(data.w)
    over = _oversampling(data.dr, qmax)
    unc, chi2 = _uncertainties(jw, res_w, names, over, data.warnings)
    for n in names:
        lo, hi = spec.bounds.get(n, (-np.inf, np.inf))
        v = values[n]
        if (np.isfinite(lo) and abs(v - lo) <= 1e-9 * max(1.0, abs(lo))) or \
           (np.isfinite(hi) and abs(v - hi) <= 1e-9 * max(1.0, abs(hi))):
            _warn(data.warnings, f"fit: {n} = {v:g} ended at its bound; the structure or the window may be wrong")
    score = rw(data.g, gcalc, data.w)
    return {"values": values, "unc": unc, "gcalc": gcalc, "rw": score, "chi2": chi2, "over": over,
            "seconds": time.perf_counter() - t0, "nfev": nfev, "message": message, "model": model_kind}


def _order(values: dict[str, float]) -> dict[str, float]:
    """scale, expansion / lattice, uiso_*, delta1, delta2, qdamp, qbroad, spdiameter."""
    head = ["scale", "expansion", *LATTICE_NAMES]
    tail = ["delta1", "delta2", "qdamp", "qbroad", "spdiameter"]
    keys = [k for k in head if k in values] + sorted(k for k in values if k.startswith("uiso_"))
    keys += [k for k in tail if k in values]
    keys += [k for k in values if k not in keys]
    return {k: values[k] for k in keys}


def _result(fin: dict, data: _Data, structure, spec: _Spec, meta: dict) -> FitResult:
    fin["values"] = _order(fin["values"])
    meta = {"model": fin["model"], "oversampling": fin["over"], "seconds": round(fin["seconds"], 3), **meta}
    biso = {f"biso_{k[5:]}": 8 * math.pi**2 * v for k, v in fin["values"].items() if k.startswith("uiso_")}
    meta.setdefault("derived", {}).update(biso)
    meta.setdefault("derived_uncertainties", {}).update(
        {f"biso_{k[5:]}": 8 * math.pi**2 * u for k, u in fin["unc"].items() if k.startswith("uiso_")})
    return FitResult(params=fin["values"], uncertainties=fin["unc"], rw=fin["rw"], r=data.r, gobs=data.g,
                     gcalc=fin["gcalc"], gdiff=data.g - fin["gcalc"], structure=structure, free=list(spec.free),
                     chi2_red=fin["chi2"], nfev=fin["nfev"], message=fin["message"], warnings=list(data.warnings),
                     meta=meta)


def _common_values(symbols, uiso0, qdamp, qbroad, spdiameter) -> tuple[dict, dict]:
    values: dict[str, float] = {"scale": 1.0}
    bounds = dict(BOUNDS)
    for s in symbols:
        values[f"uiso_{s}"] = float(uiso0.get(s, DEFAULT_UISO))
        bounds[f"uiso_{s}"] = BOUNDS["uiso"]
    values.update({"delta1": 0.0, "delta2": 0.0, "qdamp": float(qdamp), "qbroad": float(qbroad)})
    if spdiameter is not None:
        values["spdiameter"] = float(spdiameter)
    return values, bounds


def _nudge_zero_starts(spec: _Spec, init: dict | None) -> None:
    given = {k.lower() for k in (init or {})}
    for name, start in START_IF_ZERO.items():
        if name in spec.free and spec.values.get(name, 0.0) == 0.0 and name not in given:
            spec.values[name] = start


def _fit_config(cfg: FitConfig | None, options: dict[str, Any]) -> FitConfig:
    """``cfg`` (default FitConfig()) with keyword ``options`` applied (validated); unknown names are refused."""
    cfg = FitConfig() if cfg is None else cfg
    if not isinstance(cfg, FitConfig):
        raise TypeError(f"cfg: expected a FitConfig, got {type(cfg).__name__}")
    known = {f.name for f in dataclasses.fields(FitConfig)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"unknown fit option(s) {unknown}; FitConfig has {sorted(known)}")
    return dataclasses.replace(cfg, **options) if options else cfg


def _setup(values: dict, bounds: dict, names: list[str], init: dict | None, symbols: list[str], r, g, dg,
           cfg: FitConfig) -> tuple[_Spec, _Data]:
    """Starting values (``init``, nudged off zero), the data window, and starts clipped into their bounds."""
    _apply_init(values, init, symbols)
    spec = _Spec(values, bounds, names)
    _nudge_zero_starts(spec, init)
    data = prepare_data(r, g, dg, rmin=cfg.rmin, rmax=cfg.rmax, weights=cfg.weights, n_free=len(names),
                        nyquist_qmax=cfg.qmax if cfg.nyquist else None)
    _check_bounds(spec, data.warnings)
    return spec, data


def _check_qrange(qmin: float, qmax: float | None) -> None:
    if qmax is None or not math.isfinite(float(qmax)) or float(qmax) <= 0:
        raise ValueError(f"qmax: must be a positive number (the Qmax the PDF was computed with), got {qmax}")
    if not math.isfinite(float(qmin)) or qmin < 0 or qmin >= qmax:
        raise ValueError(f"qmin: must satisfy 0 <= qmin < qmax = {qmax:g}, got {qmin}")


# --------------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------------
def fit_periodic(cell, r, g, cfg: FitConfig | None = None, *, init: dict | None = None, dg=None,
                 **options) -> FitResult:
    """Refine a crystal (Crystal, pymatgen Structure or CIF path) against G(r) with the periodic model.

    Options come from ``cfg`` (:class:`pdfusion.config.FitConfig`), any of its fields given as keywords replacing
    its values (``qmax`` must be given one way or the other). ``free`` names the refined parameters (default
    FREE_PERIODIC): any of 'scale', 'lattice' (the lattice parameters the crystal system allows: 'a', 'c', ...) or
    'expansion' (isotropic), 'uiso' (every element) or 'uiso_<El>', 'delta1', 'delta2', 'qdamp', 'qbroad',
    'spdiameter' (needs a starting ``spdiameter``). The rest stay at ``init`` (same names; 'biso'/'biso_<El>'
    accepted) or the defaults: the cell's lattice, Uiso 0.005 Å², δ1 = δ2 = 0, and ``qdamp``/``qbroad``. Scale
    starts at its linear optimum unless given. ``convention='pdffit2'`` uses PDFgui's engine instead of srreal's
    PDFCalculator (``pdfusion.pdf.periodic``); ``nyquist=True`` fits the data resampled onto the Nyquist grid
    rmin + k·π/Qmax, as PDFgui does."""
    cfg = _fit_config(cfg, options)
    free = cfg.free if cfg.free is not None else FREE_PERIODIC
    qmin, qmax, qdamp, qbroad, spdiameter = cfg.qmin, cfg.qmax, cfg.qdamp, cfg.qbroad, cfg.spdiameter
    radiation, convention = cfg.radiation, cfg.convention
    t0 = time.perf_counter()
    _check_qrange(qmin, qmax)
    crystal = as_crystal(cell)
    free_list = [free] if isinstance(free, str) else list(free)
    mode = "expansion" if any(str(f).lower() == "expansion" for f in free_list) or \
        "expansion" in {k.lower() for k in (init or {})} else "lattice"
    family = lattice_family(crystal, mode)
    z_types = np.unique(crystal.numbers)
    symbols = _element_symbols(z_types)
    uiso0 = {}
    if crystal.uiso is not None:
        for z, s in zip(z_types, symbols, strict=True):
            uiso0[s] = float(np.mean(crystal.uiso[crystal.numbers == z]))
    values, bounds = _common_values(symbols, uiso0, qdamp, qbroad, spdiameter)
    lat0 = np.array(crystal.lattice_parameters)
    for name, idx in family.groups:
        if name == "expansion":
            values[name], bounds[name] = 1.0, (1 - LENGTH_RANGE, 1 + LENGTH_RANGE)
        elif idx[0] < 3:
            values[name] = float(lat0[idx[0]])
            bounds[name] = (values[name] * (1 - LENGTH_RANGE), values[name] * (1 + LENGTH_RANGE))
        else:
            values[name], bounds[name] = float(lat0[idx[0]]), (max(5.0, lat0[idx[0]] - 20),
                                                               min(175.0, lat0[idx[0]] + 20))
    allowed = {"scale", "lattice", "expansion", "delta1", "delta2", "qdamp", "qbroad", "spdiameter"}
    names = _expand_free(free_list, symbols=symbols, lattice_names=family.names if mode == "lattice" else [],
                         allowed=allowed, kind="periodic")
    if "spdiameter" in names and spdiameter is None and "spdiameter" not in {k.lower() for k in (init or {})}:
        raise ValueError("free: 'spdiameter' needs a starting value (spdiameter=... or init={'spdiameter': ...})")
    if init and "spdiameter" in {k.lower() for k in init} and "spdiameter" not in values:
        values["spdiameter"] = float(dict((k.lower(), v) for k, v in init.items())["spdiameter"])
    spec, data = _setup(values, bounds, names, init, symbols, r, g, dg, cfg)
    u0 = max(v for k, v in spec.values.items() if k.startswith("uiso_"))
    model = PeriodicModel(crystal, data.r, qmin=qmin, qmax=qmax, radiation=radiation, mode=mode,
                          max_expansion=1.0 / (1 - LENGTH_RANGE), max_uiso=max(0.05, 4 * u0),
                          max_qbroad=max(0.03, 2 * spec.values["qbroad"]), min_distance=cfg.min_distance,
                          convention=convention, data_step=data.dr)
    fam_names = [n for n, _ in model.family.groups]

    def evaluate(v: dict[str, Tensor]) -> Tensor:
        lat6 = model.lattice({n: v[n] for n in fam_names if n in v})
        uiso = torch.stack([v[f"uiso_{s}"] for s in symbols])
        return model(scale=v["scale"], lattice=lat6, uiso=uiso, delta1=v["delta1"], delta2=v["delta2"],
                     qdamp=v["qdamp"], qbroad=v["qbroad"], spdiameter=v.get("spdiameter"))

    if "scale" not in {k.lower() for k in (init or {})}:
        _auto_scale(evaluate, spec, data)
    x, jw, nfev, message, _ = _least_squares(evaluate, spec, data, cfg.max_nfev)
    fin = _finish(evaluate, spec, data, x, jw, nfev, message, qmax, t0, "periodic")
    vals = fin["values"]
    lat6 = model.lattice({n: vals[n] for n in fam_names}).numpy()
    refined = crystal.with_lattice_parameters(lat6)
    refined.uiso = np.array([vals[f"uiso_{symbols[int(np.searchsorted(z_types, z))]}"] for z in crystal.numbers])
    derived, dunc = {}, {}
    for k, name in enumerate(LATTICE_NAMES):
        derived[name] = float(lat6[k])
        src = next((n for n, idx in model.family.groups if k in idx), None)
        if src is not None and src in fin["unc"]:
            dunc[name] = fin["unc"][src] * (lat0[k] if src == "expansion" else 1.0)
    derived["volume"] = refined.volume
    meta = {"qmin": float(qmin), "qmax": float(qmax), "rmin": float(data.r[0]), "rmax": float(data.r[-1]),
            "radiation": radiation, "weights": cfg.weights, "convention": convention, "nyquist": cfg.nyquist,
            "lattice_system": model.family.system,
            "n_shells": int(len(model.shells.weight)), "n_pairs": int(model.shells.n_pairs),
            "derived": {k: v for k, v in derived.items() if k not in vals}, "derived_uncertainties": dunc,
            "formula": crystal.meta.get("formula", "")}
    return _result(fin, data, refined, spec, meta)


def fit_particle(particle: Particle, r, g, cfg: FitConfig | None = None, *, init: dict | None = None, dg=None,
                 **options) -> FitResult:
    """Refine a finite particle against G(r) with the Debye model (srreal DebyePDFCalculator semantics, every
    pair summed).

    Options as :func:`fit_periodic` (``cfg`` and/or FitConfig fields as keywords). ``free`` (default
    FREE_PARTICLE): any of 'scale', 'expansion' (bounded by ``expansion_bounds``, default 0.8–1.25), 'uiso' /
    'uiso_<El>', 'delta1', 'delta2', 'qdamp', 'qbroad', 'positions' (every atom, by L-BFGS between two
    least-squares rounds; reported as an rms shift). Fixed parameters stay at ``init`` or the defaults
    (expansion 1, Uiso 0.005 Å², δ = 0, ``qdamp``, ``qbroad``)."""
    cfg = _fit_config(cfg, options)
    if cfg.spdiameter is not None:
        raise ValueError("spdiameter: applies to periodic fits (a particle model has its own shape)")
    free = cfg.free if cfg.free is not None else FREE_PARTICLE
    qmin, qmax, qdamp, qbroad, radiation = cfg.qmin, cfg.qmax, cfg.qdamp, cfg.qbroad, cfg.radiation
    t0 = time.perf_counter()
    _check_qrange(qmin, qmax)
    if not isinstance(particle, Particle):
        raise TypeError(f"particle: expected a pdfusion Particle, got {type(particle).__name__}")
    z_types = np.unique(particle.numbers)
    symbols = _element_symbols(z_types)
    values, bounds = _common_values(symbols, {}, qdamp, qbroad, None)
    values["expansion"] = 1.0
    bounds["expansion"] = cfg.expansion_bounds
    allowed = {"scale", "expansion", "delta1", "delta2", "qdamp", "qbroad", "positions"}
    names = _expand_free(free, symbols=symbols, lattice_names=[], allowed=allowed, kind="particle")
    move = "positions" in names
    names = [n for n in names if n != "positions"]
    if move and not names:
        names = ["scale"]
    spec, data = _setup(values, bounds, names, init, symbols, r, g, dg, cfg)
    positions = np.array(particle.positions, dtype=np.float64)

    def build(pos):
        return ParticleModel(particle.numbers, pos, data.r, qmin=qmin, qmax=qmax, radiation=radiation,
                             max_expansion=cfg.expansion_bounds[1], min_distance=cfg.min_distance)

    model = build(positions)

    def make_eval(m):
        def evaluate(v: dict[str, Tensor]) -> Tensor:
            uiso = torch.stack([v[f"uiso_{s}"] for s in symbols])
            return m(scale=v["scale"], expansion=v["expansion"], uiso=uiso, delta1=v["delta1"],
                     delta2=v["delta2"], qdamp=v["qdamp"], qbroad=v["qbroad"])
        return evaluate

    evaluate = make_eval(model)
    if "scale" not in {k.lower() for k in (init or {})}:
        _auto_scale(evaluate, spec, data)
    x, jw, nfev, message, _ = _least_squares(evaluate, spec, data, cfg.max_nfev)
    shift = 0.0
    if move:
        spec.values.update({n: float(v) for n, v in zip(names, x, strict=True)})
        positions, extra = _refine_positions(particle, positions, spec, data, symbols, cfg)
        nfev += extra
        shift = float(np.sqrt(((positions - particle.positions) ** 2).sum(1).mean()))
        model = build(positions)
        evaluate = make_eval(model)
        x, jw, nfev2, message, _ = _least_squares(evaluate, spec, data, cfg.max_nfev)
        nfev += nfev2
    fin = _finish(evaluate, spec, data, x, jw, nfev, message, qmax, t0, "particle")
    if move:
        spec.free = [*names, "positions"]
    vals = fin["values"]
    refined = Particle(particle.numbers.copy(), positions * vals["expansion"], dict(particle.meta))
    refined.meta.update({"fit_rw": round(fin["rw"], 6), **{k: v for k, v in vals.items() if k.startswith("uiso_")}})
    meta = {"qmin": float(qmin), "qmax": float(qmax), "rmin": float(data.r[0]), "rmax": float(data.r[-1]),
            "radiation": radiation, "weights": cfg.weights, "nyquist": cfg.nyquist, "n_atoms": len(particle),
            "formula": particle.formula}
    if move:
        meta["positions_rms_shift"] = shift
    return _result(fin, data, refined, spec, meta)


def _refine_positions(particle, positions, spec: _Spec, data: _Data, symbols, cfg: FitConfig
                      ) -> tuple[np.ndarray, int]:
    """L-BFGS on every coordinate (scale, expansion, Uiso, ... held) with a soft pair repulsion below 0.85x the
    starting shortest distance; returns the new (unexpanded) positions and the number of evaluations."""
    model = ParticleModel(particle.numbers, positions, data.r, qmin=cfg.qmin, qmax=cfg.qmax, radiation=cfg.radiation,
                          free_positions=True, max_expansion=cfg.expansion_bounds[1], min_distance=cfg.min_distance)
    v = {k: torch.tensor(x, dtype=DTYPE) for k, x in spec.values.items()}
    uiso = torch.stack([v[f"uiso_{s}"] for s in symbols])
    pos = torch.tensor(positions, dtype=DTYPE, requires_grad=True)
    gobs = torch.as_tensor(data.g, dtype=DTYPE)
    w = torch.as_tensor(data.w, dtype=DTYPE)
    dmin = 0.85 * particle.min_distance()
    iu, ju = torch.triu_indices(len(positions), len(positions), offset=1)
    norm = float((w * gobs**2).sum())
    opt = torch.optim.LBFGS([pos], lr=1.0, max_iter=cfg.position_steps, line_search_fn="strong_wolfe")
    count = {"n": 0}

    def closure():
        opt.zero_grad()
        gc = model(scale=v["scale"], expansion=v["expansion"], uiso=uiso, delta1=v["delta1"], delta2=v["delta2"],
                   qdamp=v["qdamp"], qbroad=v["qbroad"], positions=pos)
        d = torch.linalg.vector_norm(pos[iu] - pos[ju], dim=1)
        loss = (w * (gc - gobs) ** 2).sum() / norm + 10.0 * (torch.relu(dmin - d) ** 2).sum()
        if not torch.isfinite(loss):
            raise ValueError("fit: G_calc became non-finite while refining positions; fix the positions")
        loss.backward()
        count["n"] += 1
        return loss

    opt.step(closure)
    return pos.detach().numpy().copy(), count["n"]
