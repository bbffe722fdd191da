"""The one in-memory structure type that flows through pdfusion (numpy arrays, no periodicity)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

OXYGEN = 8


@dataclass
class Particle:
    """A finite cluster of atoms: atomic numbers (N,), Cartesian positions (N, 3) in Angstrom, metadata."""

    numbers: np.ndarray
    positions: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.numbers = np.asarray(self.numbers, dtype=np.int64).reshape(-1)
        self.positions = np.asarray(self.positions, dtype=np.float64)
        if self.positions.ndim != 2 or self.positions.shape[1] != 3:
            raise ValueError(f"positions: expected shape (N, 3), got {self.positions.shape}")
        if self.positions.shape[0] != self.numbers.shape[0]:
            raise ValueError(
                f"numbers/positions: {self.numbers.shape[0]} atomic numbers but {self.positions.shape[0]} positions"
            )
        if not np.all(np.isfinite(self.positions)):
            raise ValueError("positions: contain NaN or inf")
        if self.numbers.size and (self.numbers.min() < 1 or self.numbers.max() > 118):
            raise ValueError("numbers: atomic numbers must be in 1..118, got "
                             f"{self.numbers.min()}..{self.numbers.max()}")

    def __len__(self) -> int:
        return int(self.numbers.shape[0])

    @property
    def metal(self) -> int:
        """Atomic number of the (single) metal; mono-metal oxides have exactly one non-oxygen element."""
        others = np.unique(self.numbers[self.numbers != OXYGEN])
        if others.size != 1:
            raise ValueError(f"metal: expected exactly one non-oxygen element, found {others.tolist()}")
        return int(others[0])

    @property
    def formula(self) -> str:
        from pymatgen.core import Composition, Element

        comp = Composition({Element.from_Z(int(z)): int(c)
                            for z, c in zip(*np.unique(self.numbers, return_counts=True), strict=True)})
        return comp.reduced_formula

    def centered(self) -> Particle:
        return Particle(self.numbers.copy(), self.positions - self.positions.mean(axis=0), dict(self.meta))

    def min_distance(self) -> float:
        """Smallest interatomic distance (inf for fewer than two atoms)."""
        if len(self) < 2:
            return float("inf")
        from scipy.spatial import cKDTree

        d, _ = cKDTree(self.positions).query(self.positions, k=2)
        return float(d[:, 1].min())
