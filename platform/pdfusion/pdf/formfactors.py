"""Atomic scattering factors: X-ray f0(Q) (Waasmaier–Kirfel) and neutron coherent lengths b.

Why these tables: diffpy.srreal's ``DebyePDFCalculator`` (the simulator behind the seed-oxides PDFs) looks up
X-ray form factors with the Waasmaier & Kirfel (1995) five-Gaussian fit, f0(s) = c + Σ a_i exp(-b_i s²),
s = sin(θ)/λ = Q / 4π, for neutral atoms. Using the same fit is what lets our curves match its output.

Sources of the JSON tables in ``pdf/data/`` (extracted once at development time, no runtime dependency):
- ``xray_waasmaier_kirfel.json``: D. Waasmaier & A. Kirfel, Acta Cryst. A51 (1995) 416-431, neutral atoms
  Z = 1..98, taken from the ``Waasmaier`` table of the ``xraydb`` 4.5.8 package (the same coefficients as
  libdiffpy's ``f0_WaasKirf.dat`` and debyecalculator's ``elements_info.yaml``). The fit gives f0(0) = Z
  within 0.04 electrons.
- ``neutron_scattering_lengths.json``: coherent scattering lengths b_c (fm, natural abundance) from the
  ``periodictable`` 2.1.0 package (Sears, Neutron News 3 (1992) 26-37, as in the NIST table).
"""

from __future__ import annotations

import json
import math
from functools import cache
from importlib import resources

import numpy as np
import torch

MAX_Z = 118


@cache
def _load(name: str) -> dict:
    with resources.files("pdfusion.pdf").joinpath("data", name).open("r") as fh:
        return json.load(fh)


@cache
def _xray_table() -> np.ndarray:
    """(MAX_Z + 1, 11) array [a1..a5, b1..b5, c] indexed by Z; NaN rows for elements without coefficients."""
    table = np.full((MAX_Z + 1, 11), np.nan)
    for z, entry in _load("xray_waasmaier_kirfel.json")["elements"].items():
        table[int(z)] = [*entry["a"], *entry["b"], entry["c"]]
    return table


@cache
def _neutron_table() -> np.ndarray:
    table = np.full(MAX_Z + 1, np.nan)
    for z, entry in _load("neutron_scattering_lengths.json")["elements"].items():
        table[int(z)] = entry["b_c"]
    return table


def _check_numbers(numbers: torch.Tensor, table: np.ndarray, what: str) -> None:
    if numbers.numel() == 0:
        return
    zmin, zmax = int(numbers.min()), int(numbers.max())
    if zmin < 1 or zmax > MAX_Z:
        raise ValueError(f"numbers: atomic numbers must be in 1..{MAX_Z}, got {zmin}..{zmax}")
    missing = [int(z) for z in torch.unique(numbers).tolist() if not np.all(np.isfinite(table[int(z)]))]
    if missing:
        raise ValueError(f"numbers: no {what} for atomic number(s) {missing}; the table covers "
                         f"{int(np.isfinite(table.reshape(len(table), -1)).all(1).sum())} elements")


def xray_f0(numbers: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """X-ray form factors f0(Q) in electrons: numbers (...,) int, q (nq,) in 1/Å → (..., nq), dtype/device of q."""
    table = _xray_table()
    _check_numbers(numbers, table, "Waasmaier-Kirfel X-ray coefficients")
    coef = torch.as_tensor(table, dtype=q.dtype, device=q.device)[numbers.long()]  # (..., 11)
    s2 = (q / (4 * math.pi)) ** 2
    a, b, c = coef[..., 0:5, None], coef[..., 5:10, None], coef[..., 10:11]
    return (a * torch.exp(-b * s2)).sum(-2) + c


def neutron_b(numbers: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Neutron coherent scattering lengths (fm), constant in Q: numbers (...,) → (..., nq)."""
    table = _neutron_table()
    _check_numbers(numbers, table, "neutron scattering length")
    b = torch.as_tensor(table, dtype=q.dtype, device=q.device)[numbers.long()]
    return b[..., None].expand(*b.shape, q.shape[-1])


def scattering_factors(numbers: torch.Tensor, q: torch.Tensor, radiation: str) -> torch.Tensor:
    """Form factor of each atomic number at each Q for ``radiation`` 'xray' or 'neutron' → (..., nq)."""
    if radiation == "xray":
        return xray_f0(numbers, q)
    if radiation == "neutron":
        return neutron_b(numbers, q)
    raise ValueError(f"radiation: must be 'xray' or 'neutron', got {radiation!r}")
