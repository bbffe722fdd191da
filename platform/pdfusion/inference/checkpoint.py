"""Reading and writing trainer checkpoints: `torch.load(weights_only=True)` only, atomic writes only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from pdfusion.io_utils import atomic_torch_save

__all__ = ["load_checkpoint", "save_checkpoint"]


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """`torch.load(weights_only=True)` with a clear error for a missing or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - re-raised with the file named
        raise ValueError(f"checkpoint {path}: cannot be read as a pdfusion checkpoint ({exc})") from exc
    if not isinstance(state, dict) or "config" not in state or "ema" not in state:
        raise ValueError(f"checkpoint {path}: not a pdfusion trainer checkpoint (missing 'config'/'ema')")
    return state


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write a checkpoint dict (at least 'config' and 'ema') atomically, readable by `load_checkpoint`."""
    if "config" not in state or "ema" not in state:
        raise ValueError("checkpoint state: needs 'config' and 'ema'")
    return atomic_torch_save(state, path)
