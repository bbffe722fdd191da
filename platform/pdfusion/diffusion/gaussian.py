"""Gaussian diffusion on (positions in the zero-CoM subspace, scaled one-hot atom types), ε-prediction.

Positions: centred on the real atoms and divided by `model_cfg.position_scale` (Å) so the data have about
unit variance, as the N(0, I) prior assumes (seed-oxides coordinates have std 3.62 Å per axis over all of
graphs_h5 and 3.35 Å on graphs_fixed_num_135 → default 3.5 Å). Position noise is projected to zero CoM,
which makes the model's likelihood translation-invariant (EDM). Types: one-hot (0 = metal, 1 = oxygen)
times `type_scale` (EDM uses 0.25 so types are decided late), noised with ordinary Gaussian noise.

`training_loss` returns loss = loss_x + type_loss_weight·loss_h + count_loss_weight·loss_count: the
atom-count head is trained here (the trainer passes `TrainConfig.count_loss_weight`), and the metrics
dict reports each part separately as floats.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pdfusion.config import DiffusionConfig, ModelConfig
from pdfusion.data.batching import DenseBatch
from pdfusion.diffusion.geometry import align_noise, remove_mean
from pdfusion.diffusion.guards import check_finite
from pdfusion.diffusion.schedules import NoiseSchedule, build_schedule
from pdfusion.structures.bonds import median_metal_oxygen_bond
from pdfusion.structures.particle import OXYGEN

__all__ = ["GaussianDiffusion", "atom_types", "types_to_numbers", "OXYGEN"]

SELF_COND_RATE = 0.5  # fraction of training batches that see a first estimate (Chen et al. 2022)


def atom_types(z: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Atomic numbers → diffusion types: 0 = metal (any non-oxygen), 1 = oxygen; padding 0."""
    return ((z == OXYGEN) & mask).long()


def types_to_numbers(types: torch.Tensor, metal: torch.Tensor) -> torch.Tensor:
    """Diffusion atom types (0 = metal, 1 = oxygen) -> atomic numbers; metal (B,) broadcasts over atoms.
    The inverse of `atom_types`; padding is the caller's to mask."""
    return torch.where(types == 0, metal.reshape(-1, 1).to(types.device, types.dtype), torch.full_like(types, OXYGEN))


class GaussianDiffusion:
    """Forward process, posterior and training loss. Holds no parameters; pair it with a denoiser."""

    def __init__(self, schedule: NoiseSchedule | None = None, model_cfg: ModelConfig | None = None,
                 diffusion_cfg: DiffusionConfig | None = None) -> None:
        self.diffusion_cfg = diffusion_cfg or DiffusionConfig()
        self.schedule = schedule if schedule is not None else build_schedule(self.diffusion_cfg.schedule)
        self.model_cfg = model_cfg or ModelConfig()
        self.T = self.schedule.timesteps

    # ------------------------------------------------------------------ data <-> diffusion space
    def encode(self, batch: DenseBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """DenseBatch → (x (B,N,3) zero-CoM / position_scale, h (B,N,n_types) scaled one-hot), 0 on padding."""
        mask = batch.mask.bool()
        check_finite("batch.pos", batch.pos)
        x = remove_mean(batch.pos.float(), mask)
        if self.model_cfg.bond_length is not None:  # one shape per structure type (config.ModelConfig.bond_length)
            x = x * (self.model_cfg.bond_length / median_metal_oxygen_bond(x, batch.z, mask))[:, None, None]
        x = x / self.model_cfg.position_scale
        types = atom_types(batch.z, mask)
        if int(types.max()) >= self.model_cfg.n_types:
            raise ValueError(f"batch.z: found type {int(types.max())} but model.n_types={self.model_cfg.n_types}")
        h = F.one_hot(types, self.model_cfg.n_types).float() * self.model_cfg.type_scale
        return x, h * mask.unsqueeze(-1)

    def decode(self, x: torch.Tensor, h: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Diffusion space → (positions Å (B,N,3), types (B,N) long: argmax of h, 0 on padding). With
        `model.bond_length` set, positions are in the model's frame: rescale them to a target
        (`pdf.fitting.fit_expansion`)."""
        m = mask.bool()
        pos = x * self.model_cfg.position_scale * m.unsqueeze(-1)
        return pos, h.argmax(-1) * m

    # ------------------------------------------------------------------ noise
    @staticmethod
    def position_noise(mask: torch.Tensor, generator: torch.Generator | None = None,
                       dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """N(0, I) noise on (B,N,3) projected onto the zero-CoM subspace of the real atoms."""
        b, n = mask.shape
        eps = torch.randn(b, n, 3, generator=generator, dtype=dtype, device=mask.device)
        return remove_mean(eps, mask.bool())

    def training_noise(self, x0: torch.Tensor, batch: DenseBatch,
                       generator: torch.Generator | None = None) -> torch.Tensor:
        """The position noise paired with x0 in training: N(0, I) on zero CoM, aligned onto x0 when
        `diffusion.align_noise` (rotation + per-type permutation; the prior is unchanged), for a random
        `align_noise_fraction` of the structures."""
        mask = batch.mask.bool()
        eps = self.position_noise(mask, generator)
        cfg = self.diffusion_cfg
        if cfg.align_noise:
            pick = torch.rand(mask.shape[0], generator=generator, device=mask.device) < cfg.align_noise_fraction
            if bool(pick.any()):
                eps[pick] = align_noise(eps[pick], x0[pick], atom_types(batch.z, mask)[pick], mask[pick])
        return eps

    def type_noise(self, mask: torch.Tensor, generator: torch.Generator | None = None,
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
        b, n = mask.shape
        eps = torch.randn(b, n, self.model_cfg.n_types, generator=generator, dtype=dtype, device=mask.device)
        return eps * mask.unsqueeze(-1).to(dtype)

    # ------------------------------------------------------------------ forward process / posterior
    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = √ᾱ_t · x0 + √(1 − ᾱ_t) · noise, t (B,) integer times."""
        s = self.schedule
        return s.gather("sqrt_alphas_cumprod", t, x0) * x0 + s.gather("sqrt_one_minus_alphas_cumprod", t, x0) * noise

    def predict_x0(self, xt: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        s = self.schedule
        return ((xt - s.gather("sqrt_one_minus_alphas_cumprod", t, xt) * eps)
                * s.gather("sqrt_recip_alphas_cumprod", t, xt))

    def posterior_mean_var(self, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor
                           ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance of q(x_{t-1} | x_t, x_0) for t ≥ 1 (variance broadcastable to xt)."""
        s = self.schedule
        mean = s.gather("posterior_mean_coef1", t, xt) * x0 + s.gather("posterior_mean_coef2", t, xt) * xt
        return mean, s.gather("posterior_variance", t, xt)

    def first_estimate(self, model, xt, ht, mask, t, pdf, metal, keep) -> tuple[torch.Tensor, torch.Tensor]:
        """Self-conditioning's no-grad first pass: (x̂0, ĥ0) from the model's own ε̂ without a previous estimate,
        positions bounded by the EGNN's coordinate range (at t ≈ T, 1/√ᾱ amplifies ε̂'s error)."""
        with torch.no_grad():
            ex, eh = model(xt, ht, mask, t.float() / self.T, pdf, metal, keep)[:2]
            return self.bound_estimate(self.predict_x0(xt, t, ex), self.predict_x0(ht, t, eh), mask)

    def bound_estimate(self, x0: torch.Tensor, h0: torch.Tensor,
                       mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A self-conditioning input as training and the sampler both give it: bounded, zero on padding."""
        m = mask.unsqueeze(-1).to(x0.dtype)
        bound = self.model_cfg.coords_range
        return x0.detach().clamp(-bound, bound) * m, h0.detach().clamp(-1.0, 1.0) * m

    # ------------------------------------------------------------------ loss
    def loss_weights(self, t: torch.Tensor) -> torch.Tensor:
        """Per-sample weight of the ε-MSE at integer times t (B,): 1, or min(SNR, γ)/SNR for "min_snr"."""
        if self.diffusion_cfg.loss_weighting == "uniform":
            return torch.ones(t.shape, dtype=torch.float32, device=t.device)
        abar = self.schedule.alphas_cumprod.to(t.device)[t]
        snr = abar / (1.0 - abar)
        return (snr.clamp(max=self.diffusion_cfg.min_snr_gamma) / snr).float()

    def sample_times(self, b: int, generator: torch.Generator | None, device) -> torch.Tensor:
        """(b,) training times in 1..T: uniform, or the nearest to a log-normal σ (`diffusion.t_sampling`)."""
        cfg = self.diffusion_cfg
        if cfg.t_sampling == "uniform":
            return torch.randint(1, self.T + 1, (b,), generator=generator, device=device)
        draw = torch.randn(b, generator=generator, device=device, dtype=torch.float64)
        return self.schedule.time_at_sigma(torch.exp(cfg.t_log_sigma_mean + cfg.t_log_sigma_std * draw))

    def training_loss(self, model: torch.nn.Module, batch: DenseBatch, generator: torch.Generator | None = None,
                      *, count_loss_weight: float = 0.1, step: int | None = None
                      ) -> tuple[torch.Tensor, dict[str, float]]:
        """Uniform t ∈ 1..T, masked MSE per real atom on ε_x and ε_h, condition dropped with p_uncond (always
        when the batch has no pdf/metal), plus the count head's cross-entropy (skipped without a condition).
        Returns (loss, {"loss", "loss_x", "loss_h", "loss_count", "p_cond"}). `generator` must live on the
        batch's device."""
        mask = batch.mask.bool()
        b = mask.shape[0]
        dev = mask.device
        x0, h0 = self.encode(batch)
        t = self.sample_times(b, generator, dev)
        eps_x = self.training_noise(x0, batch, generator)
        eps_h = self.type_noise(mask, generator)
        xt = self.q_sample(x0, t, eps_x)
        ht = self.q_sample(h0, t, eps_h)
        conditional = batch.pdf is not None and batch.metal is not None
        if conditional:
            keep = torch.rand(b, generator=generator, device=dev) >= self.diffusion_cfg.p_uncond
        else:
            keep = torch.zeros(b, dtype=torch.bool, device=dev)
        with_count = conditional and count_loss_weight > 0
        if with_count and int(batch.n_atoms.max()) > self.model_cfg.max_atoms:
            raise ValueError(f"batch.n_atoms: a particle has {int(batch.n_atoms.max())} atoms but model.max_atoms="
                             f"{self.model_cfg.max_atoms}; raise model.max_atoms or filter the data")
        tf = t.float() / self.T
        extra = {}
        if self.model_cfg.self_condition and bool(torch.rand((), generator=generator, device=dev) < SELF_COND_RATE):
            lag = self.diffusion_cfg.self_cond_lag
            if lag:  # the estimate the sampler will feed: from the previous, noisier step (same ε)
                tp = (t + lag).clamp(max=self.T)
                xp, hp = self.q_sample(x0, tp, eps_x), self.q_sample(h0, tp, eps_h)
                extra["self_cond"] = self.first_estimate(model, xp, hp, mask, tp, batch.pdf, batch.metal, keep)
            else:
                extra["self_cond"] = self.first_estimate(model, xt, ht, mask, t, batch.pdf, batch.metal, keep)
        out = model(xt, ht, mask, tf, batch.pdf, batch.metal, keep, return_count=with_count, **extra)
        pred_x, pred_h = out[0], out[1]
        m = mask.unsqueeze(-1).float()
        n_real = m.sum().clamp(min=1.0)
        w = m * self.loss_weights(t)[:, None, None]
        loss_x = ((pred_x - eps_x) ** 2 * w).sum() / (n_real * 3)
        loss_h = ((pred_h - eps_h) ** 2 * w).sum() / (n_real * self.model_cfg.n_types)
        loss = loss_x + self.diffusion_cfg.type_loss_weight * loss_h
        loss_count = torch.zeros((), device=dev)
        if with_count:
            loss_count = F.cross_entropy(out[2], batch.n_atoms.long() - 1)
            loss = loss + count_loss_weight * loss_count
        check_finite("loss", loss, step)
        metrics = {"loss": float(loss.detach()), "loss_x": float(loss_x.detach()), "loss_h": float(loss_h.detach()),
                   "loss_count": float(loss_count.detach()), "p_cond": float(keep.float().mean())}
        return loss, metrics
