"""Sharded store: bit-exact round trips, crash safety (SIGKILLed writer), checksums, concurrency."""

from __future__ import annotations

import json
import multiprocessing as mp
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from pdfusion.data.store import (
    Manifest,
    StoreReader,
    StoreRecord,
    StoreWriter,
    recover,
    write_shard,
)

N_R = 120
R_GRID = np.arange(N_R) * 0.25


def make_records(n: int, dtype=np.float64, seed: int = 0, prefix: str = "s") -> list[StoreRecord]:
    """Synthetic mono-metal oxides with irregular floats (so bit-exactness is meaningful)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        k = int(rng.integers(3, 40))
        metal = int(rng.choice([12, 22, 26, 30]))
        numbers = np.where(rng.random(k) < 0.5, metal, 8)
        numbers[0] = metal
        pos = rng.normal(scale=4.0, size=(k, 3))
        na = np.column_stack([numbers, rng.random((k, 3)), pos])
        meta = {
            "id": f"{prefix}{i:04d}",
            "structure_type": ["NaCl", "Rutile", "Spinel"][i % 3],
            "formula": f"M{metal}O",
            "radius": None if i % 4 == 0 else float(rng.uniform(4, 9)),
            "source": f"gen-{i}",
            "metal": {12: "Mg", 22: "Ti", 26: "Fe", 30: "Zn"}[metal],
            "augment": {"noise_std": float(rng.random()), "qdamp": [0.01, 0.03]},
            "variant": i,
        }
        out.append(StoreRecord(numbers, pos, na, rng.normal(size=N_R).astype(dtype), meta))
    return out


def assert_same(a: StoreRecord, b: StoreRecord) -> None:
    for key in ("numbers", "positions", "node_attributes", "pdf"):
        x, y = np.asarray(getattr(a, key)), np.asarray(getattr(b, key))
        assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes(), key
    assert a.meta == b.meta


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("compression", ["gzip", "lzf", None])
def test_round_trip_bit_exact(tmp_path, dtype, compression):
    recs = make_records(11, dtype)
    with StoreWriter(tmp_path, R_GRID, shard_size=4, compression=compression) as w:
        for r in recs:
            assert w.add(r)
    reader = StoreReader(tmp_path, verify=True)
    assert len(reader) == 11 and len(reader.manifest.shards) == 3
    assert reader.r_grid.tobytes() == R_GRID.tobytes()
    for i, r in enumerate(recs):
        assert_same(reader[i], r)
    for got, r in zip(reader, recs, strict=True):
        assert_same(got, r)
    assert_same(reader[-1], recs[-1])
    np.testing.assert_array_equal(reader.sizes(), [len(r.numbers) for r in recs])
    meta = reader.metadata()
    assert meta["id"] == [r.meta["id"] for r in recs]
    assert meta["radius"] == [r.meta["radius"] for r in recs]
    with pytest.raises(IndexError):
        reader[11]


def test_shard_layout_and_manifest(tmp_path):
    import h5py

    recs = make_records(5)
    with StoreWriter(tmp_path, R_GRID, shard_size=8) as w:
        for r in recs:
            w.add(r)
    m = json.loads((tmp_path / "manifest.json").read_text())
    assert m["schema_version"] == 1 and m["n_structures"] == 5
    (s,) = m["shards"]
    assert s["name"] == "shard-00000.h5" and s["ids"] == [r.meta["id"] for r in recs] and len(s["sha256"]) == 64
    with h5py.File(tmp_path / s["name"]) as h5:
        assert h5.attrs["schema_version"] == 1
        off = h5["offsets"][()]
        assert off.dtype == np.int64 and off[-1] == h5["numbers"].shape[0] == sum(len(r.numbers) for r in recs)
        assert h5["positions"].compression == "gzip" and h5["pdf"].chunks == (1, N_R)
        assert json.loads(h5["meta/extra"][2])["augment"] == recs[2].meta["augment"]


def test_writer_resume_skips_existing_ids(tmp_path):
    recs = make_records(9)
    with StoreWriter(tmp_path, R_GRID, shard_size=4) as w:
        for r in recs[:6]:
            w.add(r)
    with StoreWriter(tmp_path, R_GRID, shard_size=4) as w:
        added = [w.add(r) for r in recs]
    assert added == [False] * 6 + [True] * 3 and w.skipped == 6
    reader = StoreReader(tmp_path)
    assert reader.ids() == [r.meta["id"] for r in recs]
    with StoreWriter(tmp_path, R_GRID) as w, pytest.raises(ValueError, match="added twice"):
        extra = make_records(1, prefix="new")[0]
        w.add(extra)
        w.add(extra)


def test_write_shard_is_idempotent_and_rejects_id_clash(tmp_path):
    recs = make_records(6)
    write_shard(tmp_path, "gen-a.h5", recs[:3], R_GRID)
    assert Manifest.load(tmp_path).has_shard(tmp_path, "gen-a.h5")
    assert not Manifest.load(tmp_path).has_shard(tmp_path, "gen-b.h5")
    write_shard(tmp_path, "gen-a.h5", recs[:3], R_GRID)  # a retried task rewrites the same shard
    write_shard(tmp_path, "gen-b.h5", recs[3:], R_GRID)
    assert len(StoreReader(tmp_path)) == 6
    with pytest.raises(ValueError, match="repeats ids"):
        write_shard(tmp_path, "gen-c.h5", recs[:1], R_GRID)
    with pytest.raises(ValueError, match="differs from the store"):
        write_shard(tmp_path, "gen-d.h5", make_records(1, prefix="z"), R_GRID * 2)


def test_bad_records_name_the_field(tmp_path):
    rec = make_records(1)[0]
    bad_pdf = StoreRecord(rec.numbers, rec.positions, rec.node_attributes, rec.pdf[:-1], rec.meta)
    with pytest.raises(ValueError, match=r"pdf must have shape \(120,\)"):
        write_shard(tmp_path, "x.h5", [bad_pdf], R_GRID)
    pos = rec.positions.copy()
    pos[0, 0] = np.nan
    with pytest.raises(ValueError, match="positions contains NaN"):
        write_shard(tmp_path, "x.h5", [StoreRecord(rec.numbers, pos, rec.node_attributes, rec.pdf, rec.meta)], R_GRID)
    with pytest.raises(ValueError, match="needs an 'id' or 'source'"):
        write_shard(tmp_path, "x.h5", [StoreRecord(rec.numbers, rec.positions, rec.node_attributes, rec.pdf, {})],
                    R_GRID)
    with pytest.raises(ValueError, match="node_attributes must have shape"):
        write_shard(tmp_path, "x.h5",
                    [StoreRecord(rec.numbers, rec.positions, rec.node_attributes[:, :4], rec.pdf, rec.meta)], R_GRID)
    with pytest.raises(ValueError, match="shard_name"):
        write_shard(tmp_path, "../x.h5", [rec], R_GRID)


def test_checksum_detects_corrupted_shard(tmp_path):
    with StoreWriter(tmp_path, R_GRID, shard_size=4) as w:
        for r in make_records(8):
            w.add(r)
    path = tmp_path / "shard-00001.h5"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte, same size
    path.write_bytes(bytes(data))
    assert Manifest.load(tmp_path).verify(tmp_path) == ["shard-00001.h5"]
    assert not Manifest.load(tmp_path).has_shard(tmp_path, "shard-00001.h5")
    with pytest.raises(ValueError, match=r"shard-00001\.h5.*sha256"):
        StoreReader(tmp_path, verify=True)
    (tmp_path / "shard-00000.h5").unlink()
    assert Manifest.load(tmp_path).verify(tmp_path) == ["shard-00000.h5", "shard-00001.h5"]


# ---- a writer SIGKILLed mid-shard ----------------------------------------------------------------------
_CHILD = textwrap.dedent(
    """
    import os, signal, sys
    sys.path.insert(0, {test_dir!r})
    import numpy as np
    import pdfusion.data.store as store
    from test_store import make_records, R_GRID

    mode = sys.argv[1]
    if mode == "mid-shard":  # die inside the HDF5 write of the third shard
        real, calls = store._create_dataset, [0]
        def dying(group, name, *a, **k):
            if group.file.filename.split("/")[-1].startswith("shard-00002.h5.tmp") and name == "positions":
                os.kill(os.getpid(), signal.SIGKILL)
            return real(group, name, *a, **k)
        store._create_dataset = dying
    elif mode == "before-manifest":  # die after the rename, before the manifest lists the third shard
        real_add = store.Manifest.add_shard
        def dying_add(root, info, **k):
            if info.name == "shard-00002.h5":
                os.kill(os.getpid(), signal.SIGKILL)
            return real_add(root, info, **k)
        store.Manifest.add_shard = staticmethod(dying_add)
    with store.StoreWriter(sys.argv[2], R_GRID, shard_size=3) as w:
        for r in make_records(10):
            w.add(r)
    """
)


def _run_child(tmp_path, mode: str, root) -> int:
    import pathlib

    script = tmp_path / "child.py"
    script.write_text(_CHILD.format(test_dir=str(pathlib.Path(__file__).parent)))
    return subprocess.run([sys.executable, str(script), mode, str(root)], timeout=120).returncode


@pytest.mark.parametrize("mode, adopted", [("mid-shard", 0), ("before-manifest", 1)])
def test_killed_writer_leaves_store_readable_and_rerun_completes(tmp_path, mode, adopted):
    root = tmp_path / "store"
    assert _run_child(tmp_path, mode, root) == -9  # really SIGKILLed
    reader = StoreReader(root, verify=True)
    assert len(reader) == 6  # the two complete shards, nothing partial
    recs = make_records(10)
    for i in range(6):
        assert_same(reader[i], recs[i])
    if mode == "mid-shard":
        assert list(root.glob("*.tmp.*")), "the killed writer should have left its partial temp file"
    else:
        assert (root / "shard-00002.h5").is_file() and Manifest.load(root).shard("shard-00002.h5") is None
    assert _run_child(tmp_path, "clean", root) == 0  # rerun over the same records
    reader = StoreReader(root, verify=True)
    assert sorted(reader.ids()) == [r.meta["id"] for r in recs]  # complete, no duplicates
    by_id = {r.meta["id"]: r for r in recs}
    for got in reader:
        assert_same(got, by_id[got.meta["id"]])
    assert not list(root.glob("*.tmp.*"))


def test_recover_is_a_no_op_on_a_clean_store(tmp_path):
    with StoreWriter(tmp_path, R_GRID) as w:
        for r in make_records(3):
            w.add(r)
    assert recover(tmp_path) == ([], [])


# ---- concurrent shard writers (Ray generator tasks) ------------------------------------------------------
def _task(args):
    root, k = args
    recs = make_records(4, seed=k, prefix=f"t{k}-")
    if not Manifest.load_or_empty(root).has_shard(root, f"task-{k:03d}.h5"):
        write_shard(root, f"task-{k:03d}.h5", recs, R_GRID)


def test_concurrent_write_shard_keeps_every_shard(tmp_path):
    ctx = mp.get_context("fork")
    with ctx.Pool(4) as pool:
        pool.map(_task, [(tmp_path, k) for k in range(12)])
    m = Manifest.load(tmp_path)
    assert [s.name for s in m.shards] == [f"task-{k:03d}.h5" for k in range(12)]
    assert m.verify(tmp_path) == [] and len(StoreReader(tmp_path)) == 48


def test_reader_pickles_for_workers(tmp_path):
    import pickle

    recs = make_records(5)
    with StoreWriter(tmp_path, R_GRID, shard_size=2) as w:
        for r in recs:
            w.add(r)
    reader = StoreReader(tmp_path)
    assert_same(reader[3], recs[3])  # opens handles
    clone = pickle.loads(pickle.dumps(reader))
    for i, r in enumerate(recs):
        assert_same(clone[i], r)
