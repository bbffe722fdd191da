"""io_utils: the one temp-file-plus-rename. A write lands whole or not at all, leaves no temp file, and makes a
normal file (permissions from the umask, not mkstemp's 0600)."""

from __future__ import annotations

import os
import stat

import pytest

from pdfusion import io_utils
from pdfusion.io_utils import atomic_path, atomic_torch_save, atomic_write


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_atomic_write_bytes_and_text(tmp_path):
    assert atomic_write(tmp_path / "a.bin", b"\x00\xffraw") == tmp_path / "a.bin"
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\xffraw"
    atomic_write(tmp_path / "sub" / "b.txt", "Å line\nsecond\n")  # the folder is created
    assert (tmp_path / "sub" / "b.txt").read_bytes() == "Å line\nsecond\n".encode()
    atomic_write(tmp_path / "c.txt", "Å", encoding="latin-1")
    assert (tmp_path / "c.txt").read_bytes() == b"\xc5"
    atomic_write(tmp_path / "a.bin", b"new")  # replaces
    assert (tmp_path / "a.bin").read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.bin", "b.txt", "c.txt", "sub"]


def test_an_error_inside_leaves_no_temp_file_and_the_target_untouched(tmp_path):
    target = tmp_path / "keep.json"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="boom"), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.json"]


def test_a_failing_write_keeps_the_target(tmp_path):
    target = tmp_path / "keep.txt"
    target.write_text("old")
    with pytest.raises(UnicodeEncodeError):
        atomic_write(target, "Å", encoding="ascii")
    with pytest.raises(TypeError):
        atomic_write(target, 3.5)  # type: ignore[arg-type]
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_a_failing_rename_removes_the_temp_file(tmp_path, monkeypatch):
    target = tmp_path / "keep.txt"
    target.write_text("old")

    def full_disk(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(io_utils.os, "replace", full_disk)
    with pytest.raises(OSError, match="No space left"):
        atomic_write(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_permissions_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        atomic_write(tmp_path / "x.txt", "x")
        with atomic_path(tmp_path / "y.h5") as tmp:
            tmp.write_bytes(b"y")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "x.txt") == 0o666 & ~umask
    assert _mode(tmp_path / "y.h5") == 0o666 & ~umask


def test_the_temp_file_keeps_the_suffix_beside_the_target(tmp_path):
    """h5py, matplotlib and np.save choose (or append) the format from the suffix."""
    with atomic_path(tmp_path / "fig.png") as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".png" and tmp.name != "fig.png"
        assert tmp.exists()  # created (empty): nobody else can take the name
        tmp.write_bytes(b"png")
    assert (tmp_path / "fig.png").read_bytes() == b"png"


def test_matplotlib_picks_the_format_from_the_temp_suffix(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(1, 1))
    for name, magic in (("f.png", b"\x89PNG"), ("f.pdf", b"%PDF")):
        with atomic_path(tmp_path / name) as tmp:
            fig.savefig(tmp)
        assert (tmp_path / name).read_bytes()[:4] == magic
    plt.close(fig)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.pdf", "f.png"]


def test_a_chosen_temp_name(tmp_path):
    """A caller whose clean-up finds its leftovers by name (the HDF5 store) names the temp file itself."""
    with atomic_path(tmp_path / "shard.h5", prefix="shard.h5.tmp.7.", suffix="") as tmp:
        assert tmp.name.startswith("shard.h5.tmp.7.") and not tmp.name.endswith(".h5")
        tmp.write_bytes(b"s")
    assert [p.name for p in tmp_path.iterdir()] == ["shard.h5"]


def test_fsync_of_file_and_folder(tmp_path, monkeypatch):
    synced = []
    real = os.fsync

    def spy(fd):
        synced.append(os.path.realpath(f"/proc/self/fd/{fd}"))
        return real(fd)

    monkeypatch.setattr(io_utils.os, "fsync", spy)
    atomic_write(tmp_path / "d.txt", "x")
    assert len(synced) == 2 and synced[1] == str(tmp_path.resolve())
    synced.clear()
    with atomic_path(tmp_path / "e.txt", fsync=False) as tmp:
        tmp.write_text("e")
    assert synced == [] and (tmp_path / "e.txt").read_text() == "e"


def test_atomic_torch_save(tmp_path):
    import torch

    atomic_torch_save({"w": torch.arange(3)}, tmp_path / "ckpt.pt")
    assert torch.equal(torch.load(tmp_path / "ckpt.pt")["w"], torch.arange(3))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]
