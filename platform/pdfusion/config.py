"""Every typed configuration of pdfusion, in one place.

Configs are plain dataclasses so that they serialise to JSON next to every checkpoint and MLflow run
(`to_dict` / `from_dict`), and a checkpoint alone can rebuild its model. Validation happens in
`__post_init__` so bad values fail before any work starts, with a message naming the field.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

T = TypeVar("T")

SCHEDULES = ("linear", "cosine", "polynomial")
RADIATIONS = ("xray", "neutron")


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field and the fix."""


def _check(cond: bool, field_name: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{field_name}: {msg}")


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready dict of a (nested) config dataclass."""
    return dataclasses.asdict(cfg)


_SCALARS = (int, float, bool, str, type(None))


def _check_scalar(cls: type, name: str, hint: Any, value: Any) -> None:
    """A clear error for a scalar field given the wrong type (e.g. `--set model.cutoff=abc`), before
    `__post_init__` compares it with a number. Fields whose type is not plain scalars are left alone."""
    allowed = (typing.get_args(hint) if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
               else (hint,))
    if not allowed or not all(a in _SCALARS for a in allowed):
        return
    if isinstance(value, bool):  # a bool is an int to isinstance; only a bool field takes it
        ok = bool in allowed
    elif isinstance(value, int):
        ok = int in allowed or float in allowed
    else:
        ok = any(isinstance(value, a) for a in allowed)
    if not ok:
        want = " | ".join("None" if a is type(None) else a.__name__ for a in allowed)
        raise ConfigError(f"{cls.__name__}.{name}: expected {want}, got {type(value).__name__} {value!r}")


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Rebuild a (nested) config dataclass; unknown keys are an error naming the key."""
    if not isinstance(data, dict):
        raise ConfigError(f"{cls.__name__}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{cls.__name__}: unknown key(s) {unknown}; valid keys are {sorted(names)}")
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            value = from_dict(hint, value)
        elif typing.get_origin(hint) in (tuple,) and isinstance(value, list):
            value = tuple(value)
        elif isinstance(hint, types.UnionType) and isinstance(value, list):
            value = tuple(value)
        _check_scalar(cls, name, hint, value)
        kwargs[name] = value
    return cls(**kwargs)


def _parse_value(raw: str, as_text: bool = False) -> Any:
    """A command-line value: Python's `None` is JSON's null; else JSON, else a YAML scalar ('True'), else the
    text itself. A field that takes text (`as_text`: `str`, `str | None`) keeps it as given ('123' stays '123')."""
    if raw.strip() == "None":
        return None
    if as_text:
        return raw
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        pass
    import yaml

    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw
    return value if isinstance(value, _SCALARS) else raw


def _field_hint(cls: type | None, parts: Sequence[str]) -> Any:
    """The type hint of the field at dotted `parts` of config class `cls` (None when unknown)."""
    hint: Any = cls
    for k in parts:
        if not (isinstance(hint, type) and dataclasses.is_dataclass(hint)):
            return None
        hint = typing.get_type_hints(hint).get(k)
    return hint


def _set(data: dict[str, Any], key: str, value: Any, cls: type | None = None, what: str = "--set") -> None:
    """Put `value` at dotted `key` of a config dict; text is parsed as `_parse_value` says for that field."""
    node, parts = data, key.split(".")
    for k in parts[:-1]:
        if not isinstance(node.get(k), dict):
            raise ConfigError(f"{what} {key}: {k!r} is not a config section")
        node = node[k]
    if parts[-1] not in node:
        raise ConfigError(f"{what} {key}: unknown field {parts[-1]!r} (an unknown key; valid keys are {sorted(node)})")
    if isinstance(value, str):
        hint = _field_hint(cls, parts)
        args = typing.get_args(hint)
        text = hint is str or str in args or (typing.get_origin(hint) is Literal
                                              and all(isinstance(a, str) for a in args))
        value = _parse_value(value, as_text=text)
    node[parts[-1]] = value


def apply_set(data: dict[str, Any], item: str, cls: type | None = None) -> None:
    """Apply one command-line `--set a.b=value` to a config dict in place (see `_parse_value`); the key must
    name an existing field. `from_dict` validates the value afterwards."""
    key, sep, raw = item.partition("=")
    if not sep:
        raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set model.hidden=32")
    _set(data, key, raw, cls)


def read_mapping(path: str | Path, what: str = "config") -> dict[str, Any]:
    """A JSON or YAML file (by suffix) holding a mapping; errors name `what`, the file and the line."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what}: file {path} does not exist")
    text = path.read_text()
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{what}: {path}: line {err.lineno}: invalid JSON ({err.msg})") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"{what}: {path}: not valid YAML ({err})") from err
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{what}: {path}: expected a mapping of fields at the top level")
    return data


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` merged into `base`, nested mappings key by key (a partial file changes only what it names)."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _defaults(cls: type) -> dict[str, Any]:
    """A config class's defaults as a dict, without validating them (a ServeConfig needs its model first)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        else:
            continue
        out[f.name] = to_dict(value) if dataclasses.is_dataclass(value) else value
    return out


def load(
    cls: type[T],
    *,
    preset: str | None = None,
    base: T | None = None,
    file: str | Path | dict[str, Any] | None = None,
    values: dict[str, Any] | None = None,
    sets: Sequence[str] = (),
    what: str = "config",
) -> T:
    """The one way a config is put together, in this order: the class defaults, a named `preset` (training)
    or a `base` config → a JSON/YAML `file` of fields (or its mapping), nested keys merged → `values` (dotted
    keys, e.g. from command-line flags; None is skipped; text is parsed per field) → `--set key=value` items.
    Validated once at the end by `from_dict`: every field's `__post_init__` and the cross-field checks."""
    if preset is not None and base is not None:
        raise ValueError("load: give a preset or a base config, not both")
    if preset is not None:
        if cls is not TrainConfig:
            raise ValueError(f"load: presets are TrainConfig presets, not {cls.__name__}")
        base = _named_preset(preset)
    data = to_dict(base) if base is not None else _defaults(cls)
    if file is not None:
        data = merge(data, file if isinstance(file, dict) else read_mapping(file, what))
    for key, value in (values or {}).items():
        if value is not None:
            _set(data, key, value, cls, what=what)
    for item in sets:
        apply_set(data, item, cls)
    return from_dict(cls, data)


def with_sets(cfg: T, items: Sequence[str]) -> T:
    """`cfg` with command-line `--set a.b=value` items applied, validated again (`load` with a base)."""
    return load(type(cfg), base=cfg, sets=items)


# --------------------------------------------------------------------------------------------------
# PDF simulation
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PDFConfig:
    """diffpy.srreal DebyePDFCalculator parameters. Defaults = the seed-oxides dataset's simulation."""

    rmin: float = 0.0
    rmax: float = 30.0
    rstep: float = 0.01
    qmin: float = 0.8
    qmax: float = 30.0
    qstep: float | None = None  # None: srreal's optimum for rmax (pi / extended rmax)
    qdamp: float = 0.01
    biso: float = 0.3  # isotropic Debye-Waller B (A^2), same for every atom
    delta2: float = 0.0
    radiation: Literal["xray", "neutron"] = "xray"
    normalize: bool = True  # divide G(r) by its maximum, as the seed-oxides data are

    def __post_init__(self) -> None:
        _check(self.rmax > self.rmin >= 0, "rmax", f"need rmax > rmin >= 0, got rmin={self.rmin}, rmax={self.rmax}")
        _check(0 < self.rstep < self.rmax - self.rmin, "rstep", f"need 0 < rstep < rmax - rmin, got {self.rstep}")
        _check(self.qmax > self.qmin >= 0, "qmax", f"need qmax > qmin >= 0, got qmin={self.qmin}, qmax={self.qmax}")
        _check(self.qstep is None or self.qstep > 0, "qstep", f"must be positive or None, got {self.qstep}")
        _check(self.qdamp >= 0, "qdamp", f"must be >= 0, got {self.qdamp}")
        _check(self.biso >= 0, "biso", f"must be >= 0, got {self.biso}")
        _check(self.delta2 >= 0, "delta2", f"must be >= 0, got {self.delta2}")
        _check(self.radiation in RADIATIONS, "radiation", f"must be one of {RADIATIONS}, got {self.radiation!r}")

    @property
    def n_r(self) -> int:
        return int(round((self.rmax - self.rmin) / self.rstep))


# --------------------------------------------------------------------------------------------------
# Dataset generation
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AugmentConfig:
    """Per-structure randomisation of the simulated PDF, for robustness to measured data."""

    noise_std: float = 0.0  # Gaussian noise on the normalised G(r)
    scale_range: tuple[float, float] = (1.0, 1.0)
    qdamp_range: tuple[float, float] | None = None
    biso_range: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        _check(self.noise_std >= 0, "noise_std", f"must be >= 0, got {self.noise_std}")
        for name in ("scale_range", "qdamp_range", "biso_range"):
            rng = getattr(self, name)
            if rng is not None:
                _check(len(rng) == 2 and 0 <= rng[0] <= rng[1], name,
                       f"need (low, high) with 0 <= low <= high, got {rng}")


@dataclass(frozen=True)
class GenerateConfig:
    """The (structure type x metal x radius x variant) grid of `jobs/generate_dataset.py`."""

    out_dir: str = "data_out/generated"
    types: tuple[str, ...] = ("NaCl", "Rutile", "Fluorite", "Spinel")
    metals: tuple[str, ...] = ("Ti", "Zn", "Mn", "Co")
    radii: tuple[float, ...] = (5.0, 6.0)
    variants: int = 1  # random particle centres / augmentations per grid point
    seed: int = 0
    shard_size: int = 256
    min_distance: float = 1.2
    pdf: PDFConfig = field(default_factory=PDFConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        _check(len(self.types) > 0, "types", "give at least one structure type")
        _check(len(self.metals) > 0, "metals", "give at least one metal")
        _check(len(self.radii) > 0 and all(r > 0 for r in self.radii), "radii",
               f"need positive radii, got {self.radii}")
        _check(self.variants >= 1, "variants", f"must be >= 1, got {self.variants}")
        _check(self.shard_size >= 1, "shard_size", f"must be >= 1, got {self.shard_size}")


# --------------------------------------------------------------------------------------------------
# Diffusion model
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ScheduleConfig:
    name: Literal["linear", "cosine", "polynomial"] = "polynomial"
    timesteps: int = 1000
    beta_start: float = 1e-4  # linear
    beta_end: float = 0.02  # linear
    cosine_s: float = 0.008  # cosine offset
    precision: float = 1e-5  # polynomial_2 precision s (EDM)
    power: float = 2.0  # polynomial power

    def __post_init__(self) -> None:
        _check(self.name in SCHEDULES, "schedule.name", f"unknown schedule {self.name!r}; choose one of {SCHEDULES}")
        _check(self.timesteps >= 2, "schedule.timesteps", f"must be >= 2, got {self.timesteps}")
        _check(0 < self.beta_start < self.beta_end < 1, "schedule.beta_end", "need 0 < beta_start < beta_end < 1")
        _check(0 < self.precision < 0.5, "schedule.precision", f"must be in (0, 0.5), got {self.precision}")


@dataclass(frozen=True)
class ModelConfig:
    """EGNN denoiser + PDF encoder + atom-count head."""

    hidden: int = 64
    layers: int = 4
    attention: bool = True
    tanh: bool = True
    coords_range: float = 15.0  # tanh-bounded coordinate update range
    norm_constant: float = 1.0  # EDM's normalisation of the coordinate difference
    aggregation: Literal["sum", "mean"] = "sum"
    # sum-aggregation divisor: 100 is the EGNN class default in EDM's code; EDM's training runs pass 1, as do
    # experiments/exp_cube.py and exp_overfit_one.py (see docs/training.md for what 1 changes on 135-atom particles)
    normalization_factor: float = 100.0
    cutoff: float | None = None  # None: fully connected within a particle; else radius graph (A)
    n_types: int = 2  # one-hot atom types: metal, oxygen
    type_scale: float = 0.25  # EDM scales one-hot features before noising
    pdf_points: int = 3000  # length of the conditioning G(r)
    pdf_encoder: Literal["mlp", "conv"] = "mlp"
    pdf_embed: int = 128
    n_metals: int = 100  # metal embedding table size (indexed by Z)
    max_atoms: int = 512  # atom-count predictor classes: 1..max_atoms
    position_scale: float = 3.5  # positions / this (A) before diffusion; seed-oxides coordinate std is 3.4-3.6 A
    grad_checkpoint: bool = False  # recompute EGNN blocks in backward (less memory for large particles)
    # None: the model learns positions in Å. A length (Å): each particle is first rescaled so its median
    # metal–oxygen bond has this length, so one structure type at every lattice constant is one shape to learn;
    # samplers then fit each candidate's isotropic expansion to the target G(r) (pdf.fitting.fit_expansion).
    bond_length: float | None = None
    # Physics-informed conditioning (diffusion.edge_pdf). "raw": every edge also sees the target G(r) read at
    # that edge's distance (a ±0.6 Å stencil of 7 points, sharp and blurred by 0.25 Å: 14 features; zeros where
    # the condition is dropped); "noise_aware": the blurred half is blurred by √(0.25² + 2σ_t²) Å instead, the
    # spread of a pair distance at noise σ_t per coordinate. The conditioning G(r) is on r = k · pdf_rstep Å.
    edge_pdf: Literal["off", "raw", "noise_aware"] = "off"
    pdf_rstep: float = 0.01
    # A frame: node inputs also carry the absolute coordinates (and their Fourier features), and a non-equivariant
    # per-atom displacement joins ε_x. The seed and generated particles are crystal-axis aligned, so the network
    # need not infer an orientation; the PDF is rotation-invariant, so one orientation per structure suffices.
    frame_features: bool = False
    # Learned guidance (diffusion.pdf_gradient): each atom's descent direction of the misfit between G(x_t/√ᾱ)
    # and the target broadened by the noise, an equivariant per-atom input gated by a learned scalar.
    pdf_gradient: bool = False
    # Self-conditioning (Chen et al. 2022): the previous estimate (x̂0, ĥ0) is an input — its distance from x_t per
    # atom, its types, each edge's x̂0 distance (and, with edge_pdf, the target read there), and a gated per-atom
    # vector x̂0 − x_t. Training feeds a no-grad first estimate on half the batches; the sampler feeds the last step's.
    self_condition: bool = False

    def __post_init__(self) -> None:
        _check(self.hidden > 0, "model.hidden", f"must be positive, got {self.hidden}")
        _check(self.edge_pdf in ("off", "raw", "noise_aware"), "model.edge_pdf",
               f"must be 'off', 'raw' or 'noise_aware', got {self.edge_pdf!r}")
        _check(self.pdf_rstep > 0, "model.pdf_rstep", f"must be positive (Å), got {self.pdf_rstep}")
        _check(self.layers > 0, "model.layers", f"must be positive, got {self.layers}")
        _check(self.aggregation in ("sum", "mean"), "model.aggregation", "must be 'sum' or 'mean'")
        _check(self.cutoff is None or self.cutoff > 0, "model.cutoff", "must be None or positive")
        _check(self.pdf_encoder in ("mlp", "conv"), "model.pdf_encoder", "must be 'mlp' or 'conv'")
        _check(self.position_scale > 0, "model.position_scale", "must be positive")
        _check(self.bond_length is None or self.bond_length > 0, "model.bond_length",
               f"must be None (absolute Å) or a positive length in Å, got {self.bond_length}")


@dataclass(frozen=True)
class DiffusionConfig:
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    p_uncond: float = 0.1  # classifier-free guidance: probability of dropping the condition in training
    type_loss_weight: float = 1.0
    # "uniform": plain ε-MSE (EDM's L_simple); "min_snr": ε-MSE × min(SNR_t, γ)/SNR_t (Hang et al. 2023), which
    # stops the many nearly-clean steps from dominating the gradient and shifts effort to mid noise.
    loss_weighting: Literal["uniform", "min_snr"] = "uniform"
    min_snr_gamma: float = 5.0
    # Where training spends its steps. "uniform": t ~ U{1..T} (on the polynomial T = 500 schedule ~80 % of steps
    # sit above 1.5 Å of noise per atom, where nothing is decided); "lognormal": the x̂0-space noise
    # σ = √((1−ᾱ)/ᾱ) (model units per coordinate) is drawn log-normally, EDM-style, and t is the nearest time.
    t_sampling: Literal["uniform", "lognormal"] = "uniform"
    t_log_sigma_mean: float = -1.9  # ln σ: 0.15 ≈ 0.9 Å per atom at position_scale 3.5, where order forms
    t_log_sigma_std: float = 1.2
    # Self-conditioning in training takes its first estimate at t + self_cond_lag (same noise ε): the sampler
    # feeds the previous step's estimate, from about T / steps earlier; 0 = the same t (Chen et al. 2022).
    self_cond_lag: int = 0
    # Equivariant OT coupling: each training noise draw is rotated and permuted (within each atom type) onto its
    # structure (`diffusion.geometry.align_noise`); sample such a model with η = 0, the path's ODE.
    align_noise: bool = False
    align_noise_fraction: float = 1.0  # of the structures in a batch; the rest keep plain noise (a mixed coupling)

    def __post_init__(self) -> None:
        _check(0.0 <= self.p_uncond <= 1.0, "p_uncond", f"must be in [0, 1], got {self.p_uncond}")
        _check(0.0 <= self.align_noise_fraction <= 1.0, "diffusion.align_noise_fraction",
               f"must be in [0, 1], got {self.align_noise_fraction}")
        _check(self.self_cond_lag >= 0, "diffusion.self_cond_lag", f"must be >= 0, got {self.self_cond_lag}")
        _check(self.t_sampling in ("uniform", "lognormal"), "diffusion.t_sampling",
               f"must be 'uniform' or 'lognormal', got {self.t_sampling!r}")
        _check(self.t_log_sigma_std > 0, "diffusion.t_log_sigma_std", f"must be positive, got {self.t_log_sigma_std}")
        _check(self.loss_weighting in ("uniform", "min_snr"), "diffusion.loss_weighting",
               f"must be 'uniform' or 'min_snr', got {self.loss_weighting!r}")
        _check(self.min_snr_gamma > 0, "diffusion.min_snr_gamma", f"must be positive, got {self.min_snr_gamma}")


@dataclass(frozen=True)
class SampleConfig:
    """Sampling. Guidance convention: eps = (1 - gamma) * eps_uncond + gamma * eps_cond;
    gamma = 0 unconditional, 1 plain conditional, > 1 stronger guidance."""

    guidance: float = 1.0
    steps: int | None = None  # None: ancestral DDPM over all T steps; else strided (DDIM-style) S steps
    # DDIM stochasticity of the strided sampler (0 deterministic, 1 ~ ancestral). 1 fits better than 0
    # (docs/training.md, "Strided vs full-length sampling")
    eta: float = 1.0
    # strided times evenly spaced in t ("time") or in σ^(1/7) (Karras et al. 2022, "sigma": more steps at low noise)
    spacing: Literal["time", "sigma"] = "time"
    # Template-seeded sampling (SDEdit): start from given structures noised to this time instead of from x_T
    # (`sample(..., init=batch)`), so near a library structure the model corrects instead of inventing.
    init_t: int | None = None
    n_samples: int = 16  # K candidates per PDF
    n_atoms: int | None = None  # None: predicted from the PDF
    # temperature of the count head's draw, p(N | PDF)^(1/T) renormalised: 1 samples the head as trained, < 1
    # sharpens toward its mode (a candidate of a wrong size cannot fit however well it is placed), > 1 spreads
    count_temperature: float = 1.0
    # where the atom counts come from when n_atoms is None: "head", the model's count head; "library", the 4 best
    # expansion-fitted perfect spherical cuts of the PDF's metal (inference.sizing), times `size_scale` (> 1 samples
    # larger for prune_atoms to carve): the head regresses to its training mean (docs/evaluation.md, r11)
    sizing: Literal["head", "library"] = "head"
    size_scale: float = 1.0
    refine: bool = False
    refine_steps: int = 100
    # after refinement, the best `prune_top` candidates lose the atoms whose removal lowers R_wp and are refined
    # again (inference.topology.reshape_and_refine; kept only where R_wp falls): refinement cannot change a
    # candidate's atom count, and the measured gap to the library is topology (docs/evaluation.md, r9)
    prune_atoms: bool = False
    prune_top: int = 4
    seed: int = 0
    # Largest distance (A) of any atom from the particle centre that a predicted clean structure x0 may
    # have; predictions beyond it are pulled back radially (rotation-equivariant "clip_denoised"). Without
    # it, a poor epsilon at high noise is amplified by 1/sqrt(alpha_bar_T) and atoms fly thousands of A away.
    clip_x0: float | None = 25.0
    # PDF guidance (diffusion.pdf_guidance): every step moves x0 down R_wp to the target G(r) through the
    # simulator; the value is the RMS step per atom in A at full noise (0 = off). Needs the PDFConfig.
    pdf_guidance: float = 0.0
    pdf_guidance_iters: int = 1  # gradient steps per sampler step
    pdf_guidance_blur: float = 0.8  # A, largest blur of both G(r) curves (at high noise)
    # weight (A^-2) of the stray-atom penalty in the guidance objective: sum of relu(d_nn - 3.5 A)^2 over atoms
    # (pdf.fitting.cohesion_penalty); a stray atom's pairs sit at long r, where R_wp barely pulls it. 0 = off.
    pdf_guidance_cohesion: float = 0.0
    # the share of the sampler's steps [start, end) that are guided, as fractions of the steps (0 = the first,
    # at full noise): where guidance's iterations are spent, at the same cost per guided step
    pdf_guidance_window: tuple[float, float] = (0.0, 1.0)
    # drop every atom outside each sample's largest bonded group (bonds < 3.5 A; structures.fragments) before it
    # is scored: detached atoms are no part of a particle, and a candidate that holds them fails strict validity
    prune_fragments: bool = False
    # What a self-conditioned model (model.self_condition) is fed as its previous estimate: "clean", the x0 after
    # clipping and PDF guidance; "raw", the network's own x0 from its epsilon, as in training.
    self_cond_estimate: Literal["clean", "raw"] = "clean"
    # Population resampling: at these fractions of the sampler's steps (each in (0, 1)), the candidates of each
    # target are ranked by the guidance objective at x̂0 (blurred R_wp); the best `resample_keep` share go on
    # and every other row continues from a copy of one of their states (greedy sequential Monte Carlo): the
    # K-candidate budget is spent on the trajectories that fit. Copies diverge by the sampler's noise, so it
    # needs eta > 0 (or the ancestral sampler) and the PDFConfig. () = off.
    resample_at: tuple[float, ...] = ()
    resample_keep: float = 0.5
    # Restarts (Xu et al. 2023, "Restart sampling"): after the pass, re-noise each finished sample to `restart_t`
    # and run the sampler's times <= restart_t again, every one of them guided: structure is decided late, so the
    # late, guided phase gets more tries, each from a better start than noise. 0 = off.
    restarts: int = 0
    restart_t: int = 100

    def __post_init__(self) -> None:
        object.__setattr__(self, "resample_at", tuple(float(f) for f in self.resample_at))
        object.__setattr__(self, "pdf_guidance_window", tuple(float(f) for f in self.pdf_guidance_window))
        w = self.pdf_guidance_window
        _check(len(w) == 2 and 0.0 <= w[0] < w[1] <= 1.0, "pdf_guidance_window",
               f"must be (start, end) with 0 <= start < end <= 1 (shares of the sampler's steps), got {w}")
        _check(all(0.0 < f < 1.0 for f in self.resample_at), "resample_at",
               f"every fraction must be in (0, 1) (share of the sampler's steps), got {self.resample_at}")
        _check(not self.resample_at or self.steps is None or self.eta > 0, "resample_at",
               "copies of a row stay identical without sampler noise; use eta > 0 or steps=None")
        _check(0.0 < self.resample_keep <= 1.0, "resample_keep",
               f"must be in (0, 1] (share of each target's candidates kept), got {self.resample_keep}")
        _check(self.self_cond_estimate in ("clean", "raw"), "self_cond_estimate",
               f"must be 'clean' or 'raw', got {self.self_cond_estimate!r}")
        _check(self.spacing in ("time", "sigma"), "spacing", f"must be 'time' or 'sigma', got {self.spacing!r}")
        _check(self.init_t is None or self.init_t >= 1, "init_t", f"must be None or a time >= 1, got {self.init_t}")
        _check(self.restarts >= 0, "restarts", f"must be >= 0 (0 = off), got {self.restarts}")
        _check(self.restart_t >= 1, "restart_t", f"must be a time >= 1, got {self.restart_t}")
        _check(self.clip_x0 is None or self.clip_x0 > 0, "clip_x0", f"must be None or positive, got {self.clip_x0}")
        _check(self.pdf_guidance >= 0 and math.isfinite(self.pdf_guidance), "pdf_guidance",
               f"must be finite and >= 0 (A per step; 0 = off), got {self.pdf_guidance}")
        _check(self.pdf_guidance_iters >= 1, "pdf_guidance_iters", f"must be >= 1, got {self.pdf_guidance_iters}")
        _check(self.pdf_guidance_blur >= 0, "pdf_guidance_blur", f"must be >= 0, got {self.pdf_guidance_blur}")
        _check(self.pdf_guidance_cohesion >= 0 and math.isfinite(self.pdf_guidance_cohesion), "pdf_guidance_cohesion",
               f"must be finite and >= 0 (0 = off), got {self.pdf_guidance_cohesion}")
        _check(self.guidance >= 0 and math.isfinite(self.guidance), "guidance",
               f"must be finite and >= 0, got {self.guidance}")
        _check(self.steps is None or self.steps >= 1, "steps", f"must be None or >= 1, got {self.steps}")
        _check(self.n_samples >= 1, "n_samples", f"must be >= 1, got {self.n_samples}")
        _check(self.n_atoms is None or self.n_atoms >= 2, "n_atoms", f"must be None or >= 2, got {self.n_atoms}")
        _check(not self.prune_atoms or self.refine, "prune_atoms", "prunes refined candidates; set refine=True too")
        _check(self.prune_top >= 1, "prune_top", f"must be >= 1 (candidates pruned per PDF), got {self.prune_top}")
        _check(self.count_temperature > 0 and math.isfinite(self.count_temperature), "count_temperature",
               f"must be finite and > 0 (1 = the count head as trained), got {self.count_temperature}")
        _check(self.sizing in ("head", "library"), "sizing", f"must be 'head' or 'library', got {self.sizing!r}")
        _check(self.size_scale > 0 and math.isfinite(self.size_scale), "size_scale",
               f"must be finite and > 0 (1 = the library's counts), got {self.size_scale}")


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DataConfig:
    """Where training data come from: a pdfusion store directory or a seed-oxides folder of .h5 files."""

    path: str = ""
    # more stores (e.g. generated off-library particles) whose structures join the training split only; those of a
    # group `path`'s split holds out (a validation metal) are left out, so held-out metals stay unseen
    extra_train: tuple[str, ...] = ()
    split_by: Literal["metal", "formula", "type", "random"] = "metal"
    val_fraction: float = 0.2
    split_seed: int = 0
    max_structures: int | None = None
    max_atoms: int = 512
    batch_size: int = 16
    bucket: bool = True  # size-bucketed batching

    def __post_init__(self) -> None:
        _check(0.0 < self.val_fraction < 1.0, "data.val_fraction", f"must be in (0, 1), got {self.val_fraction}")
        _check(self.batch_size >= 1, "data.batch_size", f"must be >= 1, got {self.batch_size}")


@dataclass(frozen=True)
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    data: DataConfig = field(default_factory=DataConfig)
    pdf: PDFConfig = field(default_factory=PDFConfig)  # how the training PDFs were simulated (ranking uses it)
    lr: float = 3e-4
    weight_decay: float = 1e-12
    epochs: int = 10
    max_steps: int | None = None
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    warmup_steps: int = 100
    seed: int = 0
    val_every_epochs: int = 1
    val_samples: int = 4  # K for the validation best-of-K R_wp
    val_pdfs: int = 4
    val_steps: int = 50  # strided sampler steps during validation
    checkpoint_every_steps: int = 200
    count_loss_weight: float = 0.1

    def __post_init__(self) -> None:
        _check(self.lr > 0, "lr", f"must be positive, got {self.lr}")
        _check(self.epochs >= 1, "epochs", f"must be >= 1, got {self.epochs}")
        _check(self.grad_clip > 0, "grad_clip", f"must be positive, got {self.grad_clip}")
        _check(0.0 <= self.ema_decay < 1.0, "ema_decay", f"must be in [0, 1), got {self.ema_decay}")
        _check(self.model.pdf_points == self.pdf.n_r, "model.pdf_points",
               f"is {self.model.pdf_points} but the PDF grid (pdf.rmin/rmax/rstep) has {self.pdf.n_r} points; "
               f"set model.pdf_points={self.pdf.n_r}")


def preset(name: str) -> TrainConfig:
    """Named presets: `tiny` (tests, seconds), `cpu` (useful model in ~1 h on 2 cores), `gpu` (EDM-sized)."""
    if name == "tiny":
        return TrainConfig(
            model=ModelConfig(hidden=16, layers=2, pdf_embed=16, max_atoms=512),
            diffusion=DiffusionConfig(schedule=ScheduleConfig(timesteps=100)),
            data=DataConfig(batch_size=4),
            epochs=2, warmup_steps=5, val_samples=2, val_pdfs=2, val_steps=10, checkpoint_every_steps=20,
        )
    if name == "cpu":
        # normalization_factor 1 (EDM's training value) and the edge-level PDF, which fits far better at equal CPU
        # than factor 1 alone (docs/training.md, "Conditioning levers, equal-CPU A/B")
        return TrainConfig(
            model=ModelConfig(hidden=64, layers=4, pdf_embed=64, cutoff=6.0, normalization_factor=1.0, edge_pdf="raw"),
            diffusion=DiffusionConfig(schedule=ScheduleConfig(timesteps=500)),
            data=DataConfig(batch_size=16),
            epochs=200, lr=5e-4, val_steps=50,
        )
    if name == "gpu":
        return TrainConfig(
            model=ModelConfig(hidden=256, layers=9, pdf_embed=256),
            diffusion=DiffusionConfig(schedule=ScheduleConfig(timesteps=1000)),
            data=DataConfig(batch_size=64),
            epochs=1000, lr=1e-4, val_steps=100,
        )
    raise ConfigError(f"preset: unknown preset {name!r}; choose one of ('tiny', 'cpu', 'gpu')")


_named_preset = preset  # `load` takes a `preset` argument of the same name


# --------------------------------------------------------------------------------------------------
# Serving
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ServeLimits:
    max_samples: int = 32
    max_atoms: int = 600
    max_steps: int = 1000
    max_points: int = 20000
    max_body_bytes: int = 4_000_000
    max_guidance: float = 10.0
    max_pdf_guidance: float = 2.0  # A per sampler step (SampleConfig.pdf_guidance)
    max_pdf_guidance_iters: int = 400  # each costs one simulation + gradient per guided sampler step
    request_timeout_s: float = 120.0
    # seconds a client may take to send its whole body (a body that never finishes is answered 408)
    body_timeout_s: float = 30.0
    # estimated sampling seconds one request may cost on this server (from the replica's measured speed,
    # n_samples x n_atoms x steps); None = half of request_timeout_s, so an admitted request fits the timeout
    max_cost_s: float | None = None

    def __post_init__(self) -> None:
        for name in ("max_samples", "max_atoms", "max_steps", "max_points", "max_body_bytes"):
            _check(getattr(self, name) >= 1, f"limits.{name}", f"must be >= 1, got {getattr(self, name)}")
        _check(self.max_atoms >= 2, "limits.max_atoms", f"must be >= 2, got {self.max_atoms}")
        _check(self.max_points >= 2, "limits.max_points", f"must be >= 2, got {self.max_points}")
        _check(0 < self.max_guidance and math.isfinite(self.max_guidance), "limits.max_guidance",
               "must be finite and > 0")
        _check(0 <= self.max_pdf_guidance and math.isfinite(self.max_pdf_guidance), "limits.max_pdf_guidance",
               "must be finite and >= 0")
        _check(self.max_pdf_guidance_iters >= 1, "limits.max_pdf_guidance_iters", "must be >= 1")
        _check(self.request_timeout_s > 0, "limits.request_timeout_s", f"must be > 0, got {self.request_timeout_s}")
        _check(self.body_timeout_s > 0, "limits.body_timeout_s", f"must be > 0, got {self.body_timeout_s}")
        _check(self.max_cost_s is None or 0 < self.max_cost_s <= self.request_timeout_s, "limits.max_cost_s",
               f"must be None or in (0, request_timeout_s={self.request_timeout_s}], got {self.max_cost_s}")


@dataclass(frozen=True)
class ServeConfig:
    """The HTTP sampling service: which model (server-side only, never chosen by a request), request
    limits, sampler replicas (autoscaling), dynamic batching and per-replica resources."""

    model: str = ""  # checkpoint path or MLflow URI models:/name/version
    device: str = "cpu"
    limits: ServeLimits = field(default_factory=ServeLimits)
    default_samples: int = 4  # n_samples when a request gives none
    min_replicas: int = 1
    max_replicas: int = 2
    initial_replicas: int | None = None
    target_ongoing_requests: float = 8.0
    max_ongoing_requests: int = 32  # per sampler replica; >= max_batch_size so a batch can fill
    upscale_delay_s: float = 10.0
    downscale_delay_s: float = 120.0
    look_back_period_s: float = 30.0  # window over which ongoing requests are averaged for autoscaling
    max_batch_size: int = 16  # requests per sampler call; 1 disables batching
    max_batch_candidates: int = 256  # candidates (sum of n_samples) per sampler call
    # candidate atoms (n_samples x n_atoms, free n_atoms counts as the model's max) per call
    max_batch_atoms: int = 32768
    access_log: bool = False  # Serve's per-request INFO log lines (CPU on every request)
    batch_wait_timeout_s: float = 0.05
    num_cpus: float = 1.0  # per sampler replica
    num_gpus: float = 0.0  # per sampler replica; fractions share a GPU
    ingress_num_cpus: float = 0.1
    torch_threads: int = 1
    refine_steps: int = 100  # gradient steps when a request asks for refinement

    def __post_init__(self) -> None:
        _check(bool(self.model), "model", "give a checkpoint path or an MLflow URI models:/name/version")
        _check(1 <= self.default_samples <= self.limits.max_samples, "default_samples",
               f"must be in 1..limits.max_samples={self.limits.max_samples}, got {self.default_samples}")
        _check(0 <= self.min_replicas <= self.max_replicas and self.max_replicas >= 1, "max_replicas",
               f"need 0 <= min_replicas <= max_replicas, max_replicas >= 1; got {self.min_replicas}, "
               f"{self.max_replicas}")
        _check(self.initial_replicas is None or self.min_replicas <= self.initial_replicas <= self.max_replicas,
               "initial_replicas", "must be None or within [min_replicas, max_replicas]")
        _check(self.target_ongoing_requests > 0, "target_ongoing_requests", "must be > 0")
        _check(self.upscale_delay_s >= 0 and self.downscale_delay_s >= 0, "downscale_delay_s", "delays must be >= 0")
        _check(self.look_back_period_s > 0, "look_back_period_s", f"must be > 0, got {self.look_back_period_s}")
        _check(self.max_batch_size >= 1, "max_batch_size", f"must be >= 1, got {self.max_batch_size}")
        _check(self.max_ongoing_requests >= self.max_batch_size, "max_ongoing_requests",
               f"must be >= max_batch_size={self.max_batch_size} or batches can never fill")
        _check(self.max_batch_candidates >= self.limits.max_samples, "max_batch_candidates",
               f"must be >= limits.max_samples={self.limits.max_samples} so any single request fits a batch")
        _check(self.max_batch_atoms >= self.limits.max_samples * self.limits.max_atoms, "max_batch_atoms",
               f"must be >= limits.max_samples x limits.max_atoms = {self.limits.max_samples * self.limits.max_atoms} "
               "so any single request fits a batch")
        _check(self.batch_wait_timeout_s >= 0, "batch_wait_timeout_s", "must be >= 0")
        _check(self.num_cpus >= 0 and self.num_gpus >= 0 and self.ingress_num_cpus >= 0, "num_gpus",
               "resources must be >= 0")
        _check(self.num_gpus == 0 or self.device.startswith("cuda"), "device",
               f"num_gpus={self.num_gpus} needs device='cuda', got {self.device!r}")
        _check(self.torch_threads >= 1, "torch_threads", f"must be >= 1, got {self.torch_threads}")
        _check(self.refine_steps >= 0, "refine_steps", f"must be >= 0, got {self.refine_steps}")


# --------------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------------
EVAL_METHODS = ("model", "unconditional", "library", "random")


@dataclass(frozen=True)
class EvalConfig:
    """`jobs/evaluate.py`: a model and its baselines on the held-out split of a dataset."""

    model: str = ""  # checkpoint path or MLflow models:/ URI ("" = baselines only)
    data: str = ""  # store root or seed-oxides folder
    out_dir: str = "outputs/eval"
    methods: tuple[str, ...] = EVAL_METHODS
    k: int = 16
    guidance: float | None = None  # None: the model's default
    steps: int | None = None  # None: the model's default
    refine: bool = False  # refine every method's candidates on R_wp (the baselines too, for a fair comparison)
    refine_steps: int = 300
    max_targets: int | None = None
    split_by: str | None = None  # None: the model's training split (so held-out metals stay unseen)
    val_fraction: float | None = None
    split_seed: int | None = None
    seed: int = 0
    num_tasks: int = 2  # Ray tasks the targets are spread over
    plots: int = 4  # targets shown in overlay / 3-D plots

    def __post_init__(self) -> None:
        _check(bool(self.data), "data", "give the dataset to evaluate on (--data <store dir or seed-oxides folder>)")
        bad = [m for m in self.methods if m not in EVAL_METHODS]
        _check(not bad, "methods", f"unknown method(s) {bad}; choose from {EVAL_METHODS}")
        needs_model = {"model", "unconditional"} & set(self.methods)
        _check(bool(self.model) or not needs_model, "model",
               f"methods {sorted(needs_model)} need --model (checkpoint or models:/ URI)")
        _check(self.refine_steps >= 0, "refine_steps", f"must be >= 0, got {self.refine_steps}")
        _check(self.k >= 1, "k", f"must be >= 1, got {self.k}")
        _check(self.num_tasks >= 1, "num_tasks", f"must be >= 1, got {self.num_tasks}")
        _check(self.guidance is None or self.guidance >= 0, "guidance", f"must be >= 0, got {self.guidance}")


# --------------------------------------------------------------------------------------------------
# Fitting and solving measured PDFs (pdf.refine, inference)
# --------------------------------------------------------------------------------------------------
PARTICLE_EXPANSION = (0.8, 1.25)  # the isotropic expansion a particle refinement may reach (pdf.refine bounds)
FIT_WEIGHTS = ("unit", "dg")
FIT_CONVENTIONS = ("srreal", "pdffit2")


def _free_names(free: Any) -> tuple[str, ...] | None:
    """'scale, a' / ['scale', 'a'] / ('scale', 'a') -> ('scale', 'a'); None stays None."""
    if free is None:
        return None
    if isinstance(free, str):
        return tuple(f.strip() for f in free.split(",") if f.strip())
    return tuple(str(f) for f in free)


@dataclass(frozen=True)
class FitConfig:
    """Options of a least-squares fit to a measured PDF (`pdf.refine.fit_periodic` / `fit_particle`, `pdfusion fit`).

    ``free`` None: the model's default free parameters. ``qmax`` must be known for a fit (the Qmax the PDF was
    computed with; the CLI reads it from the file header). Lengths in Å, Q in 1/Å."""

    free: tuple[str, ...] | None = None
    rmin: float = 1.5
    rmax: float | None = None  # None: the end of the data
    qmin: float = 0.0
    qmax: float | None = None
    qdamp: float = 0.04
    qbroad: float = 0.0
    spdiameter: float | None = None  # periodic: starting spherical-particle diameter (None: no envelope)
    weights: Literal["unit", "dg"] = "unit"
    radiation: Literal["xray", "neutron"] = "xray"
    max_nfev: int = 200
    position_steps: int = 60  # particle: L-BFGS iterations when 'positions' is free
    min_distance: float = 0.5  # atoms closer than this are refused as duplicates
    convention: Literal["srreal", "pdffit2"] = "srreal"  # periodic engine
    nyquist: bool = False  # fit the data resampled onto rmin + k pi/Qmax, as PDFgui does
    expansion_bounds: tuple[float, float] = PARTICLE_EXPANSION

    def __post_init__(self) -> None:
        object.__setattr__(self, "free", _free_names(self.free))
        object.__setattr__(self, "expansion_bounds", tuple(float(b) for b in self.expansion_bounds))
        _check(self.free is None or len(self.free) > 0, "free", "no parameter to refine")
        _check(math.isfinite(self.rmin) and self.rmin >= 0, "rmin", f"must be finite and >= 0 Å, got {self.rmin}")
        _check(self.rmax is None or (math.isfinite(self.rmax) and self.rmax > self.rmin), "fit window",
               f"need rmin < rmax, got rmin = {self.rmin:g}, rmax = {self.rmax} Å")
        _check(self.qmax is None or (math.isfinite(self.qmax) and self.qmax > 0), "qmax",
               f"must be a positive number (the Qmax the PDF was computed with), got {self.qmax}")
        _check(math.isfinite(self.qmin) and 0 <= self.qmin < (self.qmax if self.qmax is not None else math.inf),
               "qmin", f"must satisfy 0 <= qmin < qmax = {self.qmax}, got {self.qmin}")
        _check(math.isfinite(self.qdamp) and self.qdamp >= 0, "qdamp", f"must be finite and >= 0, got {self.qdamp}")
        _check(math.isfinite(self.qbroad) and self.qbroad >= 0, "qbroad", f"must be finite and >= 0, got {self.qbroad}")
        _check(self.spdiameter is None or self.spdiameter > 0, "spdiameter",
               f"must be None or > 0 Å, got {self.spdiameter}")
        _check(self.weights in FIT_WEIGHTS, "weights", f"must be 'unit' or 'dg', got {self.weights!r}")
        _check(self.radiation in RADIATIONS, "radiation", f"must be one of {RADIATIONS}, got {self.radiation!r}")
        _check(self.max_nfev >= 1, "max_nfev", f"must be >= 1, got {self.max_nfev}")
        _check(self.position_steps >= 1, "position_steps", f"must be >= 1, got {self.position_steps}")
        _check(self.min_distance > 0, "min_distance", f"must be > 0 Å, got {self.min_distance}")
        _check(self.convention in FIT_CONVENTIONS, "convention",
               f"must be one of {FIT_CONVENTIONS}, got {self.convention!r}")
        lo, hi = self.expansion_bounds if len(self.expansion_bounds) == 2 else (math.nan, math.nan)
        _check(0 < lo <= 1 <= hi, "expansion_bounds",
               f"need (lo, hi) with 0 < lo <= 1 <= hi, got {self.expansion_bounds}")


@dataclass(frozen=True)
class ScreenConfig:
    """How `pdfusion solve` scores candidate particles against a measured PDF (`inference.screen`).
    Lengths in Å, Q in 1/Å, Uiso in Å^2."""

    rmin: float = 1.5
    rmax: float | None = None  # None: end of the data, capped at rmax_cap
    rmax_cap: float = 30.0
    qmin: float = 1.0
    qmax: float = 25.0
    qdamp: float = 0.04
    radiation: Literal["xray", "neutron"] = "xray"
    expansion: tuple[float, float] = (0.85, 1.15)  # isotropic expansion search range (inside PARTICLE_EXPANSION)
    expansion_step: float = 0.005  # coarse grid; then +- one step at expansion_step / 10
    uiso: tuple[float, ...] = (0.002, 0.0035, 0.005, 0.0065, 0.008, 0.01, 0.0125, 0.016, 0.02)
    screen_rstep: float = 0.02  # data thinned to about this r step while screening (peaks are >= 0.1 Å wide)
    max_pair_distance: float = 80.0  # sets the Q step of the sine transform (pi / this); longer pairs cut

    def __post_init__(self) -> None:
        _check(self.rmin >= 0, "rmin", f"must be >= 0 Å, got {self.rmin}")
        _check(self.rmax is None or self.rmax > self.rmin, "rmax", f"must exceed rmin {self.rmin}, got {self.rmax}")
        _check(self.rmax_cap > self.rmin, "rmax_cap", f"must exceed rmin {self.rmin}, got {self.rmax_cap}")
        _check(self.qmax > self.qmin >= 0, "qmax", f"need qmax > qmin >= 0, got qmin={self.qmin}, qmax={self.qmax}")
        _check(self.qdamp >= 0, "qdamp", f"must be >= 0, got {self.qdamp}")
        _check(self.radiation in RADIATIONS, "radiation", f"must be 'xray' or 'neutron', got {self.radiation!r}")
        lo, hi = self.expansion
        _check(PARTICLE_EXPANSION[0] <= lo <= 1 <= hi <= PARTICLE_EXPANSION[1], "expansion",
               f"need {PARTICLE_EXPANSION[0]} <= lo <= 1 <= hi <= {PARTICLE_EXPANSION[1]} (the refinement's bounds), "
               f"got {self.expansion}")
        _check(self.expansion_step > 0, "expansion_step", f"must be > 0, got {self.expansion_step}")
        _check(len(self.uiso) > 0 and all(u >= 0 for u in self.uiso), "uiso", f"need values >= 0, got {self.uiso}")
        _check(self.screen_rstep >= 0, "screen_rstep", f"must be >= 0, got {self.screen_rstep}")
        _check(self.max_pair_distance > 0, "max_pair_distance", f"must be > 0, got {self.max_pair_distance}")


@dataclass(frozen=True)
class SolveConfig:
    """Options of `pdfusion solve` (`inference.solve.solve`, `POST /v1/solve`).

    ``qmin`` / ``qmax`` None: from the file header, else 1 and 25 1/Å. ``refine_qdamp`` frees Qdamp in the
    refinement (default fixed at ``qdamp``, the instrument's value)."""

    top: int = 5
    per_type: int = 1
    radii: tuple[float, ...] = (5.0, 6.5, 8.0, 10.0, 12.0, 14.0, 16.0, 18.0, 20.0)
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
    rescore: int = 16  # the best this many get the second screening stage (delta2 x Uiso grid)
    refine_margin: float = 0.25  # full refinement for screen Rw <= best * (1 + margin) (or best + 0.05)
    extend_sizes: bool = True  # grow a leading type's sizes while its best is the largest screened
    max_radius: float = 30.0  # Å, limit of that growth
    max_atoms_extended: int = 12000
    use_ray: bool | None = None
    num_cpus: int = 2

    def __post_init__(self) -> None:
        _check(self.top >= 1, "top", f"must be >= 1, got {self.top}")
        _check(self.per_type >= 1, "per_type", f"must be >= 1, got {self.per_type}")
        _check(len(self.radii) > 0 and all(r > 0 for r in self.radii), "radii",
               f"need positive radii, got {self.radii}")
        _check(self.max_atoms >= 2, "max_atoms", f"must be >= 2, got {self.max_atoms}")
        _check(self.qbroad >= 0, "qbroad", f"must be >= 0, got {self.qbroad}")
        _check(self.rescore >= 0, "rescore", f"must be >= 0, got {self.rescore}")
        _check(self.refine_margin >= 0, "refine_margin", f"must be >= 0, got {self.refine_margin}")
        _check(self.num_cpus >= 1, "num_cpus", f"must be >= 1, got {self.num_cpus}")


# --------------------------------------------------------------------------------------------------
# Off-library structural variants (structures.variants, issue 20)
# --------------------------------------------------------------------------------------------------
VARIANT_SHAPES = ("sphere", "ellipsoid", "faceted")


@dataclass(frozen=True)
class VariantConfig:
    """Exactly how one off-library particle is made (`structures.variants.make_variant`): a pure function of
    these fields, stored as ``meta['variant_params']`` so a dataset row rebuilds from its own metadata.

    Lengths in Å. ``radius``: sphere radius; ellipsoid semi-axes are ``radius * axis_ratios`` (product 1, so
    the volume is the sphere's); faceted: the {100} planes at ``facet_100 * radius`` and the {111} planes at
    ``facet_111 * radius`` from the centre (None: that family absent), Miller planes of the cell's own
    reciprocal lattice. ``orientation``: unit quaternion (w, x, y, z) turning the ellipsoid's axes in the
    crystal frame. ``center``: fractional cell coordinates of the cut's centre (None: a metal atom, the seed
    convention). ``seed`` drives the vacancies and the random displacements."""

    structure_type: str = "rocksalt"
    metal: str = "Ti"
    radius: float = 6.0
    shape: Literal["sphere", "ellipsoid", "faceted"] = "sphere"
    axis_ratios: tuple[float, float, float] = (1.0, 1.0, 1.0)
    orientation: tuple[float, float, float, float] = (1.0, 0.0, 0.0, 0.0)
    facet_100: float | None = None
    facet_111: float | None = None
    center: tuple[float, float, float] | None = None
    vacancy_fraction: float = 0.0  # of the under-coordinated (surface) atoms, removed
    mo_bound: float = 0.15  # |M:O / M:O(formula) - 1| a vacancy may not push the particle beyond
    strain: float = 0.0  # radial strain of the shell against the core (core-shell lattice mismatch)
    core_fraction: float = 0.6  # core radius / outer radius
    relax_amplitude: float = 0.0  # outward (+) / inward (-) shift of surface atoms (surface relaxation)
    surface_sigma: float = 0.0  # random displacement at the surface, per coordinate (surface disorder)
    decay_length: float = 2.0  # both surface terms decay as exp(-depth / decay_length) into the particle
    thermal_sigma: float = 0.0  # random displacement of every atom, per coordinate (thermal snapshot)
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("axis_ratios", "orientation", "center"):
            v = getattr(self, name)
            if isinstance(v, list):
                object.__setattr__(self, name, tuple(float(x) for x in v))
        _check(self.shape in VARIANT_SHAPES, "shape", f"must be one of {VARIANT_SHAPES}, got {self.shape!r}")
        _check(math.isfinite(self.radius) and self.radius > 0, "radius",
               f"must be a positive length in Å, got {self.radius}")
        _check(len(self.axis_ratios) == 3 and all(math.isfinite(a) and a > 0 for a in self.axis_ratios), "axis_ratios",
               f"need three positive ratios, got {self.axis_ratios}")
        _check(len(self.orientation) == 4 and math.isfinite(sum(self.orientation))
               and abs(math.sqrt(sum(x * x for x in self.orientation)) - 1) < 1e-6, "orientation",
               f"need a unit quaternion (w, x, y, z), got {self.orientation}")
        for name in ("facet_100", "facet_111"):
            v = getattr(self, name)
            _check(v is None or (math.isfinite(v) and v > 0), name, f"must be None or > 0, got {v}")
        _check(self.shape != "faceted" or self.facet_100 is not None or self.facet_111 is not None, "facet_100",
               "a faceted cut needs facet_100 and/or facet_111")
        _check(self.center is None or (len(self.center) == 3 and all(math.isfinite(c) for c in self.center)), "center",
               f"must be None or fractional (x, y, z), got {self.center}")
        _check(0 <= self.vacancy_fraction <= 1, "vacancy_fraction", f"must be in [0, 1], got {self.vacancy_fraction}")
        _check(0 <= self.mo_bound < 1, "mo_bound", f"must be in [0, 1), got {self.mo_bound}")
        _check(-0.2 < self.strain < 0.2, "strain", f"must be in (-0.2, 0.2), got {self.strain}")
        _check(0 < self.core_fraction < 1, "core_fraction", f"must be in (0, 1), got {self.core_fraction}")
        for name in ("surface_sigma", "thermal_sigma"):
            _check(0 <= getattr(self, name) < 0.5, name, f"must be in [0, 0.5) Å, got {getattr(self, name)}")
        _check(abs(self.relax_amplitude) < 0.5, "relax_amplitude",
               f"must be in (-0.5, 0.5) Å, got {self.relax_amplitude}")
        _check(self.decay_length > 0, "decay_length", f"must be > 0 Å, got {self.decay_length}")


@dataclass(frozen=True)
class VariantMixConfig:
    """How often the generator applies each off-library modification (independent fractions in [0, 1];
    ``ellipsoid + faceted <= 1``, the rest spheres) and the ranges their parameters are drawn from
    (`structures.variants.sample_variant`). All zero: every structure a perfect atom-centred sphere."""

    ellipsoid: float = 0.0
    faceted: float = 0.0
    off_centre: float = 0.0
    vacancies: float = 0.0
    strain: float = 0.0
    relaxation: float = 0.0  # radially decaying: surface relaxation + surface disorder
    thermal: float = 0.0
    axis_ratio_max: float = 1.8  # each semi-axis ratio log-uniform in [1/sqrt(m), sqrt(m)] before normalising
    # faceted: {111} distance / {100} distance (< 1/sqrt(3): octahedron; > sqrt(3): cube), both then scaled so
    # the polyhedron has the sphere's volume (so `radius` means the same size for every shape)
    facet_111_over_100: tuple[float, float] = (0.65, 1.6)
    vacancy_range: tuple[float, float] = (0.05, 0.3)
    mo_bound: float = 0.15
    strain_range: tuple[float, float] = (-0.04, 0.04)
    core_fraction_range: tuple[float, float] = (0.4, 0.8)
    relax_range: tuple[float, float] = (-0.15, 0.15)
    surface_sigma_range: tuple[float, float] = (0.02, 0.1)
    decay_range: tuple[float, float] = (1.0, 3.0)
    thermal_range: tuple[float, float] = (0.02, 0.08)

    def __post_init__(self) -> None:
        for name in ("ellipsoid", "faceted", "off_centre", "vacancies", "strain", "relaxation", "thermal"):
            v = getattr(self, name)
            _check(0 <= v <= 1, name, f"must be a fraction in [0, 1], got {v}")
        _check(self.ellipsoid + self.faceted <= 1 + 1e-9, "faceted", "ellipsoid + faceted must be <= 1")
        _check(self.axis_ratio_max >= 1, "axis_ratio_max", f"must be >= 1, got {self.axis_ratio_max}")
        for name in ("facet_111_over_100", "vacancy_range", "strain_range", "core_fraction_range",
                     "relax_range", "surface_sigma_range", "decay_range", "thermal_range"):
            lo, hi = getattr(self, name)
            _check(lo <= hi, name, f"need (low, high) with low <= high, got {(lo, hi)}")

    @property
    def any(self) -> bool:
        return any(getattr(self, k) > 0 for k in ("ellipsoid", "faceted", "off_centre", "vacancies", "strain",
                                                  "relaxation", "thermal"))


# the mix `jobs/generate_dataset.py --off-library default` and the beyond-library benchmark use
DEFAULT_VARIANT_MIX = VariantMixConfig(ellipsoid=0.4, faceted=0.4, off_centre=0.5, vacancies=0.5, strain=0.3,
                                       relaxation=0.5, thermal=0.5)


@dataclass(frozen=True)
class VariantGenerateConfig(GenerateConfig):
    """A :class:`GenerateConfig` grid whose structures are off-library variants drawn from ``off_library``
    (one seeded :class:`VariantConfig` per structure); its own config hash, so it never resumes a plain grid."""

    off_library: VariantMixConfig = field(default_factory=lambda: DEFAULT_VARIANT_MIX)


# metals absent from every seed-oxides file (graphs_h5 and graphs_fixed_num_135): the beyond-library targets'
# metals, to be kept out of any training data a benchmarked model sees
BEYOND_LIBRARY_METALS = ("Co", "Ga", "Zr", "Sn", "Ba", "La", "Pt")


@dataclass(frozen=True)
class BeyondLibraryConfig:
    """`evaluation.beyond_library`: off-library targets regenerated from ``seed`` (target i: metal
    ``metals[i % len]``, prototype ``types[i % len]`` (empty: all 13), radius uniform in ``radius_range``,
    a variant drawn from ``mix`` until it is off-library and holds <= ``max_atoms``), scored against a library
    of perfect spherical cuts of every prototype at the target's metal over ``library_radii``. Both methods
    propose ``k`` candidates; each is then fitted by an isotropic expansion within ``expansion`` (grid
    ``expansion_grid`` = coarse, fine points) and the ``refine_top`` best are refined ``refine_steps`` steps; with
    ``prune_atoms`` each refined one then loses the atoms whose removal lowers R_wp
    (``inference.topology.prune_by_rwp``) and is refined ``refine_steps`` again (kept if that fits better); with
    ``grow_atoms`` it first gains atoms at vacant sites of its own lattice (``grow_by_rwp``) the same way."""

    n_targets: int = 48
    seed: int = 0
    metals: tuple[str, ...] = BEYOND_LIBRARY_METALS
    types: tuple[str, ...] = ()
    radius_range: tuple[float, float] = (5.0, 12.0)
    max_atoms: int = 1500
    mix: VariantMixConfig = field(default_factory=lambda: DEFAULT_VARIANT_MIX)
    library_radii: tuple[float, ...] = tuple(4.0 + 0.5 * i for i in range(21))
    k: int = 16
    expansion: tuple[float, float] = (0.85, 1.15)
    expansion_grid: tuple[int, int] = (13, 11)
    refine_top: int = 2
    refine_steps: int = 50
    prune_atoms: bool = False
    grow_atoms: bool = False

    def __post_init__(self) -> None:
        _check(self.n_targets >= 1, "n_targets", f"must be >= 1, got {self.n_targets}")
        _check(len(self.metals) > 0, "metals", "give at least one metal")
        lo, hi = self.radius_range
        _check(0 < lo <= hi, "radius_range", f"need 0 < low <= high Å, got {self.radius_range}")
        _check(self.max_atoms >= 10, "max_atoms", f"must be >= 10, got {self.max_atoms}")
        _check(len(self.library_radii) > 0 and all(r > 0 for r in self.library_radii), "library_radii",
               f"need positive radii, got {self.library_radii}")
        _check(self.k >= 1, "k", f"must be >= 1, got {self.k}")
        elo, ehi = self.expansion
        _check(0 < elo < 1 < ehi, "expansion", f"need 0 < low < 1 < high, got {self.expansion}")
        _check(all(n >= 3 for n in self.expansion_grid) and len(self.expansion_grid) == 2, "expansion_grid",
               f"need (coarse, fine) points >= 3, got {self.expansion_grid}")
        _check(self.refine_top >= 0 and self.refine_steps >= 0, "refine_steps",
               "refine_top and refine_steps must be >= 0")
