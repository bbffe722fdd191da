"""Issue 22, fault (d): a disk that fills up or an output folder that cannot be written, during
`pdfusion data import-seed` and `jobs/generate_dataset.py`.

The user sees one error line and exit code 2; the store stays readable with exactly the shards its manifest
lists (checksums intact, no temp files); a rerun completes it without losing or duplicating a structure.
Running as root ignores chmod, so a full disk is an OSError(ENOSPC) injected into the shard writer and a
read-only folder is a path whose parent is a file (or an injected EACCES / EROFS).
"""

from __future__ import annotations

import errno
import importlib.util
from pathlib import Path

import numpy as np
import pytest

import pdfusion.data.store as store
from pdfusion.cli import main
from pdfusion.data.store import StoreReader
from pdfusion.structures.io import SeedRecord, write_seed_h5
from pdfusion.structures.particle import Particle

ROOT = Path(__file__).resolve().parents[2]


def _seed_folder(folder: Path, n: int = 6) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(0)
    r = np.arange(100) * 0.01
    for i in range(n):
        numbers = np.array([22, 8, 8])
        pos = np.array([[0.0, 0, 0], [1.95, 0, 0], [-1.95, 0, 0]]) + rng.normal(scale=0.01, size=(3, 3))
        na = np.column_stack([numbers, np.ones((3, 3)), pos])
        rec = SeedRecord(Particle(numbers, pos), na, r, rng.normal(size=100), np.zeros((2, 0), np.int64),
                         np.zeros(0), {})
        write_seed_h5(rec, folder / f"graph_Rutile_TiO2_r{5 + i}.h5")
    return folder


def _fail_on_call(monkeypatch, name: str, call: int, exc: OSError, when=lambda *a: True) -> None:
    """Make ``store.<name>`` raise ``exc`` on its ``call``-th matching call (1-based)."""
    real = getattr(store, name) if name != "os.replace" else store.os.replace
    seen = {"n": 0}

    def wrapper(*args, **kwargs):
        if when(*args):
            seen["n"] += 1
            if seen["n"] == call:
                raise exc
        return real(*args, **kwargs)

    if name == "os.replace":
        monkeypatch.setattr(store.os, "replace", wrapper)
    else:
        monkeypatch.setattr(store, name, wrapper)


def _readable(root: Path) -> list[str]:
    """The store opens, every listed shard passes its checksum, no temp file is left; returns the ids."""
    assert not [p.name for p in root.iterdir() if ".tmp." in p.name]
    with StoreReader(root) as reader:
        assert reader.verify() == []
        ids = reader.ids()
        for i in range(len(reader)):
            assert reader[i].numbers.size >= 2 and np.isfinite(reader[i].pdf).all()
    assert len(ids) == len(set(ids))
    return ids


def _one_error_line(err: str, *needles: str) -> None:
    assert "Traceback" not in err
    lines = [ln for ln in err.strip().splitlines() if "error" in ln.lower()]  # progress bars share stderr
    assert len(lines) == 1 and err.strip().splitlines()[-1] == lines[0], err
    for n in needles:
        assert n in lines[0], err


@pytest.mark.parametrize(("exc", "text"), [
    (OSError(errno.ENOSPC, "No space left on device"), "No space left on device"),
    (OSError(errno.EROFS, "Read-only file system"), "Read-only file system"),
    (PermissionError(errno.EACCES, "Permission denied"), "Permission denied"),
])
def test_import_seed_disk_full_mid_import(tmp_path, monkeypatch, capsys, exc, text):
    src, out = _seed_folder(tmp_path / "src"), tmp_path / "store"
    _fail_on_call(monkeypatch, "_write_h5", 2, exc)  # the second shard's write fails
    assert main(["data", "import-seed", str(src), str(out), "--shard-size", "2"]) == 2
    _one_error_line(capsys.readouterr().err, "pdfusion data: error:", text, "rerun")
    assert len(_readable(out)) == 2  # the first shard, complete and listed
    monkeypatch.undo()
    assert main(["data", "import-seed", str(src), str(out), "--shard-size", "2"]) == 0
    assert sorted(_readable(out)) == sorted(p.name for p in src.iterdir())


def test_import_seed_manifest_write_fails(tmp_path, monkeypatch, capsys):
    """The shard is in place but the manifest update hits a full disk: the manifest still lists the old
    shards, and the rerun adopts the complete orphan shard instead of writing its structures twice."""
    src, out = _seed_folder(tmp_path / "src"), tmp_path / "store"
    _fail_on_call(monkeypatch, "os.replace", 2, OSError(errno.ENOSPC, "No space left on device"),
                  when=lambda src_, dst: Path(dst).name == "manifest.json")
    assert main(["data", "import-seed", str(src), str(out), "--shard-size", "2"]) == 2
    _one_error_line(capsys.readouterr().err, "No space left on device")
    assert len(_readable(out)) == 2
    monkeypatch.undo()
    assert main(["data", "import-seed", str(src), str(out), "--shard-size", "2"]) == 0
    assert sorted(_readable(out)) == sorted(p.name for p in src.iterdir())


def test_import_seed_unwritable_folder(tmp_path, capsys):
    src = _seed_folder(tmp_path / "src")
    (tmp_path / "afile").write_text("not a folder")
    assert main(["data", "import-seed", str(src), str(tmp_path / "afile" / "store")]) == 2
    _one_error_line(capsys.readouterr().err, "Not a directory")
    assert (tmp_path / "afile").read_text() == "not a folder"


def _job():
    spec = importlib.util.spec_from_file_location("generate_dataset_job", ROOT / "jobs" / "generate_dataset.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


GRID = ["--types", "NaCl", "--metals", "Ti", "Zn", "Mg", "--radii", "4", "--shard-size", "1", "--rmax", "8",
        "--local"]


def test_generate_dataset_disk_full_then_rerun(tmp_path, monkeypatch, capsys):
    job, out = _job(), tmp_path / "gen"
    _fail_on_call(monkeypatch, "_write_h5", 2, OSError(errno.ENOSPC, "No space left on device"))
    assert job.main([*GRID, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "generate_dataset: error:" in err and "No space left on device" in err and "rerun" in err
    assert len(_readable(out)) == 1
    monkeypatch.undo()
    assert job.main([*GRID, "--out", str(out)]) == 0
    capsys.readouterr()
    ids = _readable(out)
    assert len(ids) == 3


def test_generate_dataset_unwritable_folder(tmp_path, capsys):
    (tmp_path / "afile").write_text("not a folder")
    assert _job().main([*GRID, "--out", str(tmp_path / "afile" / "gen")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "generate_dataset: error:" in err
    assert (tmp_path / "afile").read_text() == "not a folder"
