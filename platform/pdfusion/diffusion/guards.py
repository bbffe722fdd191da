"""Non-finite guards. The 2023 EGNN diffusion silently replaced NaN by 0 and produced nothing usable;
here a non-finite value stops the work at once, with the tensor and the step named, so it can be fixed."""

from __future__ import annotations

import torch


class NonFiniteError(ValueError):
    """A tensor holds NaN or inf. The message names the tensor and, when known, the step."""


def check_finite(name: str, tensor: torch.Tensor, step: int | str | None = None) -> torch.Tensor:
    """Return `tensor` unchanged if every value is finite, else raise NonFiniteError naming it.

    Never replaces values: a NaN is a bug or a divergence, and hiding it hides the cause."""
    if tensor is None or not torch.is_tensor(tensor) or not tensor.is_floating_point():
        return tensor
    finite = torch.isfinite(tensor)
    if bool(finite.all()):
        return tensor
    n_nan = int(torch.isnan(tensor).sum())
    n_inf = int((~finite).sum()) - n_nan
    where = f" at step {step}" if step is not None else ""
    raise NonFiniteError(
        f"{name}: {n_nan} NaN and {n_inf} inf value(s) of {tensor.numel()}{where} (shape {tuple(tensor.shape)}); "
        "check the inputs, lower the learning rate or the guidance scale"
    )
