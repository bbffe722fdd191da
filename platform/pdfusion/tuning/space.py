"""Search spaces for the Tune sweeps, read from a small YAML/JSON file and validated before any trial starts.

A space maps a key to one distribution: `{choice: [...]}`, `{uniform: [lo, hi]}`, `{loguniform: [lo, hi]}`,
`{randint: [lo, hi]}` or `{grid: [...]}` (exhaustive; Tune's grid_search). Bad spaces raise `SearchSpaceError`
naming the key, so a sweep never launches trials that would all fail.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pdfusion.config import SCHEDULES, ConfigError, read_mapping

DISTRIBUTIONS = ("choice", "uniform", "loguniform", "randint", "grid")

# key -> (kind, validator of one value). kind "int" / "float" / "str" / "bool"
SCHEDULE_KEYS: dict[str, str] = {
    "schedule": "str", "timesteps": "int", "lr": "float", "p_uncond": "float",
    "hidden": "int", "layers": "int", "batch_size": "int", "ema_decay": "float",
}
GUIDANCE_KEYS: dict[str, str] = {"guidance": "float", "steps": "int"}

DEFAULT_SCHEDULE_SPACE: dict[str, Any] = {
    "schedule": {"choice": list(SCHEDULES)},
    "lr": {"loguniform": [1e-4, 2e-3]},
    "p_uncond": {"choice": [0.1, 0.2]},
}
DEFAULT_GUIDANCE_SPACE: dict[str, Any] = {
    "guidance": {"grid": [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0]},
    "steps": {"choice": [50]},
}


class SearchSpaceError(ConfigError):
    """A search-space entry is invalid; the message names the key."""


def load_space(path: str | Path) -> dict[str, Any]:
    """A search space from a JSON/YAML file (`config.read_mapping`): key -> {distribution: [args]}."""
    try:
        data = read_mapping(path, "search space")
    except ConfigError as exc:
        raise SearchSpaceError(str(exc)) from exc
    if not data:
        raise SearchSpaceError(f"search space file {path}: expected a non-empty mapping of key -> distribution")
    return data


def _check_value(key: str, kind: str, value: Any) -> None:
    ok = {
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value),
        "str": isinstance(value, str),
        "bool": isinstance(value, bool),
    }[kind]
    if not ok:
        raise SearchSpaceError(f"{key}: value {value!r} is not a valid {kind}")
    if key == "schedule" and value not in SCHEDULES:
        raise SearchSpaceError(f"{key}: unknown schedule {value!r}; choose from {list(SCHEDULES)}")
    if key in ("guidance", "lr", "steps", "timesteps", "hidden", "layers", "batch_size") and value < 0:
        raise SearchSpaceError(f"{key}: must be >= 0, got {value!r}")
    if key in ("lr", "steps", "timesteps", "hidden", "layers", "batch_size") and value == 0:
        raise SearchSpaceError(f"{key}: must be > 0, got {value!r}")
    if key == "p_uncond" and not 0.0 <= value <= 1.0:
        raise SearchSpaceError(f"{key}: must be in [0, 1], got {value!r}")
    if key == "timesteps" and value < 2:
        raise SearchSpaceError(f"{key}: must be >= 2, got {value!r}")
    if key == "ema_decay" and not 0.0 <= value < 1.0:
        raise SearchSpaceError(f"{key}: must be in [0, 1), got {value!r}")


def validate_space(space: Mapping[str, Any], allowed: Mapping[str, str]) -> dict[str, Any]:
    """Check every key and distribution; returns a normalised copy."""
    if not space:
        raise SearchSpaceError("search space is empty")
    out: dict[str, Any] = {}
    for key, spec in space.items():
        if key not in allowed:
            raise SearchSpaceError(f"{key}: unknown key; valid keys are {sorted(allowed)}")
        kind = allowed[key]
        if not isinstance(spec, Mapping) or len(spec) != 1:
            raise SearchSpaceError(f"{key}: expected exactly one of {list(DISTRIBUTIONS)}, e.g. {{choice: [...]}}, got "
                                   f"{spec!r}")
        (dist, args), = spec.items()
        if dist not in DISTRIBUTIONS:
            raise SearchSpaceError(f"{key}: unknown distribution {dist!r}; use one of {list(DISTRIBUTIONS)}")
        if not isinstance(args, (list, tuple)) or len(args) == 0:
            raise SearchSpaceError(f"{key}.{dist}: needs a non-empty list")
        if dist in ("choice", "grid"):
            for v in args:
                _check_value(key, kind, v)
        else:
            if len(args) != 2:
                raise SearchSpaceError(f"{key}.{dist}: needs [low, high], got {list(args)}")
            lo, hi = args
            for v in (lo, hi):
                _check_value(key, "int" if dist == "randint" else "float", v)
                _check_value(key, kind if kind != "int" or dist == "randint" else "float", v)
            if not lo < hi:
                raise SearchSpaceError(f"{key}.{dist}: needs low < high, got [{lo}, {hi}]")
            if dist == "loguniform" and lo <= 0:
                raise SearchSpaceError(f"{key}.loguniform: bounds must be > 0, got [{lo}, {hi}]")
            if kind == "str":
                raise SearchSpaceError(f"{key}: {dist} is not defined for a categorical key; use choice")
        out[key] = {dist: list(args)}
    return out


def to_tune(space: Mapping[str, Any]) -> dict[str, Any]:
    """Ray Tune param_space from a validated space."""
    from ray import tune

    makers = {
        "choice": lambda a: tune.choice(list(a)),
        "grid": lambda a: tune.grid_search(list(a)),
        "uniform": lambda a: tune.uniform(*a),
        "loguniform": lambda a: tune.loguniform(*a),
        "randint": lambda a: tune.randint(a[0], a[1] + 1),
    }
    return {k: makers[d](a) for k, spec in space.items() for d, a in spec.items()}
