"""DenseBatch conversion and the size-bucketed, distributed, resumable batch sampler."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch_geometric.data import Data

from pdfusion.data.batching import BucketBatchSampler, DenseBatch, collate, padding_efficiency


def seed_like_sizes(n: int = 1536, seed: int = 0) -> np.ndarray:
    """Particle sizes like seed-oxides (23..511 atoms, median ~135, a few dozen distinct values): counts of
    atoms within a sphere, for radii 5-8 Å and several lattice densities."""
    rng = np.random.default_rng(seed)
    radius = rng.choice([5.0, 6.0, 7.0, 8.0], n)
    density = rng.choice([0.045, 0.06, 0.075, 0.09, 0.11, 0.13, 0.16, 0.2], n)  # atoms / Å^3
    return np.clip(np.round(4 / 3 * np.pi * radius ** 3 * density / 1.35), 23, 511).astype(int)


def make_data(n: int, n_r: int = 30, metal: int = 22, seed: int = 0) -> Data:
    g = torch.Generator().manual_seed(seed)
    z = torch.where(torch.arange(n) % 2 == 0, torch.tensor(metal), torch.tensor(8))
    return Data(pos=torch.randn(n, 3, generator=g), z=z, x=torch.randn(n, 7, generator=g),
                y=torch.randn(1, n_r, generator=g), metal=torch.tensor([metal]), num_nodes=n)


# ------------------------------------------------------------------------------------ dense batches
def test_collate_pads_and_keeps_every_field():
    items = [make_data(4, seed=0, metal=22), make_data(7, seed=1, metal=30), make_data(2, seed=2, metal=25)]
    b = collate(items)
    assert isinstance(b, DenseBatch)
    assert b.pos.shape == (3, 7, 3) and b.z.shape == (3, 7) and b.mask.shape == (3, 7)
    assert b.pdf.shape == (3, 30) and b.metal.tolist() == [22, 30, 25] and b.n_atoms.tolist() == [4, 7, 2]
    for i, d in enumerate(items):
        n = d.num_nodes
        assert torch.equal(b.pos[i, :n], d.pos) and torch.equal(b.z[i, :n], d.z)
        assert b.mask[i, :n].all() and not b.mask[i, n:].any()
        assert b.pos[i, n:].abs().sum() == 0 and b.z[i, n:].abs().sum() == 0
        assert torch.equal(b.pdf[i], d.y[0])
    moved = b.to("cpu")
    assert torch.equal(moved.pos, b.pos) and torch.equal(moved.pdf, b.pdf) and torch.equal(moved.mask, b.mask)


def test_collate_without_condition_gives_none():
    b = collate([Data(pos=torch.zeros(3, 3), z=torch.full((3,), 8)), Data(pos=torch.ones(5, 3), z=torch.full((5,), 8))])
    assert b.pdf is None and b.metal is None and b.n_atoms.tolist() == [3, 5]
    assert b.to("cpu").pdf is None


def test_dense_batch_shape_errors_name_the_field():
    with pytest.raises(ValueError, match="DenseBatch.pos"):
        DenseBatch(pos=torch.zeros(2, 3), z=torch.zeros(2, 3), mask=torch.zeros(2, 3, dtype=torch.bool), pdf=None,
                   metal=None, n_atoms=torch.zeros(2))
    with pytest.raises(ValueError, match="DenseBatch.metal"):
        DenseBatch(pos=torch.zeros(2, 3, 3), z=torch.zeros(2, 3), mask=torch.zeros(2, 3, dtype=torch.bool),
                   pdf=None, metal=torch.zeros(3), n_atoms=torch.zeros(2))
    with pytest.raises(ValueError, match="empty"):
        collate([])


def test_works_as_a_dataloader_collate_fn_with_the_bucket_sampler():
    sizes = [3, 9, 4, 8, 5, 7]
    data = [make_data(n, seed=i) for i, n in enumerate(sizes)]
    sampler = BucketBatchSampler(sizes, 2, seed=1, pool_batches=8)
    loader = torch.utils.data.DataLoader(data, batch_sampler=sampler, collate_fn=collate)
    seen = []
    for b in loader:
        seen += b.n_atoms.tolist()
        assert b.mask.sum().item() == sum(b.n_atoms.tolist())
    assert sorted(seen) == sorted(sizes)


# ------------------------------------------------------------------------------------ sampler
@pytest.mark.parametrize("n,bs,replicas,drop_last", [
    (100, 8, 1, False), (101, 8, 3, False), (37, 4, 4, False), (5, 8, 3, False), (101, 8, 3, True), (64, 16, 4, True),
])
def test_every_rank_gets_the_same_number_of_batches_and_all_indices_are_covered(n, bs, replicas, drop_last):
    sizes = np.random.default_rng(n).integers(10, 500, n)
    per_rank = []
    for rank in range(replicas):
        s = BucketBatchSampler(sizes, bs, seed=3, num_replicas=replicas, rank=rank, drop_last=drop_last)
        s.set_epoch(2)
        batches = list(s)
        assert len(batches) == len(s)
        per_rank.append(batches)
    assert len({len(b) for b in per_rank}) == 1, [len(b) for b in per_rank]
    flat = [i for batches in per_rank for b in batches for i in b]
    if drop_last:
        assert all(len(b) == bs for batches in per_rank for b in batches)
        assert len(set(flat)) == len(flat) and len(flat) == (n // bs // replicas) * replicas * bs
    else:
        assert set(flat) == set(range(n))  # every index appears (padding repeats some)


def test_deterministic_per_seed_and_epoch():
    sizes = seed_like_sizes(500)
    a = BucketBatchSampler(sizes, 16, seed=5)
    b = BucketBatchSampler(sizes, 16, seed=5)
    a.set_epoch(3)
    b.set_epoch(3)
    assert list(a) == list(b)
    e3 = list(a)
    a.set_epoch(4)
    assert list(a) != e3
    assert list(BucketBatchSampler(sizes, 16, seed=6)) != list(BucketBatchSampler(sizes, 16, seed=5))
    ordered = list(BucketBatchSampler(sizes, 16, shuffle=False))
    assert [i for b in ordered for i in b] == list(np.argsort(sizes, kind="stable"))


def test_padding_efficiency_on_seed_like_sizes():
    sizes = seed_like_sizes()
    assert 23 <= sizes.min() and sizes.max() <= 511 and 20 < len(np.unique(sizes)) < 100
    for bs in (8, 16, 32):
        bucketed = list(BucketBatchSampler(sizes, bs, seed=0))
        rng = np.random.default_rng(0)
        perm = rng.permutation(len(sizes))
        random = [perm[i:i + bs] for i in range(0, len(sizes), bs)]
        eff, eff_random = padding_efficiency(sizes, bucketed), padding_efficiency(sizes, random)
        assert eff >= 0.9, (bs, eff)
        assert eff > eff_random + 0.2


def test_padding_efficiency_helper_closed_form():
    assert padding_efficiency([2, 4, 4, 1], [[0, 1], [2, 3]]) == pytest.approx((2 + 4 + 4 + 1) / (4 * 2 + 4 * 2))
    assert padding_efficiency([5, 5], [[0, 1]]) == 1.0


@pytest.mark.seed
def test_padding_efficiency_on_real_seed_oxides_sizes(seed_h5_dir: Path):
    sizes = []
    for f in sorted(seed_h5_dir.glob("*.h5")):
        with h5py.File(f, "r") as h:
            sizes.append(h["node_attributes"].shape[0])
    assert len(sizes) == 1536
    for bs in (8, 16, 32):
        assert padding_efficiency(sizes, list(BucketBatchSampler(sizes, bs, seed=0))) >= 0.9


@pytest.mark.parametrize("replicas,rank", [(1, 0), (3, 1)])
def test_state_dict_resume_yields_exactly_the_remaining_batches(replicas, rank):
    sizes = seed_like_sizes(300)
    s = BucketBatchSampler(sizes, 8, seed=9, num_replicas=replicas, rank=rank)
    s.set_epoch(1)
    full = list(s)
    it = iter(s)
    first = [next(it) for _ in range(5)]
    state = s.state_dict()
    assert state["epoch"] == 1 and state["position"] == 5 and first == full[:5]
    fresh = BucketBatchSampler(sizes, 8, seed=9, num_replicas=replicas, rank=rank)
    fresh.load_state_dict(state)
    assert list(fresh) == full[5:]
    fresh.set_epoch(2)  # after the resumed epoch, the next epoch starts from its beginning
    assert len(list(fresh)) == len(fresh)
    # `consumed` overrides the counter (DataLoader workers prefetch ahead)
    assert s.state_dict(consumed=3)["position"] == 3
    with pytest.raises(ValueError, match="seed"):
        BucketBatchSampler(sizes, 8, seed=10, num_replicas=replicas, rank=rank).load_state_dict(state)
    with pytest.raises(ValueError, match="batches per epoch"):
        BucketBatchSampler(sizes, 4, seed=9, num_replicas=replicas, rank=rank).load_state_dict(state)


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="batch_size"):
        BucketBatchSampler([3, 4], 0)
    with pytest.raises(ValueError, match="rank"):
        BucketBatchSampler([3, 4], 1, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="empty"):
        BucketBatchSampler([], 2)
    with pytest.raises(ValueError, match="fewer batches"):
        BucketBatchSampler([3, 4, 5], 2, num_replicas=4, drop_last=True)
