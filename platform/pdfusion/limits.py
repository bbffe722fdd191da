"""Size limits checked before anything is allocated, so a typo (``--rstep 1e-7``, ``--rmax 1e6``, a 1 km
radius) is refused in one line instead of asking the machine for petabytes.

Every check raises :class:`pdfusion.config.ConfigError` (the one user-error type; the CLI prints it as one
line and exits 2), naming the value, the limit and the flag that raises it. Large but sensible requests
are not refused: a 12 nm particle (~80,000 atoms) is cut and simulated in bounded memory
(``structures.particles.cut_sphere``, ``pdf.debye``'s chunked pair sums), so the limits are about what a
machine can hold, not about what the code can do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pdfusion.config import ConfigError

GIB = 1 << 30
MAX_COORDINATE = 1e5  # Å (10 µm): a coordinate beyond this is not an atom of a nanoparticle
MIN_DISTANCE = 0.5  # Å: two atoms closer than this are the same atom written twice (H2 is 0.74 Å)


@dataclass(frozen=True)
class Limits:
    """What one command may ask for; the CLI flags ``--max-atoms``, ``--max-points``, ``--max-memory``."""

    max_atoms: int = 200_000
    max_points: int = 200_000  # r points of a simulated G(r), Q points of its Debye sum, rows of a PDF file
    max_memory_gb: float = 4.0

    def __post_init__(self) -> None:
        if not (isinstance(self.max_atoms, int) and self.max_atoms >= 2):
            raise ConfigError(f"--max-atoms: must be an integer >= 2, got {self.max_atoms!r}")
        if not (isinstance(self.max_points, int) and self.max_points >= 2):
            raise ConfigError(f"--max-points: must be an integer >= 2, got {self.max_points!r}")
        if not (math.isfinite(self.max_memory_gb) and self.max_memory_gb > 0):
            raise ConfigError(f"--max-memory: must be a positive number of GiB, got {self.max_memory_gb!r}")


def add_limit_flags(parser, *, atoms: bool = True, points: bool = True, memory: bool = True) -> None:
    """The flags that raise the limits, with the defaults shown."""
    d = Limits()
    if atoms:
        parser.add_argument("--max-atoms", type=int, default=d.max_atoms, metavar="N",
                            help=f"refuse structures of more atoms (default {d.max_atoms:,})")
    if points:
        parser.add_argument("--max-points", type=int, default=d.max_points, metavar="N",
                            help=f"refuse more r or Q points, or PDF file rows (default {d.max_points:,})")
    if memory:
        parser.add_argument("--max-memory", type=float, default=d.max_memory_gb, metavar="GIB",
                            help=f"refuse a simulation estimated to need more memory (default {d.max_memory_gb:g} GiB)")


def limits_from_args(args) -> Limits:
    d = Limits()
    return Limits(max_atoms=getattr(args, "max_atoms", d.max_atoms),
                  max_points=getattr(args, "max_points", d.max_points),
                  max_memory_gb=getattr(args, "max_memory", d.max_memory_gb))


def check_finite(**values: float | None) -> None:
    """Each named CLI value (``rmax=..., rstep=...``; underscores read as dashes) is a finite number."""
    for name, v in values.items():
        if v is not None and not math.isfinite(v):
            raise ConfigError(f"--{name.replace('_', '-')}: must be a finite number, got {v}")


def check_atoms(n: int, limits: Limits, what: str) -> None:
    if n > limits.max_atoms:
        raise ConfigError(f"{what}: {n:,} atoms exceed the limit of {limits.max_atoms:,} "
                          f"(--max-atoms {n} raises it)")


def particle_atoms_estimate(lattice: np.ndarray, n_cell_atoms: int, radius: float, margin: float = 0.0) -> int:
    """Atoms a sphere of ``radius`` (+ ``margin``) Å cut from a crystal holds: volume x atomic density."""
    vol = abs(float(np.linalg.det(np.asarray(lattice, dtype=np.float64).reshape(3, 3))))
    if not vol > 0:
        raise ConfigError(f"lattice: the cell has zero volume ({vol:g} Å³)")
    return int(math.ceil(4.0 / 3.0 * math.pi * (radius + margin) ** 3 * n_cell_atoms / vol))


def check_coordinates(positions: np.ndarray, where: str) -> None:
    """No coordinate beyond ``MAX_COORDINATE`` Å (1e300 passes a finiteness test but no pair sum)."""
    pos = np.asarray(positions, dtype=np.float64)
    if pos.size and not np.all(np.abs(pos) <= MAX_COORDINATE):
        k = int(np.flatnonzero(~(np.abs(pos) <= MAX_COORDINATE).all(axis=1))[0])
        raise ConfigError(f"{where}: atom {k + 1} has coordinate(s) {pos[k].tolist()}; coordinates must be within "
                          f"±{MAX_COORDINATE:g} Å (is the file in Å? is a column shifted?)")


def check_min_distance(positions: np.ndarray, where: str, min_distance: float, flag: str = "--min-distance") -> None:
    """No two atoms closer than ``min_distance`` Å: a duplicated atom doubles a pair and spikes G(r) at r = 0."""
    from scipy.spatial import cKDTree

    pos = np.asarray(positions, dtype=np.float64)
    if len(pos) < 2 or min_distance <= 0:
        return
    d, j = cKDTree(pos).query(pos, k=2)
    i = int(np.argmin(d[:, 1]))
    if d[i, 1] < min_distance:
        a, b = sorted((i, int(j[i, 1])))
        raise ConfigError(f"{where}: atoms {a + 1} and {b + 1} are {d[i, 1]:.3g} Å apart, closer than {min_distance:g} "
                          f"Å (a duplicated atom?); fix the structure, or lower {flag} (0 accepts any distance)")


def check_output_path(path, flag: str, suffixes: tuple[str, ...] | None = None, *, folder: bool = False) -> None:
    """An output path a command can write, checked before any work: a known suffix, not a folder (or, with
    ``folder``, not a file), and its nearest existing parent a folder."""
    from pathlib import Path

    path = Path(path)
    if suffixes is not None and path.suffix.lower() not in suffixes:
        raise ConfigError(f"{flag}: cannot tell the output format of {path} from its suffix "
                          f"{path.suffix or '(none)'!r}; use one of {' '.join(suffixes)}")
    if folder and path.exists() and not path.is_dir():
        raise ConfigError(f"{flag}: {path} is a file; give a folder for the outputs")
    if not folder and path.is_dir():
        raise ConfigError(f"{flag}: {path} is a folder; give a file name such as "
                          f"{path / ('out' + (suffixes or ('',))[0])}")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"{flag}: cannot write {path}: {parent} is a file, not a folder")
