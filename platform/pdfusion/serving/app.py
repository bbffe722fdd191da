"""Application builder used by `serve run` / `serve deploy` (via the thin `serve/app.py`).

Arguments come from the `args:` mapping of `serve/config.yaml` or `key=value` pairs on the `serve run`
command line (strings, parsed as YAML scalars). `config` may name a YAML/JSON file holding a
`ServeConfig`; the remaining keys override it (`limits` merges key by key).
"""

from __future__ import annotations

from typing import Any

import yaml

from pdfusion.config import ServeConfig, load
from pdfusion.serving.deployments import build_app


def serve_config_from_args(args: dict[str, Any]) -> ServeConfig:
    """`serve/config.yaml` args or `serve run` key=value pairs -> ServeConfig (`config.load`): `config` names
    a JSON/YAML file of fields, `limits` a mapping (or its YAML text), `limits.<field>` one limit."""
    args = dict(args or {})
    file = args.pop("config", None)
    limits = args.pop("limits", None) or {}
    if isinstance(limits, str):
        limits = yaml.safe_load(limits)
    values = {**{f"limits.{k}": v for k, v in dict(limits).items()}, **args}
    return load(ServeConfig, file=file, values=values, what="config")


def app_builder(args: dict[str, Any]):
    """Serve application builder: `serve run serve.app:app_builder model=ckpt.pt max_replicas=2`."""
    cfg = serve_config_from_args(args)
    return build_app(cfg)  # checks the model file first (missing / unreadable: ConfigError naming it)
