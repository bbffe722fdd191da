"""Sharded HDF5 store of structures + PDFs, with a checksummed manifest and crash-safe writes.

Layout of a store root::

    root/
      manifest.json        {"schema_version", "r_grid_sha256", "n_r", "shards": [ShardInfo...]}
      r_grid.npy           the r grid, once per store (every shard records its sha256)
      shard-00000.h5       any name matching [A-Za-z0-9_.-]+.h5; generator jobs pick deterministic names

One shard (h5py, gzip or lzf + shuffle, chunked) holds S structures as ragged arrays concatenated
along atoms plus ``offsets`` (S+1,) int64: ``numbers`` (N,) int64, ``positions`` (N,3) float64,
``node_attributes`` (N,7) float64; ``pdf`` (S, n_r) in the dtype given (float32 or float64, stored
as is so the round trip is bit-exact); ``meta/`` columns ``id``, ``structure_type``, ``formula``,
``source``, ``metal`` (strings), ``radius`` (float64, NaN on disk = None), ``extra`` (a JSON
string per structure holding every other meta key, e.g. augmentation parameters); attributes
``schema_version``, ``n_structures``, ``r_grid_sha256``.

Why this shape: the reader needs O(1) random access to one structure (offsets) and the atom counts of
all structures without touching the big arrays (``sizes()`` reads only ``offsets``), and generation
jobs write shards from many Ray tasks at once, so a shard is the unit of atomicity and of retry.

Crash safety: a shard is written to ``<name>.tmp.<pid>.<rand>``, fsynced, ``os.replace``d into place
(``pdfusion.io_utils.atomic_path``, which also fsyncs the folder),
and only then added to the manifest (itself replaced atomically under a ``flock``). The manifest
is the single source of truth: a reader never sees a half shard. A writer killed mid-shard leaves a
stale temp file (removed by :func:`recover`) and a writer killed between the rename and the manifest
update leaves a complete orphan shard (adopted by :func:`recover`). Rerunning a :class:`StoreWriter`
over the same records skips ids already in the manifest, so a rerun completes the store without
duplicates.

API::

    write_shard(root, shard_name, records, r_grid, *, compression="gzip", update_manifest=True) -> ShardInfo
    StoreWriter(root, r_grid, *, shard_size=256, compression="gzip")   # .add(record) -> bool, .flush(), .close()
    Manifest.load(root) / Manifest.load_or_empty(root); m.verify(root) -> [bad shard names];
        m.has_shard(root, name, verify=True); Manifest.add_shard(root, info) (atomic, locked); m.ids()
    recover(root) -> (removed temp files, adopted shard names)
    StoreReader(root): len, [i] -> StoreRecord, iteration, sizes(), metadata(), ids(), r_grid, verify()

A Ray generator job: the driver calls ``recover(root)`` once, then each task does
``if not Manifest.load_or_empty(root).has_shard(root, name): write_shard(root, name, records, r_grid)``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pdfusion.config import ConfigError
from pdfusion.io_utils import atomic_path

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
R_GRID = "r_grid.npy"
LOCK = ".manifest.lock"
META_COLUMNS = ("id", "structure_type", "formula", "source", "metal")  # string columns; radius is float
COMPRESSIONS = ("gzip", "lzf", None)
ATOM_CHUNK = 1024  # atoms per chunk: one random read decompresses ~80 kB, not MBs
_SHARD_NAME = re.compile(r"^[A-Za-z0-9_.-]+\.h5$")
_AUTO_SHARD = re.compile(r"^shard-(\d{5,})\.h5$")


# --------------------------------------------------------------------------------------------------
# records
# --------------------------------------------------------------------------------------------------
@dataclass
class StoreRecord:
    """One structure: ``numbers`` (N,) int64, ``positions`` (N,3) float64 Å, ``node_attributes`` (N,7)
    float64, ``pdf`` (n_r,) float32/float64 on the store's r grid, ``meta`` (id/source, structure_type,
    formula, radius, metal, and any JSON-serialisable extras)."""

    numbers: np.ndarray
    positions: np.ndarray
    node_attributes: np.ndarray
    pdf: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        """Unique key within a store: ``meta['id']``, else ``meta['source']``."""
        key = self.meta.get("id", self.meta.get("source"))
        if not key:
            raise ValueError("StoreRecord.meta: needs an 'id' or 'source' string that is unique within the store")
        return str(key)

    @classmethod
    def from_seed(cls, seed) -> StoreRecord:
        """From a :class:`pdfusion.structures.io.SeedRecord` (arrays kept as read, bit for bit)."""
        return cls(seed.particle.numbers, seed.particle.positions, seed.node_attributes, seed.pdf, dict(seed.meta))


def _validate(rec: StoreRecord, n_r: int, where: str) -> StoreRecord:
    numbers = np.asarray(rec.numbers)
    pos = np.asarray(rec.positions)
    na = np.asarray(rec.node_attributes)
    pdf = np.asarray(rec.pdf)
    n = numbers.shape[0] if numbers.ndim == 1 else -1
    if n < 1:
        raise ValueError(f"{where}: numbers must be a non-empty 1-D array, got shape {numbers.shape}")
    if not np.issubdtype(numbers.dtype, np.integer):
        raise ValueError(f"{where}: numbers must be integers, got dtype {numbers.dtype}")
    if pos.shape != (n, 3):
        raise ValueError(f"{where}: positions must have shape ({n}, 3), got {pos.shape}")
    if na.shape != (n, 7):
        raise ValueError(
            f"{where}: node_attributes must have shape ({n}, 7) "
            f"(Z, atomic radius, density, electron affinity, x, y, z), got {na.shape}"
        )
    if pdf.shape != (n_r,):
        raise ValueError(f"{where}: pdf must have shape ({n_r},) to match the store's r grid, got {pdf.shape}")
    if pdf.dtype not in (np.float32, np.float64):
        raise ValueError(f"{where}: pdf dtype must be float32 or float64, got {pdf.dtype}")
    for name, arr in (("positions", pos), ("node_attributes", na), ("pdf", pdf)):
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{where}: {name} contains NaN or inf")
    _ = rec.id
    return StoreRecord(numbers.astype(np.int64, copy=False), pos.astype(np.float64, copy=False),
                       na.astype(np.float64, copy=False), pdf, rec.meta)


# --------------------------------------------------------------------------------------------------
# manifest
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ShardInfo:
    name: str
    sha256: str
    n_structures: int
    n_atoms: int
    ids: tuple[str, ...]
    pdf_dtype: str
    size_bytes: int

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ids"] = list(self.ids)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ShardInfo:
        return cls(d["name"], d["sha256"], int(d["n_structures"]), int(d["n_atoms"]), tuple(d["ids"]),
                   d["pdf_dtype"], int(d["size_bytes"]))


def sha256_file(path: str | Path, block: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            h.update(chunk)
    return h.hexdigest()


def r_grid_sha256(r_grid: np.ndarray) -> str:
    r = np.ascontiguousarray(r_grid)
    return hashlib.sha256(r.dtype.str.encode() + r.tobytes()).hexdigest()


def _atomic_store_path(path: Path):
    """`io_utils.atomic_path` (fsync of file and folder) with the store's temp name ``<name>.tmp.<pid>.<random>``,
    which :func:`recover` removes (``*.tmp.*``) and which never ends in ``.h5`` (it cannot pass for an orphan shard)."""
    return atomic_path(path, prefix=f"{path.name}.tmp.{os.getpid()}.", suffix="")


def _atomic_write(path: Path, data: bytes) -> None:
    with _atomic_store_path(path) as tmp:
        tmp.write_bytes(data)


class StoreWriteError(ConfigError):
    """A store could not be written (disk full, read-only or missing folder): a user-fixable error, raised
    after the half-written temp file is removed, so the store still holds exactly the shards its manifest
    lists."""


@contextlib.contextmanager
def _disk_errors(root: Path, what: str):
    try:
        yield
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise StoreWriteError(
            f"{root}: cannot write {what}: {reason}; the store keeps the shards its manifest lists -- free space or "
            "choose a writable folder, then rerun to complete it") from exc


@contextlib.contextmanager
def _locked(root: Path):
    """Exclusive lock on the store's manifest (read-modify-write by concurrent tasks on one host)."""
    with open(root / LOCK, "a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


@dataclass
class Manifest:
    """The list of complete shards of a store, with checksums; the store's single source of truth."""

    shards: list[ShardInfo] = field(default_factory=list)
    r_grid_sha256: str | None = None
    n_r: int | None = None
    schema_version: int = SCHEMA_VERSION

    # -- io ----------------------------------------------------------------------------------------
    @classmethod
    def load(cls, root: str | Path) -> Manifest:
        path = Path(root) / MANIFEST
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no manifest; is {root} a pdfusion store? "
                                    "(create one with `pdfusion data import-seed` or jobs/generate_dataset.py)")
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from None
        for key in ("schema_version", "shards"):
            if key not in d:
                raise ValueError(f"{path}: missing key {key!r}")
        if d["schema_version"] > SCHEMA_VERSION:
            raise ValueError(f"{path}: schema_version {d['schema_version']} is newer than this pdfusion "
                             f"({SCHEMA_VERSION}); upgrade pdfusion")
        try:
            shards = [ShardInfo.from_dict(s) for s in d["shards"]]
        except (KeyError, TypeError) as exc:
            raise ValueError(f"{path}: malformed shard entry (missing {exc})") from None
        return cls(shards, d.get("r_grid_sha256"), d.get("n_r"), int(d["schema_version"]))

    @classmethod
    def load_or_empty(cls, root: str | Path) -> Manifest:
        return cls.load(root) if (Path(root) / MANIFEST).is_file() else cls()

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "r_grid_sha256": self.r_grid_sha256,
            "n_r": self.n_r,
            "n_structures": self.n_structures,
            "shards": [s.to_dict() for s in self.shards],
        }

    def save(self, root: str | Path) -> None:
        _atomic_write(Path(root) / MANIFEST, json.dumps(self.to_dict(), indent=1).encode())

    @staticmethod
    def add_shard(root: str | Path, info: ShardInfo, *, r_grid_sha: str | None = None,
                  n_r: int | None = None) -> Manifest:
        """Add (or replace, by name) one shard in the on-disk manifest, under a lock; returns the new manifest."""
        root = Path(root)
        with _locked(root):
            m = Manifest.load_or_empty(root)
            if r_grid_sha is not None:
                if m.r_grid_sha256 not in (None, r_grid_sha):
                    raise ValueError(f"{root}: shard {info.name} was written on a different r grid than the store's")
                m.r_grid_sha256, m.n_r = r_grid_sha, n_r
            others = [s for s in m.shards if s.name != info.name]
            existing = set().union(*(s.ids for s in others)) if others else set()
            clash = existing.intersection(info.ids)
            if clash:
                raise ValueError(f"{root}: shard {info.name} repeats ids already in the store, e.g. "
                                 f"{sorted(clash)[:3]}")
            m.shards = sorted([*others, info], key=lambda s: s.name)
            m.save(root)
            return m

    # -- queries -----------------------------------------------------------------------------------
    @property
    def n_structures(self) -> int:
        return sum(s.n_structures for s in self.shards)

    def ids(self) -> set[str]:
        return {i for s in self.shards for i in s.ids}

    def shard(self, name: str) -> ShardInfo | None:
        return next((s for s in self.shards if s.name == name), None)

    def verify(self, root: str | Path, names: Iterable[str] | None = None) -> list[str]:
        """Names of shards whose file is missing or whose sha256 differs from the manifest."""
        root = Path(root)
        wanted = None if names is None else set(names)
        bad = []
        for s in self.shards:
            if wanted is not None and s.name not in wanted:
                continue
            path = root / s.name
            if not path.is_file() or path.stat().st_size != s.size_bytes or sha256_file(path) != s.sha256:
                bad.append(s.name)
        return bad

    def has_shard(self, root: str | Path, name: str, verify: bool = True) -> bool:
        """True when ``name`` is listed (and, with ``verify``, its checksum matches): a task may skip it."""
        if self.shard(name) is None:
            return False
        return not verify or not self.verify(root, [name])


# --------------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------------
def _ensure_r_grid(root: Path, r_grid: np.ndarray) -> str:
    r = np.asarray(r_grid)
    if r.ndim != 1 or r.size < 2 or not np.all(np.isfinite(r)) or not np.all(np.diff(r) > 0):
        raise ValueError(f"r_grid: need a finite, strictly increasing 1-D array, got shape {r.shape}")
    path = root / R_GRID
    if path.is_file():
        old = np.load(path, allow_pickle=False)
        if old.dtype != r.dtype or not np.array_equal(old, r):
            raise ValueError(f"r_grid: differs from the store's {path} ({old.size} points, {old.dtype}); use a new "
                             "store root")
    else:
        import io as _io

        buf = _io.BytesIO()
        np.save(buf, r, allow_pickle=False)
        _atomic_write(path, buf.getvalue())
    return r_grid_sha256(r)


def _meta_columns(records: Sequence[StoreRecord]) -> dict[str, Any]:
    cols: dict[str, list] = {c: [] for c in META_COLUMNS}
    radius, extra = [], []
    for rec in records:
        m = dict(rec.meta)
        m.setdefault("id", rec.id)
        for c in META_COLUMNS:
            v = m.pop(c, None)
            cols[c].append("" if v is None else str(v))
        r = m.pop("radius", None)
        radius.append(np.nan if r is None else float(r))
        try:
            extra.append(json.dumps(m, sort_keys=True, allow_nan=False))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"record {rec.id}: meta must be JSON-serialisable (finite numbers, str, lists, dicts): "
                             f"{exc}") from None
    return {**cols, "radius": np.asarray(radius, dtype=np.float64), "extra": extra}


def _create_dataset(group, name: str, data: np.ndarray, chunks, compression: str | None):
    """Every array goes through here (one place for filters; tests use it to kill a writer mid-shard)."""
    kw = {} if compression is None else {"compression": compression, "shuffle": True}
    if compression == "gzip":
        kw["compression_opts"] = 4
    return group.create_dataset(name, data=data, chunks=chunks, **kw)


def _write_h5(path: Path, records: Sequence[StoreRecord], r_sha: str, compression: str | None) -> None:
    import h5py

    sizes = np.array([len(r.numbers) for r in records], dtype=np.int64)
    offsets = np.zeros(len(records) + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    n_atoms = int(offsets[-1])
    n_r = records[0].pdf.shape[0]
    dtypes = {r.pdf.dtype for r in records}
    if len(dtypes) != 1:
        raise ValueError(f"pdf: all records of one shard must share a dtype, got {sorted(map(str, dtypes))}")
    s = len(records)
    meta = _meta_columns(records)
    str_dt = h5py.string_dtype("utf-8")
    with h5py.File(path, "w", libver="latest") as h5:
        h5.attrs["schema_version"] = SCHEMA_VERSION
        h5.attrs["n_structures"] = s
        h5.attrs["r_grid_sha256"] = r_sha
        _create_dataset(h5, "offsets", offsets, None, None)
        _create_dataset(h5, "numbers", np.concatenate([r.numbers for r in records]), (min(n_atoms, ATOM_CHUNK),),
                        compression)
        _create_dataset(h5, "positions", np.concatenate([r.positions for r in records]), (min(n_atoms, ATOM_CHUNK), 3),
                        compression)
        _create_dataset(h5, "node_attributes", np.concatenate([r.node_attributes for r in records]),
                        (min(n_atoms, ATOM_CHUNK), 7), compression)
        _create_dataset(h5, "pdf", np.stack([r.pdf for r in records]), (1, n_r), compression)
        g = h5.create_group("meta")
        for c in META_COLUMNS:
            _create_dataset(g, c, np.array(meta[c], dtype=object).astype(str_dt), None, None)
        _create_dataset(g, "radius", meta["radius"], None, None)
        _create_dataset(g, "extra", np.array(meta["extra"], dtype=object).astype(str_dt), (min(s, 1024),), compression)


def write_shard(
    root: str | Path,
    shard_name: str,
    records: Sequence[StoreRecord],
    r_grid: np.ndarray,
    *,
    compression: str | None = "gzip",
    update_manifest: bool = True,
) -> ShardInfo:
    """Write ``records`` as one complete shard ``root/shard_name`` atomically and (by default) list it in
    the manifest. Rewriting a shard of the same name replaces it (deterministic retries are safe)."""
    root = Path(root)
    if not _SHARD_NAME.match(shard_name):
        raise ValueError(f"shard_name: {shard_name!r} must match [A-Za-z0-9_.-]+.h5")
    if shard_name in (MANIFEST, R_GRID):
        raise ValueError(f"shard_name: {shard_name!r} is reserved")
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression: must be one of {COMPRESSIONS}, got {compression!r}")
    if not records:
        raise ValueError(f"{shard_name}: no records to write")
    with _disk_errors(root, f"shard {shard_name}"):
        return _write_shard(root, shard_name, records, r_grid, compression, update_manifest)


def _write_shard(root: Path, shard_name: str, records, r_grid, compression, update_manifest: bool) -> ShardInfo:
    root.mkdir(parents=True, exist_ok=True)
    r_sha = _ensure_r_grid(root, r_grid)
    n_r = int(np.asarray(r_grid).shape[0])
    recs = [_validate(r, n_r, f"{shard_name} record {i} ({r.meta.get('id', r.meta.get('source'))})")
            for i, r in enumerate(records)]
    ids = [r.id for r in recs]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise ValueError(f"{shard_name}: duplicate record ids {dup[:5]}; ids (meta 'id' or 'source') must be unique")
    with _atomic_store_path(root / shard_name) as tmp:
        _write_h5(tmp, recs, r_sha, compression)
        info = ShardInfo(shard_name, sha256_file(tmp), len(recs), int(sum(len(r.numbers) for r in recs)),
                         tuple(ids), str(recs[0].pdf.dtype), tmp.stat().st_size)
    if update_manifest:
        Manifest.add_shard(root, info, r_grid_sha=r_sha, n_r=n_r)
    return info


def _shard_info_from_file(path: Path) -> ShardInfo:
    import h5py

    with h5py.File(path, "r") as h5:
        ids = tuple(v.decode() if isinstance(v, bytes) else str(v) for v in h5["meta/id"][()])
        offsets = h5["offsets"][()]
        dtype = str(h5["pdf"].dtype)
    return ShardInfo(path.name, sha256_file(path), len(ids), int(offsets[-1]), ids, dtype, path.stat().st_size)


def recover(root: str | Path) -> tuple[list[str], list[str]]:
    """Clean up after a killed writer: delete stale temp files and adopt complete shards missing from the
    manifest. Call it only while no writer is running on ``root``. Returns (removed, adopted) names."""
    root = Path(root)
    if not root.is_dir():
        return [], []
    removed, adopted = [], []
    with _locked(root):
        for p in sorted(root.glob("*.tmp.*")):
            p.unlink(missing_ok=True)
            removed.append(p.name)
        m = Manifest.load_or_empty(root)
        listed = {s.name for s in m.shards}
        orphans = [p for p in sorted(root.glob("*.h5")) if p.name not in listed]
    for p in orphans:
        try:
            info = _shard_info_from_file(p)
        except Exception:  # not a complete shard: it can only be a foreign file; leave it, do not adopt
            continue
        r_sha, n_r = None, None
        if (root / R_GRID).is_file():
            r = np.load(root / R_GRID, allow_pickle=False)
            r_sha, n_r = r_grid_sha256(r), int(r.shape[0])
        Manifest.add_shard(root, info, r_grid_sha=r_sha, n_r=n_r)
        adopted.append(p.name)
    return removed, adopted


class StoreWriter:
    """Append records to a store in shards of ``shard_size``; skips ids the store already holds (resume).

    Single writer per root: opening it runs :func:`recover`. Use as a context manager; ``close()``
    flushes the last partial shard.
    """

    def __init__(self, root: str | Path, r_grid: np.ndarray, *, shard_size: int = 256,
                 compression: str | None = "gzip"):
        if shard_size < 1:
            raise ValueError(f"shard_size: must be >= 1, got {shard_size}")
        if compression not in COMPRESSIONS:
            raise ValueError(f"compression: must be one of {COMPRESSIONS}, got {compression!r}")
        self.root = Path(root)
        self.r_grid = np.asarray(r_grid)
        self.n_r = int(self.r_grid.shape[0])
        with _disk_errors(self.root, "the store"):
            self.root.mkdir(parents=True, exist_ok=True)
            _ensure_r_grid(self.root, self.r_grid)
            recover(self.root)
        self.shard_size = shard_size
        self.compression = compression
        m = Manifest.load_or_empty(self.root)
        self._stored = m.ids()
        self._buffer: list[StoreRecord] = []
        self._buffered: set[str] = set()
        idx = [int(g.group(1)) for s in m.shards if (g := _AUTO_SHARD.match(s.name))]
        self._next = max(idx, default=-1) + 1
        self.written: list[ShardInfo] = []
        self.skipped = 0

    def add(self, record: StoreRecord) -> bool:
        """Queue one record; returns False (and skips it) when the store already holds its id."""
        rid = record.id
        if rid in self._stored:
            self.skipped += 1
            return False
        if rid in self._buffered:
            raise ValueError(f"record id {rid!r} added twice; ids (meta 'id' or 'source') must be unique")
        self._buffer.append(_validate(record, self.n_r, f"record {rid}"))
        self._buffered.add(rid)
        if len(self._buffer) >= self.shard_size:
            self.flush()
        return True

    def flush(self) -> ShardInfo | None:
        if not self._buffer:
            return None
        name = f"shard-{self._next:05d}.h5"
        info = write_shard(self.root, name, self._buffer, self.r_grid, compression=self.compression)
        self._next += 1
        self._stored |= self._buffered
        self._buffer, self._buffered = [], set()
        self.written.append(info)
        return info

    def close(self) -> None:
        self.flush()

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()


# --------------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------------
def _decode(arr) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in arr]


class StoreReader:
    """Random access to a store's records (shard files are opened lazily, once per process)."""

    def __init__(self, root: str | Path, *, verify: bool = False):
        self.root = Path(root)
        self.manifest = Manifest.load(self.root)
        if verify:
            bad = self.manifest.verify(self.root)
            if bad:
                raise ValueError(f"{self.root}: shard(s) {bad} fail their sha256 check; regenerate or re-import them")
        rpath = self.root / R_GRID
        if not rpath.is_file():
            raise ValueError(f"{rpath}: missing r grid file of store {self.root}")
        self.r_grid = np.load(rpath, allow_pickle=False)
        if self.manifest.r_grid_sha256 and r_grid_sha256(self.r_grid) != self.manifest.r_grid_sha256:
            raise ValueError(f"{rpath}: r grid does not match the manifest's r_grid_sha256")
        counts = np.array([s.n_structures for s in self.manifest.shards], dtype=np.int64)
        self._starts = np.concatenate([[0], np.cumsum(counts)])
        self._files: dict[str, Any] = {}
        self._pid = os.getpid()
        self._index_cache: dict[str, tuple[np.ndarray, list[dict[str, Any]]]] = {}
        self._dataset_cache: dict[str, tuple] = {}

    # -- file handles --------------------------------------------------------------------------------
    def _h5(self, name: str):
        import h5py

        if self._pid != os.getpid():  # forked (DataLoader worker): never share HDF5 handles across processes
            self._files, self._dataset_cache, self._pid = {}, {}, os.getpid()
        f = self._files.get(name)
        if f is None:
            path = self.root / name
            try:
                f = h5py.File(path, "r")
            except OSError as exc:
                raise ValueError(f"{path}: cannot open shard ({exc}); run `pdfusion data info {self.root}` to "
                                 "verify") from None
            self._files[name] = f
        return f

    def close(self) -> None:
        for f in self._files.values():
            with contextlib.suppress(Exception):
                f.close()
        self._files, self._dataset_cache = {}, {}

    def __enter__(self) -> StoreReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getstate__(self):  # picklable for Ray / DataLoader: handles are reopened on the other side
        d = dict(self.__dict__)
        d["_files"], d["_dataset_cache"] = {}, {}
        return d

    # -- access ----------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self._starts[-1])

    def _locate(self, i: int) -> tuple[str, int]:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for a store of {n} structures")
        i %= n
        k = int(np.searchsorted(self._starts, i, side="right")) - 1
        return self.manifest.shards[k].name, i - int(self._starts[k])

    def _index(self, name: str) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """Offsets and metadata rows of one shard, read once and kept (small: no big arrays)."""
        hit = self._index_cache.get(name)
        if hit is None:
            g = self._h5(name)["meta"]
            cols = {c: _decode(g[c][()]) for c in META_COLUMNS}
            radius = g["radius"][()]
            rows = []
            for j, extra in enumerate(_decode(g["extra"][()])):
                meta = json.loads(extra)
                for c in META_COLUMNS:
                    meta[c] = cols[c][j] if cols[c][j] != "" else None
                meta["radius"] = None if math.isnan(radius[j]) else float(radius[j])
                rows.append(meta)
            hit = self._index_cache[name] = (self._h5(name)["offsets"][()], rows)
        return hit

    def __getitem__(self, i: int) -> StoreRecord:
        name, j = self._locate(int(i))
        off, rows = self._index(name)
        numbers, pos, na, pdf = self._arrays(name)
        a, b = int(off[j]), int(off[j + 1])
        return StoreRecord(numbers[a:b], pos[a:b], na[a:b], pdf[j], dict(rows[j]))

    def _arrays(self, name: str) -> tuple:
        """The four big h5py datasets of a shard (looked up once: a lookup costs as much as a small read)."""
        h5 = self._h5(name)
        hit = self._dataset_cache.get(name)
        if hit is None:
            hit = self._dataset_cache[name] = tuple(h5[k] for k in ("numbers", "positions", "node_attributes", "pdf"))
        return hit

    def read_shard(self, name: str) -> list[StoreRecord]:
        """All records of one shard, read in bulk (much faster than item by item)."""
        off, rows = self._index(name)
        h5 = self._h5(name)
        numbers, pos, na, pdf = (h5[k][()] for k in ("numbers", "positions", "node_attributes", "pdf"))
        return [
            StoreRecord(numbers[off[j]:off[j + 1]].copy(), pos[off[j]:off[j + 1]].copy(),
                        na[off[j]:off[j + 1]].copy(), pdf[j].copy(), dict(rows[j]))
            for j in range(len(off) - 1)
        ]

    def __iter__(self) -> Iterator[StoreRecord]:
        for s in self.manifest.shards:
            yield from self.read_shard(s.name)

    def sizes(self) -> np.ndarray:
        """Atom count of every structure (reads only the ``offsets`` arrays)."""
        parts = [np.diff(self._index(s.name)[0]) for s in self.manifest.shards]
        return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)

    def metadata(self) -> dict[str, list]:
        """Column table of metadata: id, structure_type, formula, source, metal, radius (None when unknown)."""
        out: dict[str, list] = {c: [] for c in (*META_COLUMNS, "radius")}
        for s in self.manifest.shards:
            for row in self._index(s.name)[1]:
                for c in out:
                    out[c].append(row[c])
        return out

    def ids(self) -> list[str]:
        return [i for s in self.manifest.shards for i in s.ids]

    def verify(self) -> list[str]:
        return self.manifest.verify(self.root)
