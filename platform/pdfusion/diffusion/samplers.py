"""Samplers: ancestral DDPM over all T steps, or a strided DDIM-style sampler over S ≪ T steps, with
classifier-free guidance ε̃ = (1 − γ)·ε_uncond + γ·ε_cond computed in ONE batched forward pass
(conditional and null-condition halves concatenated). γ = 0 runs only the unconditional half, γ = 1 only
the conditional half. Positions are re-projected to zero CoM after every step and every state is
checked for non-finite values (NonFiniteError names the step). Reproducible: the same generator seed gives
the same output.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from pdfusion.config import PDFConfig, SampleConfig
from pdfusion.diffusion.gaussian import GaussianDiffusion, types_to_numbers
from pdfusion.diffusion.geometry import remove_mean
from pdfusion.diffusion.guards import check_finite
from pdfusion.diffusion.pdf_guidance import PDFGuide
from pdfusion.diffusion.schedules import NoiseSchedule

__all__ = ["SampleResult", "SamplingCancelled", "sample", "guided_epsilon", "predict_n_atoms", "strided_timesteps"]


class SamplingCancelled(RuntimeError):
    """`sample(..., should_stop=...)` stopped between steps because `should_stop()` returned True."""


@dataclass
class SampleResult:
    """positions (B,Nmax,3) Å with zero CoM, types (B,Nmax) long (0 metal, 1 oxygen; 0 on padding),
    mask (B,Nmax) bool, trajectory: list of (B,Nmax,3) Å positions (CPU) from x_T to x_0, or None."""

    positions: torch.Tensor
    types: torch.Tensor
    mask: torch.Tensor
    trajectory: list[torch.Tensor] | None = None

    def numbers(self, metal: torch.Tensor) -> torch.Tensor:
        """Atomic numbers (B,Nmax): the metal's Z for type 0, 8 for type 1, 0 on padding."""
        return types_to_numbers(self.types, metal) * self.mask


def _model_device(model: torch.nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def guided_epsilon(model: torch.nn.Module, x: torch.Tensor, h: torch.Tensor, mask: torch.Tensor, t: torch.Tensor,
                   pdf: torch.Tensor | None, metal: torch.Tensor | None, guidance: float, *,
                   shortcut: bool = True, self_cond: tuple[torch.Tensor, torch.Tensor] | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """ε̃ = (1 − γ)·ε_uncond + γ·ε_cond. Without a condition (pdf None) it is ε_uncond whatever γ.
    With `shortcut`, γ = 0 / γ = 1 evaluate only the half they need; otherwise both halves run in one
    batched forward pass of 2B rows. `self_cond` (x̂0, ĥ0): the previous step's estimate, for self-conditioned
    models (both halves see it)."""
    b = x.shape[0]
    dev = x.device
    sc = {} if self_cond is None else {"self_cond": self_cond}
    if pdf is None or metal is None or (shortcut and guidance == 0.0):
        return model(x, h, mask, t, pdf, metal, torch.zeros(b, dtype=torch.bool, device=dev), **sc)
    if shortcut and guidance == 1.0:
        return model(x, h, mask, t, pdf, metal, torch.ones(b, dtype=torch.bool, device=dev), **sc)
    cond_mask = torch.cat([torch.ones(b, dtype=torch.bool, device=dev), torch.zeros(b, dtype=torch.bool, device=dev)])
    if self_cond is not None:
        sc = {"self_cond": (torch.cat([self_cond[0], self_cond[0]]), torch.cat([self_cond[1], self_cond[1]]))}
    ex, eh = model(torch.cat([x, x]), torch.cat([h, h]), torch.cat([mask, mask]), torch.cat([t, t]),
                   torch.cat([pdf, pdf]), torch.cat([metal, metal]), cond_mask, **sc)
    g = float(guidance)
    return torch.lerp(ex[b:], ex[:b], g), torch.lerp(eh[b:], eh[:b], g)


def strided_timesteps(T: int, steps: int, schedule: NoiseSchedule | None = None, rho: float = 7.0) -> list[int]:
    """Descending integer times from T to 1, `steps` of them (fewer if T < steps or times coincide): evenly
    spaced in t, or, given the schedule, evenly in σ^(1/ρ) with σ = √((1−ᾱ)/ᾱ) ≤ 80 (Karras et al. 2022)."""
    steps = max(1, min(int(steps), T))
    if schedule is None:
        ts = torch.linspace(T, 1, steps, dtype=torch.float64).round().long().tolist()
    else:
        sigma = schedule.x0_sigmas
        # above EDM's σ_max = 80 (data std ~1 here) x_t is pure noise: start at T, spend no steps up there
        lo, hi = float(sigma[1]) ** (1 / rho), min(float(sigma[-1]), 80.0) ** (1 / rho)
        ts = schedule.time_at_sigma(torch.linspace(hi, lo, steps, dtype=torch.float64) ** rho).tolist()
        ts[0] = T
    out: list[int] = []
    for t in ts:
        if not out or t < out[-1]:
            out.append(int(t))
    return out


class Step(NamedTuple):
    """One sampler step of `step_plan`."""

    t_now: int
    t_next: int
    guided: bool  # PDF guidance acts on this step's x̂0
    resample: bool  # population resampling after this step
    restart: bool  # a restart begins here: the finished sample is re-noised to t_now first


def step_plan(times: list[int], cfg: SampleConfig) -> list[Step]:
    """Every step the sampler takes from `times` (descending, the first = the start): the pass over `times`,
    guided on `cfg.pdf_guidance_window` (shares of the steps, 0 = the first at full noise); then each of
    `cfg.restarts` reruns of the times <= restart_t, every one guided. One definition for the sampler and the
    server's cost estimate."""
    pairs = list(zip(times, times[1:] + [0], strict=True))
    resample_steps = {min(len(pairs) - 2, max(0, round(f * len(pairs)) - 1)) for f in cfg.resample_at}
    w0, w1 = cfg.pdf_guidance_window
    guided = range(round(w0 * len(pairs)), round(w1 * len(pairs)))
    plan = [Step(tn, tx, i in guided, i in resample_steps, False) for i, (tn, tx) in enumerate(pairs)]
    t_restart = min(int(cfg.restart_t), times[0])
    late = [t for t in times if t <= t_restart]
    late = ([t_restart] if not late or late[0] != t_restart else []) + late
    for _ in range(cfg.restarts):
        plan += [Step(tn, tx, True, False, i == 0) for i, (tn, tx) in enumerate(zip(late, late[1:] + [0], strict=True))]
    return plan


def clip_positions(x0: torch.Tensor, mask: torch.Tensor, radius: float | None) -> torch.Tensor:
    """Pull every atom of a predicted clean structure back inside a sphere of `radius` (scaled units)
    around the particle centre: per-atom radial clipping, so the operation commutes with rotations,
    reflections and permutations; zero CoM is restored afterwards."""
    if radius is None:
        return x0
    x0 = remove_mean(x0, mask)
    norm = x0.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    x0 = x0 * torch.clamp(radius / norm, max=1.0)
    return remove_mean(x0, mask)


@torch.no_grad()
def predict_n_atoms(model: torch.nn.Module, pdf: torch.Tensor, metal: torch.Tensor,
                    generator: torch.Generator | None = None, *, min_atoms: int = 2,
                    temperature: float = 1.0) -> torch.Tensor:
    """Sample N ~ p(N | PDF, metal)^(1/temperature) from the count head; (B,) long, N ≥ min_atoms."""
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature: must be finite and > 0, got {temperature}")
    logits = model.count_logits(pdf, metal).float()
    check_finite("count_logits", logits)
    logits = logits / temperature
    logits[:, : min_atoms - 1] = float("-inf")  # class k is N = k + 1
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1) + 1


@torch.no_grad()
def sample(model: torch.nn.Module, diffusion: GaussianDiffusion, pdf: torch.Tensor | None,
           metal: torch.Tensor | None, n_atoms: torch.Tensor | list[int], cfg: SampleConfig | None = None, *,
           generator: torch.Generator | None = None, return_trajectory: bool = False,
           progress: bool = False, pdf_cfg: PDFConfig | None = None, init=None,
           should_stop: Callable[[], bool] | None = None) -> SampleResult:
    """Generate one structure per row. pdf (B,n_r) and metal (B,) condition the model (both None: an
    unconditional model); n_atoms (B,) fixes each particle's size (use `predict_n_atoms` to draw it).
    `cfg.steps` None → ancestral DDPM over all T steps; else DDIM-style over `cfg.steps` strided steps with
    stochasticity `cfg.eta`. Without a generator, one seeded with `cfg.seed` is used. `cfg.pdf_guidance` > 0
    also steers every x̂0 toward `pdf` through the simulator configured by `pdf_cfg` (diffusion.pdf_guidance).
    `init` (a DenseBatch of starting structures, one per row) with `cfg.init_t`: start from them noised to
    init_t (SDEdit) and run only the times ≤ init_t. `should_stop` (e.g. "was the request cancelled?") is
    called before every step; when it returns True, `SamplingCancelled` is raised. `cfg.resample_at` prunes and
    copies rows within each target (rows with equal PDFs, `target_groups`); a copied row takes its source's atom
    count, so the result's mask may differ from `n_atoms`."""
    cfg = cfg or SampleConfig()
    dev = _model_device(model)
    n_atoms = torch.as_tensor(n_atoms, dtype=torch.long).reshape(-1).to(dev)
    b = n_atoms.numel()
    if b == 0:
        raise ValueError("n_atoms: empty; give one atom count per structure to sample")
    if int(n_atoms.min()) < 1:
        raise ValueError(f"n_atoms: every particle needs at least 1 atom, got {n_atoms.tolist()}")
    if pdf is not None:
        pdf = pdf.to(dev, torch.float32)
        if pdf.dim() != 2 or pdf.shape[0] != b:
            raise ValueError(f"pdf: expected ({b}, n_r) to match n_atoms, got {tuple(pdf.shape)}")
        check_finite("pdf", pdf)
    if metal is not None:
        metal = torch.as_tensor(metal, dtype=torch.long).reshape(-1).to(dev)
        if metal.shape[0] != b:
            raise ValueError(f"metal: expected ({b},) to match n_atoms, got {tuple(metal.shape)}")
    guide = None
    if cfg.pdf_guidance > 0:
        if pdf is None or metal is None or pdf_cfg is None:
            raise ValueError("pdf_guidance: steering toward the target needs pdf, metal and pdf_cfg (the PDFConfig "
                             "the target was simulated with); pass them or set pdf_guidance=0")
        if diffusion.model_cfg.bond_length is not None:
            raise ValueError("pdf_guidance: this model samples in a bond-length frame (model.bond_length), whose "
                             "sizes are only fitted to the target after sampling; set pdf_guidance=0")
        guide = PDFGuide(diffusion, pdf, metal, pdf_cfg, strength=cfg.pdf_guidance, iters=cfg.pdf_guidance_iters,
                         blur_max=cfg.pdf_guidance_blur, cohesion=cfg.pdf_guidance_cohesion)
    scorer = None
    if cfg.resample_at:
        if pdf is None or metal is None or pdf_cfg is None:
            raise ValueError("resample_at: ranking candidates by their fit needs pdf, metal and pdf_cfg; pass them or "
                             "set resample_at=()")
        scorer = guide or PDFGuide(diffusion, pdf, metal, pdf_cfg, strength=0.0, blur_max=cfg.pdf_guidance_blur,
                                   cohesion=cfg.pdf_guidance_cohesion)
        groups = target_groups(pdf)
    if generator is None:
        generator = torch.Generator(device=dev).manual_seed(cfg.seed)
    was_training = model.training
    model.eval()
    try:
        n_max = int(n_atoms.max())
        mask = torch.arange(n_max, device=dev)[None, :] < n_atoms[:, None]
        x = diffusion.position_noise(mask, generator)
        h = diffusion.type_noise(mask, generator)
        s = diffusion.schedule
        T = s.timesteps
        t_start = T
        if (init is None) != (cfg.init_t is None):
            raise ValueError("init: template-seeded sampling needs both the starting structures (init) and "
                             "cfg.init_t; give both or neither")
        if init is not None:
            if tuple(init.mask.shape) != tuple(mask.shape) or not torch.equal(init.mask.bool().to(dev), mask):
                raise ValueError(f"init: the starting structures must have the sampled atom counts {n_atoms.tolist()}")
            t_start = min(int(cfg.init_t), T)
            x0, h0 = diffusion.encode(init.to(dev))
            tt0 = torch.full((b,), t_start, dtype=torch.long, device=dev)
            x = remove_mean(diffusion.q_sample(x0, tt0, x), mask)
            h = diffusion.q_sample(h0, tt0, h) * mask.unsqueeze(-1)
        traj = [diffusion.decode(x, h, mask)[0].cpu()] if return_trajectory else None
        m3 = mask.unsqueeze(-1).float()
        clip = None if cfg.clip_x0 is None else cfg.clip_x0 / diffusion.model_cfg.position_scale
        if cfg.steps is None:
            times = list(range(t_start, 0, -1))
        else:
            times = strided_timesteps(T, cfg.steps, s if cfg.spacing == "sigma" else None)
            times = [t_start] + [t for t in times if t < t_start]
        plan = step_plan(times, cfg)
        self_conditioned = diffusion.model_cfg.self_condition
        estimate = None
        for t_now, t_next, is_guided, resample_here, renoise in tqdm(plan, desc="sampling", disable=not progress,
                                                                      leave=False):
            if should_stop is not None and should_stop():
                raise SamplingCancelled(f"sampling cancelled before step t={t_now}")
            tt = torch.full((b,), t_now, dtype=torch.long, device=dev)
            if renoise:  # a restart: the finished sample, noised back to t_now (clean one-hot types)
                h_clean = F.one_hot(h.argmax(-1), h.shape[-1]).to(h.dtype) * diffusion.model_cfg.type_scale
                x = remove_mean(diffusion.q_sample(x, tt, diffusion.position_noise(mask, generator)), mask)
                h = diffusion.q_sample(h_clean, tt, diffusion.type_noise(mask, generator)) * m3
                estimate = None
            ex, eh = guided_epsilon(model, x, h, mask, tt.float() / T, pdf, metal, cfg.guidance, self_cond=estimate)
            if self_conditioned and cfg.self_cond_estimate == "raw":  # the network's own x̂0, as in training
                estimate = diffusion.bound_estimate(diffusion.predict_x0(x, tt, ex), diffusion.predict_x0(h, tt, eh),
                                                    mask)
            step_guide = guide if is_guided else None
            if cfg.steps is None:
                x, h, x0, h0 = _ancestral_step(diffusion, x, h, ex, eh, tt, mask, generator, clip, step_guide)
            else:
                x, h, x0, h0 = _ddim_step(diffusion, x, h, ex, eh, t_now, t_next, cfg.eta, mask, generator, clip,
                                          step_guide)
            if self_conditioned and cfg.self_cond_estimate == "clean":
                estimate = diffusion.bound_estimate(x0, h0, mask)
            if scorer is not None and resample_here and t_next > 0:
                src = resample_sources(scorer.score(x0, h0, t_now, mask), groups, cfg.resample_keep)
                x, h, mask, estimate = _copy_rows(src, x, h, mask, estimate)
                m3 = mask.unsqueeze(-1).float()
            x = remove_mean(x, mask)
            h = h * m3
            check_finite("sampler.x", x, step=t_now)
            check_finite("sampler.h", h, step=t_now)
            if traj is not None:
                traj.append(diffusion.decode(x, h, mask)[0].cpu())
        positions, types = diffusion.decode(x, h, mask)
        return SampleResult(positions=positions, types=types, mask=mask, trajectory=traj)
    finally:
        model.train(was_training)


def target_groups(pdf: torch.Tensor) -> torch.Tensor:
    """(B,) group id per row: rows with bit-equal target PDFs share one."""
    _, inverse = torch.unique(pdf, dim=0, return_inverse=True)
    return inverse


def resample_sources(score: torch.Tensor, groups: torch.Tensor, keep: float) -> torch.Tensor:
    """(B,) for each row, the row it continues from: within each group the ceil(keep·n) lowest scores continue
    as themselves; every other row copies one of them, best first, round robin. Greedy and deterministic."""
    src = torch.arange(score.shape[0], device=score.device)
    for g in torch.unique(groups):
        rows = torch.nonzero(groups == g).squeeze(1)
        ranked = rows[torch.argsort(score[rows], stable=True)]
        n_keep = max(1, math.ceil(keep * rows.numel()))
        kept, dropped = ranked[:n_keep], ranked[n_keep:]
        src[dropped] = kept[torch.arange(dropped.numel(), device=score.device) % n_keep]
    return src


def _copy_rows(src: torch.Tensor, x, h, mask, estimate):
    """Each row continues from row src[i]'s state (x_t, types, atom count, self-conditioning estimate), exactly:
    copies diverge through the sampler's fresh noise (η > 0), as particles do after SMC resampling."""
    if estimate is not None:
        estimate = tuple(e[src] for e in estimate)
    return x[src], h[src], mask[src], estimate


def _bound_types(h0: torch.Tensor, clip) -> torch.Tensor:
    """Clip a predicted clean type state to [-1, 1] (clean types are 0 or `type_scale` ≤ 1) when clipping is on:
    at high noise 1/√ᾱ amplifies ε̂_h as it does ε̂_x, and an unbounded type state fed back makes the EGNN's
    sum-aggregated features grow step after step until they overflow (docs/training.md)."""
    return h0 if clip is None else h0.clamp(-1.0, 1.0)


def _clean_estimate(x0, h0, t_now: int, mask, clip, guide):
    """x̂0 of the positions after clipping and (optionally) PDF guidance."""
    x0 = clip_positions(x0, mask, clip)
    if guide is not None:
        x0 = remove_mean(guide(x0, h0, t_now, mask), mask)
    return x0


def _ancestral_step(diffusion: GaussianDiffusion, x, h, ex, eh, tt, mask, generator, clip=None, guide=None):
    """x_{t-1} = posterior mean with x̂_0 from ε̂, plus √β̃_t noise. The last step (t = 1) returns x̂_0
    itself: the state at t = 0 still carries √(1-ᾱ_0) of noise, the data do not (as EDM's p(x | z_0))."""
    t_now = int(tt[0])
    h0 = _bound_types(diffusion.predict_x0(h, tt, eh), clip)
    x0 = _clean_estimate(diffusion.predict_x0(x, tt, ex), h0, t_now, mask, clip, guide)
    out = []
    for z, z0, noise_fn in ((x, x0, diffusion.position_noise), (h, h0, diffusion.type_noise)):
        if t_now == 1:
            out.append(z0)
            continue
        mean, var = diffusion.posterior_mean_var(z0, z, tt)
        out.append(mean + var.sqrt() * noise_fn(mask, generator))
    return out[0], out[1], x0, h0


def _ddim_step(diffusion: GaussianDiffusion, x, h, ex, eh, t_now: int, t_next: int, eta: float, mask, generator,
               clip=None, guide=None):
    """DDIM (Song et al. 2021) from t_now to t_next < t_now; eta = 0 deterministic, 1 ≈ ancestral.
    The last step (t_next = 0) returns x̂_0, as the ancestral sampler does."""
    s = diffusion.schedule
    a_t = float(s.alphas_cumprod[t_now])
    a_s = float(s.alphas_cumprod[t_next])
    sigma = 0.0
    if eta > 0 and t_next > 0:
        sigma = eta * ((1 - a_s) / (1 - a_t) * (1 - a_t / a_s)) ** 0.5
    dir_coef = max(1 - a_s - sigma ** 2, 0.0) ** 0.5
    h0 = (h - (1 - a_t) ** 0.5 * eh) / a_t ** 0.5
    x0 = (x - (1 - a_t) ** 0.5 * ex) / a_t ** 0.5
    if clip is not None or guide is not None:
        x0 = _clean_estimate(x0, h0, t_now, mask, clip, guide)
        ex = (x - a_t ** 0.5 * x0) / (1 - a_t) ** 0.5  # the noise consistent with the adjusted x0
    if clip is not None:
        h0 = _bound_types(h0, clip)
        eh = (h - a_t ** 0.5 * h0) / (1 - a_t) ** 0.5
    out = []
    for z0, e, noise_fn in ((x0, ex, diffusion.position_noise), (h0, eh, diffusion.type_noise)):
        if t_next == 0:
            out.append(z0)
            continue
        z_next = a_s ** 0.5 * z0 + dir_coef * e
        if sigma > 0:
            z_next = z_next + sigma * noise_fn(mask, generator)
        out.append(z_next)
    return out[0], out[1], x0, h0
