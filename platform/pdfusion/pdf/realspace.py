"""Real-space pair-sum PDF engine shared by the periodic (PDFgui / srreal ``PDFCalculator``) model and the
finite-particle (Debye-equivalent) model used to fit measured data, plus the finite-particle model itself.

Both models add one Gaussian per pair (or per group of pairs at one distance) to G(r) on a uniform grid
r_k = k·dr starting at 0, then apply the Q window and the envelopes, exactly as libdiffpy's PDFCalculator:

1. peak width (JeongPeakWidth): σ_ij² = (U_i + U_j)·(1 − δ1/r_ij − δ2/r_ij² + Qbroad²·r_ij²); a pair whose
   correction factor is ≤ 0 is dropped. Uiso is per element here.
2. a pair adds w_ij·N(r − r_ij; σ_ij)/r_ij (srreal normalises by the pair distance, not by r as PDFfit2),
   w_ij = f_i f_j / (N⟨f⟩²) summed over both orders (i, j) and (j, i).
3. periodic only: the number-density baseline −4πρ0·r.
4. the Q window: when Qmax < π/dr or Qmin excludes a Q point, G is sine-transformed to F(Q) (zero-padded to
   a power of two, Q step π/(n_pad·dr)), F is zeroed below Qmin and from Qmax up (termination ripples), and
   transformed back. The grid extends 6 ripples (6·2π/Qmax) beyond the last output r so the cut is clean.
5. envelopes, after the window: scale · exp(−(Qdamp·r)²/2) · sphere(r; spdiameter).
6. G on the requested r points by 4-point cubic Lagrange interpolation (exact when they lie on the grid).

For a finite particle (no baseline) steps 2+4 are the Debye equation in real space: with X-ray form factors
the per-element-pair partials are weighted by f_a(Q) f_c(Q)/⟨f(Q)⟩² in Q space, as srreal's
DebyePDFCalculator does; the periodic model uses f(Q=0) like PDFCalculator. Pair distances of a particle
are spread onto a fine distance grid (spacing ``node_step``, cubic Lagrange weights), so the cost is
independent of the number of pairs and stays differentiable in the positions.

Everything is torch, float64, differentiable (forward and reverse mode) in every continuous parameter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from pdfusion.pdf.formfactors import scattering_factors

PEAK_PRECISION = 3.33e-6  # libdiffpy DEFAULT_PEAKPRECISION
SIGMA_TO_FWHM = 2 * math.sqrt(2 * math.log(2))
HALF_BOUND_REL = math.sqrt(-math.log(PEAK_PRECISION) / (4 * math.log(2)))  # window half-width / FWHM
WINDOW_SIGMAS = HALF_BOUND_REL * SIGMA_TO_FWHM  # ≈ 5.0 σ each side
N_RIPPLES = 6
DEFAULT_DR = 0.01  # Å; the calculation grid is at least this fine
NODE_STEP = 1.0 / 256  # Å; distance-grid spacing for particle pair histograms
MIN_DISTANCE = 0.5  # Å; atoms closer than this are duplicates
PEAK_TAIL = 1.5  # Å; room past the longest pair for its Gaussian tail
_EPS = 1e-12
_CHUNK = 1 << 22  # peak-window values evaluated at once
DTYPE = torch.float64


def _lagrange4(s: Tensor | np.ndarray):
    """Cubic Lagrange weights of nodes k-1, k, k+1, k+2 at fractional position s ∈ [0, 1) past node k."""
    return (-s * (s - 1) * (s - 2) / 6, (s + 1) * (s - 1) * (s - 2) / 2,
            -(s + 1) * s * (s - 2) / 2, (s + 1) * s * (s - 1) / 6)


def _min_steps(x: float, step: float) -> int:
    """ceil(x/step), one less when x sits on the previous point (libdiffpy pdfutils_qminSteps)."""
    rv = int(math.ceil(x / step))
    if abs(x - (rv - 1) * step) <= math.sqrt(np.finfo(float).eps):
        rv -= 1
    return max(rv, 0)


@dataclass(frozen=True)
class RGrid:
    """Calculation grid r_k = k·dr (k < n), FFT length, Q window and the cubic interpolation onto ``r_out``."""

    dr: float
    n: int
    npad: int
    nqmin: int  # F(Q_k) = 0 for k < nqmin
    nqmax: int  # F(Q_k) = 0 for k >= nqmax
    window: bool  # whether the Q window changes anything (else no FFT)
    r_out: np.ndarray
    node: np.ndarray  # (M,) index k of the grid node at or below each r_out (interpolation uses k-1..k+2)
    weights: np.ndarray  # (4, M) cubic Lagrange weights

    @property
    def r(self) -> np.ndarray:
        return np.arange(self.n) * self.dr

    @property
    def qstep(self) -> float:
        return math.pi / (self.npad * self.dr)

    @property
    def q(self) -> np.ndarray:
        return np.arange(self.npad) * self.qstep

    @property
    def r_end(self) -> float:
        """Largest r on the grid (Å)."""
        return (self.n - 1) * self.dr


def choose_dr(r_out: np.ndarray) -> float:
    """Calculation step: the data step (or an integer fraction of it) when r is uniform, at most 0.01 Å."""
    if r_out.size < 2:
        return DEFAULT_DR
    steps = np.diff(r_out)
    h = float(np.median(steps))
    if h > 0 and np.all(np.abs(steps - h) <= 1e-6 * h):
        return h / math.ceil(h / DEFAULT_DR - 1e-9)
    return min(DEFAULT_DR, float(steps.min()))


def make_rgrid(r_out, *, qmin: float = 0.0, qmax: float | None = None, dr: float | None = None,
               r_extent: float = 0.0) -> RGrid:
    """The calculation grid for output points ``r_out`` (Å, ≥ 0) and the Q window [qmin, qmax).

    The grid reaches 6 ripples past the last output point (srreal's range), and at least ``r_extent`` Å: a finite
    particle passes every pair distance here, since each pair's termination ripples (and the Qmin cut's broad
    kernel) reach into the window from any distance."""
    r_out = np.asarray(r_out, dtype=np.float64).reshape(-1)
    if r_out.size == 0:
        raise ValueError("r: no points to evaluate G(r) on")
    if not np.all(np.isfinite(r_out)) or r_out.min() < 0:
        raise ValueError("r: points must be finite and >= 0")
    dr = choose_dr(r_out) if dr is None else float(dr)
    if not dr > 0:
        raise ValueError(f"dr: must be positive, got {dr}")
    if qmin < 0:
        raise ValueError(f"qmin: must be >= 0, got {qmin}")
    nyquist = math.pi / dr
    qmax_eff = float(qmax) if qmax is not None and 0 < qmax < nyquist else None
    if qmax_eff is not None and qmin >= qmax_eff:
        raise ValueError(f"qmin: must be below qmax, got qmin={qmin}, qmax={qmax}")
    ext = N_RIPPLES * 2 * math.pi / qmax_eff if qmax_eff is not None else 0.0
    n = int(math.ceil(max(float(r_out.max()) + ext, float(r_extent)) / dr)) + 3
    npad = 1 << int(math.ceil(math.log2(n)))
    qstep = math.pi / (npad * dr)
    nqmin = _min_steps(qmin, qstep) if qmin > 0 else 0
    nqmax = min(npad, int(math.ceil(qmax_eff / qstep))) if qmax_eff is not None else npad
    window = nqmax < npad or nqmin > 1
    u = r_out / dr
    node = np.maximum(np.floor(u + 1e-9).astype(np.int64), 1)  # r < dr: extrapolate from nodes 0..3 (G(0) = 0 anyway)
    s = u - node
    weights = np.stack(_lagrange4(s))
    weights[:, np.abs(s) < 1e-9] = np.array([[0.0], [1.0], [0.0], [0.0]])
    return RGrid(dr, n, npad, nqmin, nqmax, window, r_out, node, weights)


def dst(x: Tensor) -> Tensor:
    """S_k = Σ_j x_j sin(π j k / M) for k < M along the last axis (M = its length), via one real FFT."""
    m = x.shape[-1]
    zero = x.new_zeros(*x.shape[:-1], 1)
    y = torch.cat([x, zero, -x[..., 1:].flip(-1)], dim=-1)
    return -torch.fft.rfft(y, dim=-1).imag[..., :m] / 2


def q_window(g: Tensor, grid: RGrid, q_weights: Tensor | None = None) -> Tensor:
    """Apply the Q window to G on the grid (…, n) → (n,): transform, zero outside [qmin, qmax), transform back.

    With ``q_weights`` (…, npad), g holds partials that are weighted in Q and summed over the leading axis."""
    pad = grid.npad - grid.n
    gp = torch.nn.functional.pad(g, (0, pad))
    f = dst(gp)
    if q_weights is not None:
        f = (f * q_weights).sum(0)
    mask = torch.zeros(grid.npad, dtype=g.dtype, device=g.device)
    mask[grid.nqmin:grid.nqmax] = 1.0
    return (2.0 / grid.npad) * dst(f * mask)[: grid.n]


def interpolate(g: Tensor, grid: RGrid) -> Tensor:
    """G on the grid (n,) → G at grid.r_out (M,) (cubic Lagrange; exact on grid points)."""
    node = torch.as_tensor(grid.node, device=g.device)
    w = torch.as_tensor(grid.weights, dtype=g.dtype, device=g.device)
    out = w[0] * g[node - 1]
    for o in range(1, 4):
        out = out + w[o] * g[node + o - 1]
    return out


def sphere_envelope(r: Tensor, diameter) -> Tensor:
    """PDFgui's spherical-particle shape function 1 − 3/2·(r/d) + 1/2·(r/d)³ for r < d, else 0."""
    x = r / diameter
    return torch.where(x < 1, 1 - 1.5 * x + 0.5 * x**3, torch.zeros_like(x))


def peak_sigma2(dist: Tensor, msd: Tensor, delta1, delta2, qbroad) -> tuple[Tensor, Tensor]:
    """(σ², keep): srreal JeongPeakWidth, σ² = msd·(1 − δ1/r − δ2/r² + Qbroad²r²); keep = correction > 0."""
    corr = 1 - delta1 / dist - delta2 / dist**2 + (qbroad * dist) ** 2
    keep = (corr > 0) & (msd > 0)
    sigma2 = torch.where(keep, msd * corr, torch.ones_like(corr))
    return sigma2, keep


def gaussian_peaks(dist: Tensor, weight: Tensor, sigma2: Tensor, keep: Tensor, grid: RGrid,
                   ptype: Tensor | None = None, n_ptypes: int = 1, over_distance: bool = True) -> Tensor:
    """Σ_k weight_k·N(r − dist_k; σ_k)/dist_k on the grid → (n_ptypes, n) (one row per pair type).

    ``over_distance=False`` leaves out the 1/dist_k (PDFfit2 divides the sum by r instead)."""
    out = torch.zeros(n_ptypes * grid.n, dtype=dist.dtype, device=dist.device)
    if dist.numel() == 0:
        return out.view(n_ptypes, grid.n)
    sigma = torch.sqrt(sigma2)
    sig_max = float(torch.where(keep, sigma, torch.zeros_like(sigma)).detach().max())
    if sig_max <= 0:
        return out.view(n_ptypes, grid.n)
    half = WINDOW_SIGMAS * sig_max
    width = int(math.ceil(2 * half / grid.dr)) + 2
    offs = torch.arange(width, device=dist.device)
    amp = weight / (math.sqrt(2 * math.pi) * sigma * (dist if over_distance else 1.0))
    amp = torch.where(keep, amp, torch.zeros_like(dist))
    rows = max(1, _CHUNK // width)
    for c0 in range(0, dist.numel(), rows):
        d, s, a = dist[c0:c0 + rows], sigma[c0:c0 + rows], amp[c0:c0 + rows]
        start = torch.floor((d.detach() - half) / grid.dr).long()
        idx = start[:, None] + offs[None, :]
        inside = (idx >= 0) & (idx < grid.n)
        x = idx.to(dist.dtype) * grid.dr - d[:, None]
        val = a[:, None] * torch.exp(-0.5 * (x / s[:, None]) ** 2)
        val = torch.where(inside, val, torch.zeros_like(val))
        idx = idx.clamp(0, grid.n - 1)
        if ptype is not None:
            idx = idx + (ptype[c0:c0 + rows] * grid.n)[:, None]
        out = out.index_add(0, idx.reshape(-1), val.reshape(-1))
    return out.view(n_ptypes, grid.n)


def envelope(g: Tensor, grid: RGrid, scale, qdamp, spdiameter=None) -> Tensor:
    """scale · exp(−(Qdamp r)²/2) · sphere(r; spdiameter) on the grid."""
    r = torch.as_tensor(grid.r, dtype=g.dtype, device=g.device)
    out = g * scale * torch.exp(-0.5 * (qdamp * r) ** 2)
    if spdiameter is not None:
        out = out * sphere_envelope(r, spdiameter)
    return out


def as_tensor(x, dtype=DTYPE) -> Tensor:
    return x if isinstance(x, Tensor) else torch.as_tensor(x, dtype=dtype)


# --------------------------------------------------------------------------------------------------
# Finite particles
# --------------------------------------------------------------------------------------------------
def element_types(numbers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted unique atomic numbers (T,), index of each atom's element (N,))."""
    z, local = np.unique(np.asarray(numbers, dtype=np.int64), return_inverse=True)
    return z, local.reshape(-1)


def pair_distances(pos: np.ndarray, other: np.ndarray | None = None, block: int = 2048):
    """Yield the distances of every pair i < j within ``pos`` (``other`` None) or of every (pos, other) pair,
    in blocks of rows (scipy pdist / cdist)."""
    from scipy.spatial.distance import cdist, pdist

    if other is None:
        n = len(pos)
        for i0 in range(0, n, block):
            i1 = min(n, i0 + block)
            if i1 - i0 > 1:
                yield pdist(pos[i0:i1])
            if i1 < n:
                yield cdist(pos[i0:i1], pos[i1:]).ravel()
    else:
        for i0 in range(0, len(pos), block):
            yield cdist(pos[i0:i0 + block], other).ravel()


def check_min_distance(positions: np.ndarray, min_distance: float = MIN_DISTANCE, what: str = "structure") -> None:
    """ValueError naming the closest pair when two atoms are closer than ``min_distance`` Å."""
    if len(positions) < 2:
        return
    from scipy.spatial import cKDTree

    d, j = cKDTree(positions).query(positions, k=2)
    i = int(np.argmin(d[:, 1]))
    if d[i, 1] < min_distance:
        raise ValueError(f"{what}: atoms {i} and {int(j[i, 1])} are {d[i, 1]:.3g} Å apart (< {min_distance} Å); "
                         "remove duplicate atoms")


class ParticleModel:
    """Debye-equivalent G(r) of one finite particle at the points ``r`` (srreal DebyePDFCalculator semantics).

    ``model(scale=, expansion=, uiso=(T,), delta1=, delta2=, qdamp=, qbroad=, positions=None)`` → (M,) tensor.
    Pair distances are histogrammed once on a distance grid (spacing ``node_step``) unless ``free_positions``,
    when they are spread from ``positions`` on every call (differentiable in the positions). ``max_expansion``
    bounds the isotropic expansion the pair list must cover."""

    def __init__(self, numbers, positions, r, *, qmin: float = 0.0, qmax: float | None = None,
                 radiation: str = "xray", dr: float | None = None, node_step: float = NODE_STEP,
                 free_positions: bool = False, max_expansion: float = 1.2, min_distance: float = MIN_DISTANCE):
        numbers = np.asarray(numbers, dtype=np.int64).reshape(-1)
        positions = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
        if len(numbers) != len(positions):
            raise ValueError(f"structure: {len(numbers)} atomic numbers but {len(positions)} positions")
        if len(numbers) < 2:
            raise ValueError(f"structure: a PDF needs at least two atoms, got {len(numbers)}")
        if not np.all(np.isfinite(positions)):
            raise ValueError("structure: positions contain NaN or inf")
        check_min_distance(positions, min_distance)
        # every pair counts (as in the particle's F(Q)): the grid covers the longest pair at the largest expansion
        # plus its peak tail and 6 ripples, so no ripple of a long pair is cut or folded back into the window
        self.max_pair = 2 * float(np.linalg.norm(positions - positions.mean(0), axis=1).max()) + 1e-6
        ripples = N_RIPPLES * 2 * math.pi / qmax if qmax else 0.0
        self.grid = make_rgrid(r, qmin=qmin, qmax=qmax, dr=dr,
                               r_extent=self.max_pair * (1.1 if free_positions else 1.0) * max_expansion
                               + PEAK_TAIL + ripples)
        self.numbers, self.positions0 = numbers, positions
        self.z_types, self.local = element_types(numbers)
        t = len(self.z_types)
        ta, tc = np.triu_indices(t)
        self.pair_types = np.stack([ta, tc], 1)  # (T2, 2) unordered element pairs
        self._ptype_of = np.zeros((t, t), dtype=np.int64)
        self._ptype_of[ta, tc] = np.arange(len(ta))
        self._ptype_of[tc, ta] = np.arange(len(ta))
        self.node_step = float(node_step)
        self.free_positions = free_positions
        self.reach = self.max_pair * (1.1 if free_positions else 1.0)  # every pair (positions may move a little)
        self.n_nodes = int(math.ceil(self.reach / self.node_step)) + 4
        n_atoms = len(numbers)
        self.n_atoms = n_atoms
        q = torch.as_tensor(self.grid.q, dtype=DTYPE)
        ff = scattering_factors(torch.as_tensor(self.z_types), q, radiation)  # (T, npad)
        counts = np.bincount(self.local, minlength=t)
        fbar = (torch.as_tensor(counts, dtype=DTYPE)[:, None] * ff).sum(0) / n_atoms
        wq = ff[ta] * ff[tc] / torch.where(fbar == 0, torch.ones_like(fbar), fbar) ** 2
        self.q_weights = wq / n_atoms  # (T2, npad): f_a(Q) f_c(Q) / (N <f(Q)>^2)
        self.constant_weights = t == 1 or radiation == "neutron"
        if not free_positions:
            self._hist = self._histogram_np(positions)

    # pair histogram ---------------------------------------------------------------------------
    def _histogram_np(self, positions: np.ndarray) -> Tensor:
        t = len(self.z_types)
        hist = np.zeros((len(self.pair_types), self.n_nodes))
        groups = [positions[self.local == a] for a in range(t)]
        for k, (a, c) in enumerate(self.pair_types):
            for d in pair_distances(groups[a], None if a == c else groups[c]):
                u = d[d <= self.reach] / self.node_step
                i = np.floor(u).astype(np.int64)
                s = u - i
                for o, w in enumerate(_lagrange4(s)):  # weight 2: both orders (i, j) and (j, i)
                    hist[k] += np.bincount(i - 1 + o, weights=2.0 * w, minlength=self.n_nodes)[: self.n_nodes]
        return torch.as_tensor(hist, dtype=DTYPE)

    def _histogram_torch(self, positions: Tensor) -> Tensor:
        n = positions.shape[0]
        i, j = torch.triu_indices(n, n, offset=1)
        diff = positions[j] - positions[i]
        d2 = (diff * diff).sum(-1)
        d = torch.sqrt(torch.clamp(d2, min=_EPS))
        keep = d.detach() <= self.reach
        i, j, d = i[keep], j[keep], d[keep]
        local = torch.as_tensor(self.local)
        pt = torch.as_tensor(self._ptype_of)[local[i], local[j]]
        u = d / self.node_step
        k = torch.floor(u.detach()).long()
        s = u - k
        t2 = len(self.pair_types)
        hist = torch.zeros(t2 * self.n_nodes, dtype=positions.dtype)
        for o, w in enumerate(_lagrange4(s)):
            hist = hist.index_add(0, pt * self.n_nodes + k - 1 + o, 2.0 * w)
        return hist.view(t2, self.n_nodes)

    # G(r) ---------------------------------------------------------------------------------------
    def grid_pdf(self, *, scale=1.0, expansion=1.0, uiso=0.005, delta1=0.0, delta2=0.0, qdamp=0.0,
                 qbroad=0.0, positions: Tensor | None = None) -> Tensor:
        """G on the calculation grid (n,)."""
        if positions is not None:
            hist = self._histogram_torch(as_tensor(positions))
        elif self.free_positions:
            hist = self._histogram_torch(torch.as_tensor(self.positions0, dtype=DTYPE))
        else:
            hist = self._hist
        uiso = as_tensor(uiso).reshape(-1)
        if uiso.numel() == 1:
            uiso = uiso.expand(len(self.z_types))
        nz = hist.detach() != 0
        pt_idx, node_idx = torch.nonzero(nz, as_tuple=True)
        weight = hist[pt_idx, node_idx]
        dist = node_idx.to(DTYPE) * self.node_step * expansion
        pairs = torch.as_tensor(self.pair_types)
        msd = uiso[pairs[pt_idx, 0]] + uiso[pairs[pt_idx, 1]]
        sigma2, keep = peak_sigma2(dist, msd, delta1, delta2, qbroad)
        t2 = len(self.pair_types)
        partial = gaussian_peaks(dist, weight, sigma2, keep, self.grid, pt_idx, t2)  # (T2, n)
        if self.constant_weights and not self.grid.window:
            g = (partial * self.q_weights[:, :1]).sum(0)
        elif self.constant_weights:
            g = q_window((partial * self.q_weights[:, :1]).sum(0), self.grid)
        else:
            g = q_window(partial, self.grid, self.q_weights)
        return envelope(g, self.grid, scale, qdamp)

    def __call__(self, **params) -> Tensor:
        return interpolate(self.grid_pdf(**params), self.grid)


def particle_pdf(numbers, positions, r, *, scale=1.0, expansion=1.0, uiso=0.005, delta1=0.0, delta2=0.0,
                 qdamp=0.0, qbroad=0.0, qmin: float = 0.0, qmax: float | None = None,
                 radiation: str = "xray") -> Tensor:
    """G(r) of a finite particle at the points ``r`` (Debye semantics, per-element ``uiso`` (T,) or scalar,
    Qbroad); differentiable in every parameter given as a tensor, and in ``positions`` when it is one."""
    free = isinstance(positions, Tensor) and positions.requires_grad
    pos_np = positions.detach().cpu().numpy() if isinstance(positions, Tensor) else positions
    model = ParticleModel(numbers, pos_np, r, qmin=qmin, qmax=qmax, radiation=radiation, free_positions=free)
    return model(scale=scale, expansion=expansion, uiso=uiso, delta1=delta1, delta2=delta2, qdamp=qdamp,
                 qbroad=qbroad, positions=positions if free else None)
