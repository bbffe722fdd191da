"""The seed-oxides node features (Z, atomic radius, density, electron affinity) from pymatgen's data.

Why: generated structures must carry the same four per-atom columns as the seed-oxides files so that
both feed the same dataset code. The seed files took them from the ``mendeleev`` package; here they come
from pymatgen. Agreement with the seed files' columns over their 49 elements (measured by
``tests/structures/test_features.py``): atomic radius identical (both are Slater's table); density
within 2 % for 44 and within 5.2 % for all (worst B 5.1 %, Tc 4.5 %, K 3.8 %); electron affinity within
0.01 eV for 37 of 49. The rest differ in convention: the seed stores 0 for elements with an unbound
anion (Mg, Mn, Zn, Cd, Hg) where pymatgen has a negative value, and Be, In, Hf, Re, Os, Tl, Po differ by
0.02-1.9 eV.
pymatgen has no solid density for gases and liquids; the seed's values are used for those (O, Hg, ...).
"""

from __future__ import annotations

import functools
import warnings

import numpy as np

FEATURE_NAMES = ("atomic_number", "atomic_radius", "density", "electron_affinity")

# g/cm^3 where pymatgen has no "density of solid" (gas at STP or liquid at room temperature), as in the
# seed-oxides files (mendeleev's values).
_DENSITY_FALLBACK = {1: 8.99e-5, 2: 1.785e-4, 7: 1.2506e-3, 8: 1.308e-3, 9: 1.696e-3, 10: 9.0e-4,
                     17: 3.214e-3, 18: 1.784e-3, 35: 3.1028, 36: 3.749e-3, 54: 5.894e-3, 80: 13.5336,
                     86: 9.73e-3}  # fmt: skip


@functools.lru_cache(maxsize=128)
def element_features(z: int) -> tuple[float, float, float, float]:
    """(Z, atomic radius in pm, density in g/cm³, electron affinity in eV) of element ``z``."""
    from pymatgen.core import Element

    try:
        el = Element.from_Z(int(z))
    except ValueError as exc:
        raise ValueError(f"numbers: {z} is not an atomic number (1..118)") from exc
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        radius = el.atomic_radius
        density = el.density_of_solid
        affinity = el.electron_affinity
    r = float(radius) * 100.0 if radius is not None else float("nan")
    d = float(density) / 1000.0 if density is not None else _DENSITY_FALLBACK.get(int(z), float("nan"))
    ea = float(affinity) if affinity is not None else float("nan")
    values = (float(z), r, d, ea)
    if not all(np.isfinite(values)):
        missing = [n for n, v in zip(FEATURE_NAMES, values, strict=True) if not np.isfinite(v)]
        raise ValueError(f"numbers: pymatgen has no {missing} for {el.symbol} (Z={z}); its node features are undefined")
    return values


def node_features(numbers) -> np.ndarray:
    """(N, 4) float64: Z, atomic radius (pm), density of the element's solid (g/cm³), electron affinity (eV)."""
    z = np.asarray(numbers, dtype=np.int64).reshape(-1)
    uniq, inverse = np.unique(z, return_inverse=True)
    table = np.array([element_features(int(u)) for u in uniq], dtype=np.float64).reshape(-1, 4)
    return table[inverse]


def node_attributes(numbers, positions) -> np.ndarray:
    """(N, 7) float64 seed-oxides ``node_attributes``: the four features then x, y, z (Å)."""
    pos = np.asarray(positions, dtype=np.float64)
    feats = node_features(numbers)
    if pos.shape != (feats.shape[0], 3):
        raise ValueError(f"positions: expected shape ({feats.shape[0]}, 3), got {pos.shape}")
    return np.concatenate([feats, pos], axis=1)
