"""Seed-oxides import: bit-exact on generated files and on a real sample, resumable after a crash."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import pdfusion.data.store as store
from pdfusion.data.seed import import_seed
from pdfusion.data.store import Manifest, StoreReader
from pdfusion.structures.io import SeedRecord, read_seed_h5, write_seed_h5
from pdfusion.structures.particle import Particle

METALS = {"Mg": 12, "Ti": 22, "Zn": 30}


def make_seed_folder(folder: Path, n_r: int = 200) -> list[Path]:
    """Seed-oxides style files for a few (type, metal, radius) written by the project's own writer."""
    rng = np.random.default_rng(0)
    r = np.arange(n_r) * 0.01
    paths = []
    for t in ("NaCl", "Rutile"):
        for sym, z in METALS.items():
            for rad in (5, 6):
                k = int(rng.integers(6, 30))
                numbers = np.where(np.arange(k) % 3 == 0, z, 8)
                pos = rng.normal(scale=rad / 2, size=(k, 3))
                na = np.column_stack([numbers, rng.random((k, 3)), pos])
                rec = SeedRecord(Particle(numbers, pos), na, r, rng.normal(size=n_r), np.zeros((2, 0), np.int64),
                                 np.zeros(0), {})
                p = folder / f"graph_{t}_{sym}O_r{rad}.h5"
                write_seed_h5(rec, p)
                paths.append(p)
    return sorted(paths)


def assert_store_matches_files(root: Path, files: list[Path]) -> None:
    reader = StoreReader(root, verify=True)
    assert reader.ids() == [f.name for f in sorted(files)]  # sorted file order, no duplicates
    for got, f in zip(reader, sorted(files), strict=True):
        src = read_seed_h5(f)
        assert got.node_attributes.tobytes() == src.node_attributes.tobytes()
        assert got.positions.tobytes() == src.particle.positions.tobytes()
        assert got.pdf.dtype == src.pdf.dtype and got.pdf.tobytes() == src.pdf.tobytes()
        np.testing.assert_array_equal(got.numbers, src.particle.numbers)
        for key in ("structure_type", "formula", "radius", "metal", "source"):
            assert got.meta[key] == src.meta[key], key
    assert reader.r_grid.tobytes() == read_seed_h5(files[0]).r.tobytes()


def test_import_generated_folder_bit_exact(tmp_path):
    files = make_seed_folder(tmp_path / "src")
    m = import_seed(tmp_path / "src", tmp_path / "store", shard_size=5, progress=False)
    assert m.n_structures == len(files) == 12 and len(m.shards) == 3
    assert_store_matches_files(tmp_path / "store", files)
    again = import_seed(tmp_path / "src", tmp_path / "store", shard_size=5, progress=False)  # nothing to do
    assert [s.sha256 for s in again.shards] == [s.sha256 for s in m.shards]


def test_import_resumes_after_a_crash(tmp_path, monkeypatch):
    files = make_seed_folder(tmp_path / "src")
    real, calls = store._write_h5, []

    def crash_on_third_shard(path, records, *a, **k):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt("simulated crash")
        return real(path, records, *a, **k)

    monkeypatch.setattr(store, "_write_h5", crash_on_third_shard)
    with pytest.raises(KeyboardInterrupt):
        import_seed(tmp_path / "src", tmp_path / "store", shard_size=4, progress=False)
    assert Manifest.load(tmp_path / "store").n_structures == 8
    monkeypatch.setattr(store, "_write_h5", real)
    import_seed(tmp_path / "src", tmp_path / "store", shard_size=4, progress=False)
    assert_store_matches_files(tmp_path / "store", files)


def test_import_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        import_seed(tmp_path / "nope", tmp_path / "store")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no .h5 files"):
        import_seed(tmp_path / "empty", tmp_path / "store")


def _sample(src: Path, dst: Path, k: int) -> list[Path]:
    files = sorted(src.glob("*.h5"))
    idx = np.unique(np.linspace(0, len(files) - 1, k).round().astype(int))
    dst.mkdir()
    for i in idx:
        (dst / files[i].name).symlink_to(files[i])
    return sorted(dst.glob("*.h5"))


@pytest.mark.seed
def test_import_real_seed_sample_bit_exact(tmp_path, seed_h5_dir):
    files = _sample(seed_h5_dir, tmp_path / "src", 24)
    import_seed(tmp_path / "src", tmp_path / "store", shard_size=10, progress=False)
    assert_store_matches_files(tmp_path / "store", files)


@pytest.mark.seed
def test_import_real_fixed_135_sample(tmp_path, seed_135_dir):
    files = _sample(seed_135_dir, tmp_path / "src", 8)
    import_seed(tmp_path / "src", tmp_path / "store", progress=False)
    assert_store_matches_files(tmp_path / "store", files)
    reader = StoreReader(tmp_path / "store")
    assert set(reader.sizes().tolist()) == {135} and set(reader.metadata()["radius"]) == {None}
