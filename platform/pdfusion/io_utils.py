"""Atomic file writes: the one temp-file-plus-rename in pdfusion.

Every file pdfusion writes (checkpoints, shards, PDFs, structures, figures, summaries) goes through
`atomic_path`: the data land in a temporary file beside the target, are flushed to disk, and are renamed
over the target in one step, so a crash or a full disk never leaves half a file where a good one was.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["atomic_path", "atomic_torch_save", "atomic_write"]


def _umask() -> int:
    """The process umask, read without changing it where Linux tells it (setting it to read it would give a
    file another thread creates meanwhile mode 0666)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable; a file system that cannot fsync a folder is left as it is."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path, fsync: bool = True, *, prefix: str | None = None,
                suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `path` (same suffix, so h5py and matplotlib pick the format); when the
    block ends without an error it is made readable as a normal file (mkstemp's 0600 would hide a shared
    checkpoint from others) and renamed over `path`; on an error it is removed.

    With `fsync` the file is flushed to disk before the rename and the folder after it, so after a crash
    the target is the old file or the complete new one. The temporary file is named
    ``<prefix><random><suffix>``, by default ``.<name>.<random>.tmp<suffix of path>``; a caller whose
    clean-up finds its own leftovers by name (the HDF5 store's ``<name>.tmp.<pid>.<random>``) passes both.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}." if prefix is None else prefix,
                                suffix=f".tmp{path.suffix}" if suffix is None else suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if fsync:
        _fsync_dir(path.parent)


def atomic_write(path: str | Path, data: bytes | str, encoding: str = "utf-8") -> Path:
    """Write `data` (text is encoded with `encoding`) to `path` atomically; returns `path`."""
    raw = data.encode(encoding) if isinstance(data, str) else bytes(data)
    with atomic_path(path) as tmp:
        tmp.write_bytes(raw)
    return Path(path)


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """`torch.save` through `atomic_path`: a crash never leaves half a checkpoint."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)
