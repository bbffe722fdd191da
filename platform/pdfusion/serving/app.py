"""Application builder used by `serve run` / `serve deploy` (via the thin `serve/app.py`).

Arguments come from the `args:` mapping of `serve/config.yaml` or `key=value` pairs on the `serve run`
command line (strings, parsed as YAML scalars). `config` may name a YAML/JSON file holding a
`ServeConfig`; the remaining keys override it (`limits` merges key by key).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import yaml

from pdfusion.config import ConfigError, ServeConfig, ServeLimits, from_dict, to_dict


def _coerce(value: Any, kind: type | str) -> Any:
    """CLI arguments arrive as strings: parse non-string fields as YAML scalars ('2' -> 2)."""
    if isinstance(value, str) and kind not in (str, "str"):
        return yaml.safe_load(value)
    return value


def serve_config_from_args(args: dict[str, Any]) -> ServeConfig:
    args = dict(args or {})
    base: dict[str, Any] = {}
    if "config" in args:
        path = Path(str(args.pop("config")))
        if not path.is_file():
            raise ConfigError(f"config: file {path} does not exist")
        text = path.read_text()
        base = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text) or {}
        if not isinstance(base, dict):
            raise ConfigError(f"config: {path} must hold a mapping of ServeConfig fields")
    kinds = {f.name: f.type for f in dataclasses.fields(ServeConfig)}
    limit_kinds = {f.name: f.type for f in dataclasses.fields(ServeLimits)}
    limits = dict(base.pop("limits", None) or {})
    extra_limits = args.pop("limits", None) or {}
    if isinstance(extra_limits, str):
        extra_limits = yaml.safe_load(extra_limits)
    for key, value in dict(extra_limits).items():
        limits[key] = _coerce(value, limit_kinds.get(key, str))
    for key, value in args.items():
        if key.startswith("limits."):
            sub = key.split(".", 1)[1]
            limits[sub] = _coerce(value, limit_kinds.get(sub, str))
        else:
            base[key] = _coerce(value, kinds.get(key, str))
    if limits:
        base["limits"] = {**to_dict(ServeLimits()), **limits}
    return from_dict(ServeConfig, base)


def app_builder(args: dict[str, Any]):
    """Serve application builder: `serve run serve.app:app_builder model=ckpt.pt max_replicas=2`."""
    from pdfusion.serving.deployments import build_app

    cfg = serve_config_from_args(args)
    return build_app(cfg)  # checks the model file first (missing / unreadable: ConfigError naming it)
