"""Named, serialisable noise schedules (linear, cosine, polynomial) as precomputed tables.

Convention: tables are indexed by the integer time t = 0..T (length T + 1). `alphas_cumprod[t]` is ᾱ_t with
ᾱ_0 ≈ 1 (the data, barely noised) and ᾱ_T ≈ 0 (pure noise), and `betas[t] = 1 - ᾱ_t / ᾱ_{t-1}` with
`betas[0] = 1 - ᾱ_0`, so `cumprod(1 - betas) == alphas_cumprod` exactly and q(x_t | x_0) is the
composition of the per-step Gaussians q(x_t | x_{t-1}) = N(√(1-β_t) x_{t-1}, β_t I).
Tables are float64 (precision matters near ᾱ ≈ 1 and ᾱ ≈ 0); `gather` casts to the caller's dtype.
A schedule rebuilds from its `ScheduleConfig` alone (`to_config` / `from_config`), so checkpoints store a dict.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from pdfusion.config import ScheduleConfig, from_dict, to_dict

__all__ = ["NoiseSchedule", "build_schedule", "linear_alphas_cumprod", "cosine_alphas_cumprod",
           "polynomial_alphas_cumprod", "clip_noise_schedule"]


def linear_alphas_cumprod(timesteps: int, beta_start: float, beta_end: float) -> torch.Tensor:
    """DDPM (Ho et al. 2020): β linear from beta_start to beta_end over t = 0..T, for T = 1000. Other T scale
    both ends by 1000/T (as improved-DDPM does) so ᾱ_T ≈ 0 for any T and the prior stays N(0, I)."""
    scale = 1000.0 / timesteps
    betas = torch.linspace(beta_start * scale, min(beta_end * scale, 0.999), timesteps + 1, dtype=torch.float64)
    return torch.cumprod(1.0 - betas, dim=0)


def cosine_alphas_cumprod(timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Nichol & Dhariwal (2021): ᾱ_t = f(t)/f(0), f(t) = cos²(((t/T)+s)/(1+s)·π/2), with β clipped ≤ max_beta
    (so ᾱ_T > 0) and ᾱ_0 = 1."""
    t = torch.arange(timesteps + 1, dtype=torch.float64)
    f = torch.cos(((t / timesteps) + s) / (1.0 + s) * math.pi / 2) ** 2
    abar = f / f[0]
    betas = (1.0 - abar[1:] / abar[:-1]).clamp(min=0.0, max=max_beta)
    betas = torch.cat([torch.zeros(1, dtype=torch.float64), betas])
    return torch.cumprod(1.0 - betas, dim=0)


def clip_noise_schedule(alphas2: torch.Tensor, clip_value: float = 0.001) -> torch.Tensor:
    """EDM's trick: clip each step's ratio ᾱ_t/ᾱ_{t-1} to ≥ clip_value, which keeps the last steps stable."""
    alphas2 = torch.cat([torch.ones(1, dtype=alphas2.dtype), alphas2])
    step = (alphas2[1:] / alphas2[:-1]).clamp(min=clip_value, max=1.0)
    return torch.cumprod(step, dim=0)


def polynomial_alphas_cumprod(timesteps: int, precision: float = 1e-5, power: float = 2.0) -> torch.Tensor:
    """EDM's polynomial_<power> schedule: ᾱ = (1 - (t/T)^power)², step-clipped, then squeezed into
    [s, 1 - s] with precision s: ᾱ ← (1 - 2s)·ᾱ + s."""
    steps = timesteps + 1
    x = torch.linspace(0, steps, steps, dtype=torch.float64)
    alphas2 = (1.0 - (x / steps) ** power) ** 2
    alphas2 = clip_noise_schedule(alphas2, clip_value=0.001)
    return (1.0 - 2.0 * precision) * alphas2 + precision


class NoiseSchedule:
    """ᾱ table plus everything derived from it. Build with `build_schedule(cfg)`."""

    def __init__(self, cfg: ScheduleConfig, alphas_cumprod: torch.Tensor) -> None:
        abar = alphas_cumprod.to(torch.float64)
        if abar.shape != (cfg.timesteps + 1,):
            raise ValueError(f"alphas_cumprod: expected shape ({cfg.timesteps + 1},), got {tuple(abar.shape)}")
        if not (torch.isfinite(abar).all() and (abar > 0).all() and (abar <= 1).all()):
            raise ValueError(f"alphas_cumprod: schedule {cfg.name!r} left (0, 1]; check its parameters")
        if not (abar[1:] < abar[:-1]).all():
            raise ValueError(f"alphas_cumprod: schedule {cfg.name!r} is not strictly decreasing; "
                             "use fewer timesteps or a larger precision")
        self.cfg = cfg
        self._cache: dict[tuple[str, torch.device], torch.Tensor] = {}
        self.name = cfg.name
        self.timesteps = cfg.timesteps
        self.alphas_cumprod = abar
        prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
        self.alphas_cumprod_prev = prev
        self.betas = 1.0 - abar / prev
        self.alphas = 1.0 - self.betas
        self.sqrt_alphas_cumprod = abar.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - abar).sqrt()
        self.sqrt_recip_alphas_cumprod = abar.rsqrt()
        # noise of x_t/√ᾱ_t around x_0 per coordinate, σ_t = √((1−ᾱ)/ᾱ): increasing in t
        self.x0_sigmas = ((1.0 - abar) / abar).sqrt()
        # Posterior q(x_{t-1} | x_t, x_0) for t >= 1; entry 0 is 0 (there is no step below t = 0).
        one_minus = 1.0 - abar
        var = self.betas * (1.0 - prev) / one_minus
        var[0] = 0.0
        self.posterior_variance = var
        c0 = self.betas * prev.sqrt() / one_minus
        ct = self.alphas.sqrt() * (1.0 - prev) / one_minus
        c0[0], ct[0] = 1.0, 0.0
        self.posterior_mean_coef1 = c0  # multiplies x_0
        self.posterior_mean_coef2 = ct  # multiplies x_t

    # ------------------------------------------------------------------------------------------
    def time_at_sigma(self, sigma: torch.Tensor) -> torch.Tensor:
        """The first integer time in 1..T whose σ_t (`x0_sigmas`) reaches `sigma` (T where none does)."""
        tab = self.x0_sigmas[1:].to(sigma.device)
        return (torch.searchsorted(tab, sigma.to(tab.dtype)).clamp(0, self.timesteps - 1) + 1).long()

    def gather(self, table: str | torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Table values at integer times t (B,), shaped (B, 1, ..., 1) to broadcast against `like`."""
        if isinstance(table, str):
            key = (table, like.device)
            tab = self._cache.get(key)
            if tab is None:  # one host→device copy per table and device, not one per call
                tab = self._cache[key] = getattr(self, table).to(like.device)
        else:
            tab = table
        t = t.long()
        if t.numel() and (int(t.min()) < 0 or int(t.max()) > self.timesteps):
            raise ValueError(f"t: integer times must lie in 0..{self.timesteps}, got {int(t.min())}..{int(t.max())}")
        out = tab.to(like.device)[t.to(like.device)].to(like.dtype)
        return out.view(-1, *([1] * (like.dim() - 1)))

    def to_config(self) -> dict[str, Any]:
        return to_dict(self.cfg)

    @classmethod
    def from_config(cls, cfg: ScheduleConfig | dict[str, Any]) -> NoiseSchedule:
        return build_schedule(cfg)

    def __repr__(self) -> str:
        return (f"NoiseSchedule({self.name}, T={self.timesteps}, ᾱ_0={float(self.alphas_cumprod[0]):.6f}, "
                f"ᾱ_T={float(self.alphas_cumprod[-1]):.2e})")


def build_schedule(cfg: ScheduleConfig | dict[str, Any] | None = None) -> NoiseSchedule:
    """The schedule named by `cfg.name` ('linear', 'cosine' or 'polynomial')."""
    if cfg is None:
        cfg = ScheduleConfig()
    elif isinstance(cfg, dict):
        cfg = from_dict(ScheduleConfig, cfg)
    if cfg.name == "linear":
        abar = linear_alphas_cumprod(cfg.timesteps, cfg.beta_start, cfg.beta_end)
    elif cfg.name == "cosine":
        abar = cosine_alphas_cumprod(cfg.timesteps, cfg.cosine_s)
    elif cfg.name == "polynomial":
        abar = polynomial_alphas_cumprod(cfg.timesteps, cfg.precision, cfg.power)
    else:  # ScheduleConfig validates the name; this guards configs built around validation
        raise ValueError(f"schedule.name: unknown schedule {cfg.name!r}")
    return NoiseSchedule(cfg, abar)
