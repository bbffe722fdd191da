"""PyG dataset over a store and over a seed-oxides folder: the shared Data convention, sizes, groups."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch_geometric.data import Batch

from pdfusion.data.dataset import open_dataset, spread_indices
from pdfusion.data.seed import import_seed
from pdfusion.data.splits import group_split
from pdfusion.data.store import StoreReader, StoreRecord, StoreWriter
from pdfusion.structures.io import SeedRecord, read_seed_h5, write_seed_h5
from pdfusion.structures.particle import Particle

N_R = 150
METALS = {"Mg": 12, "Ti": 22, "Zn": 30, "Fe": 26}


def make_seed_folder(folder: Path) -> list[Path]:
    rng = np.random.default_rng(1)
    r = np.arange(N_R) * 0.02
    for t in ("NaCl", "Rutile", "Spinel"):
        for sym, z in METALS.items():
            k = int(rng.integers(5, 25))
            numbers = np.where(np.arange(k) % 2 == 0, z, 8)
            pos = rng.normal(size=(k, 3)) * 3 + 7.0  # off-centre on purpose
            na = np.column_stack([numbers, rng.random((k, 3)), pos])
            rec = SeedRecord(Particle(numbers, pos), na, r, rng.normal(size=N_R), np.zeros((2, 0), np.int64),
                             np.zeros(0), {})
            write_seed_h5(rec, folder / f"{t}_{sym}O.h5")  # fixed-135 style names: no radius
    return sorted(folder.glob("*.h5"))


@pytest.fixture(scope="module")
def seed_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("seed")
    make_seed_folder(folder)
    return folder


@pytest.fixture(scope="module")
def store_root(tmp_path_factory, seed_folder) -> Path:
    root = tmp_path_factory.mktemp("store")
    import_seed(seed_folder, root, shard_size=5, progress=False)
    return root


def check_item(d, src) -> None:
    """``d`` follows docs/ARCHITECTURE.md and carries exactly the data of seed record ``src``."""
    n = len(src.particle)
    assert d.num_nodes == n
    assert d.pos.dtype == torch.float32 and d.pos.shape == (n, 3)
    assert d.z.dtype == torch.int64 and d.x.dtype == torch.float32 and d.x.shape == (n, 7)
    assert d.y.dtype == torch.float32 and d.y.shape == (1, N_R)
    assert d.metal.dtype == torch.int64 and d.metal.shape == (1,)
    centred = src.particle.positions - src.particle.positions.mean(0)
    np.testing.assert_allclose(d.pos.numpy(), centred, atol=1e-5)
    assert d.pos.double().mean(0).abs().max() < 1e-5
    np.testing.assert_array_equal(d.z.numpy(), src.particle.numbers)
    np.testing.assert_array_equal(d.x.numpy(), src.node_attributes.astype(np.float32))
    np.testing.assert_array_equal(d.y.numpy()[0], src.pdf.astype(np.float32))
    assert int(d.metal) == src.particle.metal
    assert d.structure_type == src.meta["structure_type"] and d.formula == src.meta["formula"]
    assert d.source == src.meta["source"] and math.isnan(d.radius)


@pytest.mark.parametrize("kind", ["seed", "store", "store-lazy"])
def test_items_follow_the_convention(kind, seed_folder, store_root):
    if kind == "seed":
        ds = open_dataset(seed_folder)
    else:
        ds = open_dataset(store_root, preload_bytes=0 if kind == "store-lazy" else 1 << 30)
    files = sorted(seed_folder.glob("*.h5"))
    assert len(ds) == len(files) == 12
    np.testing.assert_array_equal(ds.r_grid, np.arange(N_R) * 0.02)
    for i, f in enumerate(files):
        check_item(ds[i], read_seed_h5(f))
    np.testing.assert_array_equal(ds.sizes(), [len(read_seed_h5(f).particle) for f in files])
    batch = Batch.from_data_list([ds[0], ds[1], ds[2]])
    assert batch.y.shape == (3, N_R) and batch.metal.shape == (3,) and len(batch.formula) == 3


def test_groups_and_split(store_root):
    ds = open_dataset(store_root)
    assert sorted(set(ds.groups("metal"))) == sorted(METALS)
    assert sorted(set(ds.groups("type"))) == ["NaCl", "Rutile", "Spinel"]
    tr, va = group_split(ds.groups("metal"), 0.25, seed=0)
    train, val = ds.subset(tr), ds.subset(va)
    assert len(train) + len(val) == len(ds)
    assert not set(train.groups("metal")) & set(val.groups("metal"))
    np.testing.assert_array_equal(val.sizes(), ds.sizes()[va])
    assert val[0].source == ds[int(va[0])].source


def test_max_structures_is_spread_and_deterministic(seed_folder, store_root):
    a = open_dataset(seed_folder, max_structures=4)
    b = open_dataset(store_root, max_structures=4)
    assert len(a) == len(b) == 4
    assert [a[i].source for i in range(4)] == [b[i].source for i in range(4)]
    assert len(set(a.groups("type"))) == 3  # spread, not the first four files
    np.testing.assert_array_equal(spread_indices(10, 4), [0, 3, 6, 9])
    np.testing.assert_array_equal(spread_indices(3, None), [0, 1, 2])


def test_store_records_with_radius_and_float32_pdf(tmp_path):
    rng = np.random.default_rng(0)
    r = np.arange(N_R) * 0.02
    with StoreWriter(tmp_path, r) as w:
        for i in range(3):
            pos = rng.normal(size=(6, 3))
            numbers = np.array([22, 8, 8, 22, 8, 8])
            w.add(StoreRecord(numbers, pos, np.column_stack([numbers, np.zeros((6, 3)), pos]),
                              rng.normal(size=N_R).astype(np.float32),
                              {"id": f"g{i}", "structure_type": "Rutile", "formula": "TiO2", "radius": 5.5,
                               "metal": "Ti"}))
    ds = open_dataset(tmp_path)
    d = ds[2]
    assert d.radius == 5.5 and int(d.metal) == 22 and d.source == "g2"
    np.testing.assert_array_equal(d.y.numpy()[0], StoreReader(tmp_path)[2].pdf)


def test_open_dataset_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a pdfusion store"):
        open_dataset(tmp_path / "missing")
    with pytest.raises(ValueError, match="no .h5 files"):
        open_dataset(tmp_path)


@pytest.mark.seed
def test_real_seed_folder_sample(seed_135_dir):
    ds = open_dataset(seed_135_dir, max_structures=16)
    assert len(ds) == 16 and set(ds.sizes().tolist()) == {135}
    d = ds[5]
    src = read_seed_h5(seed_135_dir / d.source)
    np.testing.assert_array_equal(d.y.numpy()[0], src.pdf.astype(np.float32))
    assert d.y.shape == (1, 3000) and float(d.y.max()) == pytest.approx(1.0)
