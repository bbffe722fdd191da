"""Run storage that may be a local folder or a URI (s3://, gs://, …), as Ray Train's `storage_path` allows.

Local paths are made absolute (Ray workers run in other directories); URIs pass through untouched —
`Path("s3://bucket/x").resolve()` would silently turn one into a local folder named `s3:`. Small
bookkeeping files (the MLflow run id that makes a relaunch resume the same run) go through pyarrow's
filesystem layer, the one Ray itself uses for remote storage.
"""

from __future__ import annotations

import os
from pathlib import Path

from pdfusion.io_utils import atomic_write

__all__ = ["is_uri", "normalize_storage_path", "join", "read_text", "write_text"]


def is_uri(path: str) -> bool:
    return "://" in str(path)


def normalize_storage_path(path: str | os.PathLike) -> str:
    """Absolute local path, or the URI unchanged."""
    path = str(path)
    return path if is_uri(path) else str(Path(path).expanduser().resolve())


def join(base: str, *parts: str) -> str:
    if is_uri(base):
        return "/".join([base.rstrip("/"), *[p.strip("/") for p in parts]])
    return str(Path(base, *parts))


def read_text(path: str) -> str | None:
    """The file's text, or None when it does not exist."""
    if not is_uri(path):
        p = Path(path)
        return p.read_text() if p.is_file() else None
    import pyarrow.fs

    fs, inner = pyarrow.fs.FileSystem.from_uri(path)
    if fs.get_file_info(inner).type != pyarrow.fs.FileType.File:
        return None
    with fs.open_input_stream(inner) as f:
        return f.read().decode()


def write_text(path: str, text: str) -> None:
    """Atomic on a local disk (temp file + rename); object stores replace whole objects anyway."""
    if not is_uri(path):
        atomic_write(path, text)
        return
    import pyarrow.fs

    fs, inner = pyarrow.fs.FileSystem.from_uri(path)
    fs.create_dir(inner.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(inner) as f:
        f.write(text.encode())
