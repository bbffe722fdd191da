"""From PyG graphs to padded dense tensors, and a size-bucketed batch sampler.

Particles range from 23 to 511 atoms; batching random neighbours wastes most of every padded tensor.
`BucketBatchSampler` sorts by size inside large random pools and batches neighbours (padding efficiency ≥ 0.9
on seed-oxides sizes), shuffles batch order, is deterministic per (seed, epoch), gives every distributed
rank exactly the same number of batches (unequal step counts hang DDP) and resumes mid-epoch exactly.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
from torch_geometric.data import Batch, Data
from torch_geometric.utils import to_dense_batch

__all__ = ["DenseBatch", "to_dense", "collate", "BucketBatchSampler", "padding_efficiency"]


@dataclass
class DenseBatch:
    """Padded batch. `pos` (B,Nmax,3) Å, `z` (B,Nmax) atomic numbers (0 on padding), `mask` (B,Nmax) bool,
    `pdf` (B,n_r) G(r) or None (unconditional toy data), `metal` (B,) metal Z or None, `n_atoms` (B,)."""

    pos: torch.Tensor
    z: torch.Tensor
    mask: torch.Tensor
    pdf: torch.Tensor | None
    metal: torch.Tensor | None
    n_atoms: torch.Tensor

    def __post_init__(self) -> None:
        if self.pos.dim() != 3 or self.pos.shape[-1] != 3:
            raise ValueError(f"DenseBatch.pos: expected (B, Nmax, 3), got {tuple(self.pos.shape)}")
        b, n = self.pos.shape[:2]
        if tuple(self.mask.shape) != (b, n) or tuple(self.z.shape) != (b, n):
            raise ValueError(f"DenseBatch.mask/z: expected ({b}, {n}), got {tuple(self.mask.shape)} / "
                             f"{tuple(self.z.shape)}")
        if self.pdf is not None and (self.pdf.dim() != 2 or self.pdf.shape[0] != b):
            raise ValueError(f"DenseBatch.pdf: expected ({b}, n_r), got {tuple(self.pdf.shape)}")
        if self.metal is not None and tuple(self.metal.shape) != (b,):
            raise ValueError(f"DenseBatch.metal: expected ({b},), got {tuple(self.metal.shape)}")

    def __len__(self) -> int:
        return int(self.pos.shape[0])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> DenseBatch:
        return DenseBatch(**{f.name: (None if (v := getattr(self, f.name)) is None
                                      else v.to(device, non_blocking=non_blocking)) for f in fields(self)})

    def pin_memory(self) -> DenseBatch:
        return DenseBatch(**{f.name: (None if (v := getattr(self, f.name)) is None else v.pin_memory())
                             for f in fields(self)})


def to_dense(batch: Batch, max_num_nodes: int | None = None) -> DenseBatch:
    """A PyG Batch (fields per docs/ARCHITECTURE.md: pos, z, y (1,n_r), metal (1,)) → DenseBatch.
    `y` and `metal` are optional (toy data without a condition)."""
    if getattr(batch, "pos", None) is None:
        raise ValueError("to_dense: batch has no `pos`; every Data needs pos (N, 3)")
    index = batch.batch if getattr(batch, "batch", None) is not None else torch.zeros(
        batch.pos.shape[0], dtype=torch.long)
    b = int(batch.num_graphs) if hasattr(batch, "num_graphs") else int(index.max()) + 1
    pos, mask = to_dense_batch(batch.pos.float(), index, max_num_nodes=max_num_nodes, batch_size=b)
    z_src = getattr(batch, "z", None)
    if z_src is None:
        z_src = torch.zeros(batch.pos.shape[0], dtype=torch.long)
    z, _ = to_dense_batch(z_src.long(), index, fill_value=0, max_num_nodes=max_num_nodes, batch_size=b)
    pdf = getattr(batch, "y", None)
    if pdf is not None:
        pdf = pdf.float().reshape(b, -1)
    metal = getattr(batch, "metal", None)
    if metal is not None:
        metal = metal.long().reshape(b)
    return DenseBatch(pos=pos, z=z, mask=mask, pdf=pdf, metal=metal, n_atoms=mask.sum(1).long())


def collate(data_list: Sequence[Data]) -> DenseBatch:
    """list[Data] → DenseBatch; usable as a DataLoader `collate_fn`."""
    if len(data_list) == 0:
        raise ValueError("collate: empty list of structures")
    return to_dense(Batch.from_data_list(list(data_list)))


def padding_efficiency(sizes: Sequence[int], batches: Sequence[Sequence[int]]) -> float:
    """Real atoms / padded slots (B · Nmax summed over batches); 1.0 = no padding."""
    sizes = np.asarray(sizes)
    real = padded = 0
    for b in batches:
        s = sizes[np.asarray(b, dtype=np.int64)]
        real += int(s.sum())
        padded += int(s.max()) * len(s)
    return real / padded if padded else 1.0


class BucketBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Size-bucketed batches of indices, deterministic per (seed, epoch), equal count on every rank.

    Each epoch: permute indices (seeded by (seed, epoch)), cut into pools of `pool_batches · batch_size`,
    sort each pool by size, cut into batches, shuffle the batch order. Distributed: the batch list is padded
    by repeating its first batches (as DistributedSampler pads indices) to a multiple of `num_replicas`
    (or truncated when `drop_last`), and rank r takes batches r, r + R, ... Call `set_epoch(e)` before
    each epoch. `state_dict()` records the epoch and the position in it; after `load_state_dict` the next
    iteration yields exactly the remaining batches.
    """

    def __init__(self, sizes: Sequence[int], batch_size: int, *, shuffle: bool = True, seed: int = 0,
                 num_replicas: int = 1, rank: int = 0, drop_last: bool = False, pool_batches: int = 64) -> None:
        self.sizes = np.asarray(sizes, dtype=np.int64).reshape(-1)
        if self.sizes.size == 0:
            raise ValueError("BucketBatchSampler.sizes: empty; need at least one structure")
        if batch_size < 1:
            raise ValueError(f"BucketBatchSampler.batch_size: must be >= 1, got {batch_size}")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"BucketBatchSampler.rank: need 0 <= rank < num_replicas, got rank={rank}, "
                             f"num_replicas={num_replicas}")
        if pool_batches < 1:
            raise ValueError(f"BucketBatchSampler.pool_batches: must be >= 1, got {pool_batches}")
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.drop_last = bool(drop_last)
        self.pool_batches = int(pool_batches)
        self.epoch = 0
        self._start = 0  # batches of this epoch already consumed (set by load_state_dict)
        self._pos = 0  # batches handed out so far in the current iteration
        if self.drop_last and self._n_global_batches() < self.num_replicas:
            raise ValueError(f"BucketBatchSampler: {self.sizes.size} structures make fewer batches of "
                             f"{batch_size} than the {num_replicas} ranks; lower batch_size or set drop_last=False")

    # ------------------------------------------------------------------------------------------
    def _n_global_batches(self) -> int:
        n = self.sizes.size
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def global_batches(self, epoch: int | None = None) -> list[list[int]]:
        """All batches of one epoch, before the split across ranks."""
        epoch = self.epoch if epoch is None else epoch
        n = self.sizes.size
        rng = np.random.default_rng([self.seed, epoch])
        if self.shuffle:
            order = rng.permutation(n)
            pool = self.pool_batches * self.batch_size
            pools = [order[i:i + pool] for i in range(0, n, pool)]
        else:
            pools = [np.arange(n)]
        batches: list[list[int]] = []
        for p in pools:
            p = p[np.argsort(self.sizes[p], kind="stable")]
            batches += [p[i:i + self.batch_size].tolist() for i in range(0, len(p), self.batch_size)]
        # Only the last pool can leave a short batch (pools are whole multiples of batch_size).
        if self.drop_last:
            batches = [b for b in batches if len(b) == self.batch_size]
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def rank_batches(self, epoch: int | None = None) -> list[list[int]]:
        """This rank's batches for one epoch; the same count on every rank."""
        batches = self.global_batches(epoch)
        r = self.num_replicas
        if self.drop_last:
            per_rank = len(batches) // r
            batches = batches[:per_rank * r]
        else:
            per_rank = -(-len(batches) // r)
            total = per_rank * r
            while len(batches) < total:  # repeat from the start, as DistributedSampler does
                batches = batches + batches[:total - len(batches)]
        return batches[self.rank::r]

    def __len__(self) -> int:
        g = self._n_global_batches()
        return g // self.num_replicas if self.drop_last else -(-g // self.num_replicas)

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.rank_batches()
        start, self._start = self._start, 0
        self._pos = start
        for b in batches[start:]:
            self._pos += 1
            yield b

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self._start = 0
        self._pos = 0

    def state_dict(self, consumed: int | None = None) -> dict[str, Any]:
        """Epoch and position. `consumed` overrides the position when a DataLoader with workers has
        prefetched ahead of what the training loop actually used."""
        return {"epoch": self.epoch, "position": int(self._pos if consumed is None else consumed),
                "seed": self.seed, "num_batches": len(self), "num_replicas": self.num_replicas, "rank": self.rank}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state.get("seed", self.seed)) != self.seed:
            raise ValueError(f"BucketBatchSampler.load_state_dict: state has seed {state['seed']}, sampler has "
                             f"{self.seed}; build the sampler with the checkpoint's seed")
        if int(state.get("num_batches", len(self))) != len(self):
            raise ValueError(f"BucketBatchSampler.load_state_dict: state is for {state['num_batches']} batches per "
                             f"epoch, sampler makes {len(self)}; use the same data, batch_size and ranks")
        self.epoch = int(state["epoch"])
        self._start = self._pos = int(state["position"])
