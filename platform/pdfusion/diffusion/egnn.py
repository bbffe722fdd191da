"""Masked E(3)-equivariant graph network (Satorras et al. 2021; EDM's EquivariantBlock / GCL /
EquivariantUpdate), on a sparse edge list built from the dense mask.

Why sparse: only real atoms are gathered (`x[mask]`), so padding never enters an edge, a sum or a
normalisation, and the output for real atoms does not depend on how much padding a batch carries.
Numerics that the 2023 attempt lacked: coordinate updates bounded by `tanh(·) × coords_range`, coordinate
differences divided by (√(d² + eps) + norm_constant) so no division can hit zero, sum aggregation divided by a
constant `normalization_factor` (or a mean over the real neighbour count, clamped ≥ 1), and a finite check
after every layer (NonFiniteError names the layer). As in EDM, `coords_range` is the total over the stack:
each layer's update is bounded by coords_range / layers per edge, so with sum aggregation one atom moves at
most coords_range · (neighbours / normalization_factor) in all. Small systems (the 8-atom cube) therefore
need `aggregation="mean"` or a small `normalization_factor`, or the network cannot output ε of unit size.

Cost: a fully connected graph of the largest seed-oxides particles has several times the edges, time and memory
of a 6 Å cutoff graph (measured: docs/training.md, "Options"). So: train large particles with a cutoff
(and `grad_checkpoint` when memory binds); fully connected 16 × 511 training does not fit a 24 GiB CPU machine
(on an 80 GiB GPU it does, barely).
"""

from __future__ import annotations

import math

import torch
import torch.utils.checkpoint
from torch import nn

from pdfusion.diffusion.guards import check_finite

__all__ = ["EGNN", "EquivariantBlock", "build_edges", "dense_to_sparse_nodes", "sinusoidal_distance"]


def dense_to_sparse_nodes(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(flat indices of real nodes into B·Nmax, graph id of each real node)."""
    flat = mask.reshape(-1).nonzero(as_tuple=True)[0]
    graph = flat // mask.shape[1]
    return flat, graph


@torch.no_grad()
def build_edges(x: torch.Tensor, mask: torch.Tensor, cutoff: float | None = None,
                chunk: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Directed edges (row=receiver i, col=sender j), i ≠ j, both real, same particle; with `cutoff`
    only pairs with ‖x_i − x_j‖ < cutoff. Indices are into the sparse (real-node) ordering of `x[mask]`.
    Built in plain torch (pyg-lib is unavailable), `chunk` particles at a time to bound memory."""
    b, n = mask.shape
    sparse_id = torch.cumsum(mask.reshape(-1).long(), 0) - 1
    eye = torch.eye(n, dtype=torch.bool, device=mask.device)
    rows, cols = [], []
    for s in range(0, b, chunk):
        m = mask[s:s + chunk]
        adj = m[:, :, None] & m[:, None, :] & ~eye
        if cutoff is not None:
            xs = x[s:s + chunk].detach()
            d2 = (xs[:, :, None, :] - xs[:, None, :, :]).pow(2).sum(-1)
            adj &= d2 < cutoff * cutoff
        gb, i, j = adj.nonzero(as_tuple=True)
        base = (gb + s) * n
        rows.append(sparse_id[base + i])
        cols.append(sparse_id[base + j])
    return torch.cat(rows), torch.cat(cols)


def sinusoidal_distance(d: torch.Tensor, n_freq: int = 6, max_res: float = 15.0, min_res: float = 0.15) -> torch.Tensor:
    """EDM's SinusoidsEmbeddingNew: sin/cos of the distance at geometric frequencies; (E, 2·n_freq)."""
    freqs = 2 * math.pi * torch.logspace(math.log10(1.0 / max_res), math.log10(1.0 / min_res), n_freq,
                                         device=d.device, dtype=d.dtype)
    arg = d[:, None] * freqs[None, :]
    return torch.cat([torch.sin(arg), torch.cos(arg)], dim=-1)


def _aggregate(src: torch.Tensor, index: torch.Tensor, n_nodes: int, aggregation: str, factor: float,
               degree: torch.Tensor) -> torch.Tensor:
    out = torch.zeros(n_nodes, src.shape[-1], dtype=src.dtype, device=src.device)
    out.index_add_(0, index, src)
    if aggregation == "sum":
        return out / factor
    return out / degree.clamp(min=1.0)[:, None]


class PairLinear(nn.Module):
    """Linear(cat[h_i, h_j, e_ij]) without materialising the (E, 2H + D) concatenation: project the nodes
    first (N ≪ E) and gather, which cuts the edge-sized activations kept for backward."""

    def __init__(self, hidden: int, edge_dim: int, out: int) -> None:
        super().__init__()
        self.node = nn.Linear(hidden, 2 * out)
        self.edge = nn.Linear(edge_dim, out, bias=False)
        self.out = out

    def forward(self, h: torch.Tensor, row: torch.Tensor, col: torch.Tensor, ea: torch.Tensor) -> torch.Tensor:
        p = self.node(h)
        return p[row, : self.out] + p[col, self.out:] + self.edge(ea)


class EquivariantBlock(nn.Module):
    """One GCL (invariant message passing with sigmoid edge gates) + one equivariant coordinate update."""

    def __init__(self, hidden: int, edge_dim: int, *, attention: bool = True, tanh: bool = True,
                 coords_range: float = 15.0, norm_constant: float = 1.0, aggregation: str = "sum",
                 normalization_factor: float = 100.0, eps: float = 1e-8) -> None:
        super().__init__()
        act = nn.SiLU()
        self.edge_in = PairLinear(hidden, edge_dim, hidden)
        self.edge_mlp = nn.Sequential(act, nn.Linear(hidden, hidden), act)
        self.att_mlp = nn.Sequential(nn.Linear(hidden, 1), nn.Sigmoid()) if attention else None
        self.node_mlp = nn.Sequential(nn.Linear(2 * hidden, hidden), act, nn.Linear(hidden, hidden))
        last = nn.Linear(hidden, 1, bias=False)
        nn.init.xavier_uniform_(last.weight, gain=0.001)  # EDM: start with tiny coordinate updates
        self.coord_in = PairLinear(hidden, edge_dim, hidden)
        self.coord_mlp = nn.Sequential(act, nn.Linear(hidden, hidden), act, last)
        self.tanh, self.coords_range, self.norm_constant = tanh, coords_range, norm_constant
        self.aggregation, self.normalization_factor, self.eps = aggregation, normalization_factor, eps

    def forward(self, h: torch.Tensor, x: torch.Tensor, row: torch.Tensor, col: torch.Tensor,
                edge_attr: torch.Tensor, degree: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = h.shape[0]
        diff = x[row] - x[col]
        d2 = diff.pow(2).sum(-1, keepdim=True)
        ea = torch.cat([d2, edge_attr], dim=-1)
        # invariant message passing
        m = self.edge_mlp(self.edge_in(h, row, col, ea))
        if self.att_mlp is not None:
            m = m * self.att_mlp(m)
        agg = _aggregate(m, row, n, self.aggregation, self.normalization_factor, degree)
        h = h + self.node_mlp(torch.cat([h, agg], dim=-1))
        # equivariant coordinate update, bounded and division-safe
        dist = torch.sqrt(d2 + self.eps)
        unit = diff / (dist + self.norm_constant)
        phi = self.coord_mlp(self.coord_in(h, row, col, ea))
        if self.tanh:
            phi = torch.tanh(phi) * self.coords_range
        x = x + _aggregate(unit * phi, row, n, self.aggregation, self.normalization_factor, degree)
        return h, x


class EGNN(nn.Module):
    """Stack of EquivariantBlocks on dense, masked input.

    forward(x (B,N,3), h (B,N,F_in), mask (B,N)) → (x_out (B,N,3), h_out (B,N,F_out)), zeros on padding.
    Edges: fully connected within each particle (`cutoff=None`) or a radius graph built from the input x."""

    def __init__(self, in_features: int, out_features: int, hidden: int = 64, layers: int = 4, *,
                 attention: bool = True, tanh: bool = True, coords_range: float = 15.0, norm_constant: float = 1.0,
                 aggregation: str = "sum", normalization_factor: float = 100.0, cutoff: float | None = None,
                 n_dist_freq: int = 6, checkpoint: bool = False, extra_edge_dim: int = 0) -> None:
        super().__init__()
        self.checkpoint = checkpoint  # recompute each block in backward: edge activations of one block at a time
        if aggregation not in ("sum", "mean"):
            raise ValueError(f"aggregation: must be 'sum' or 'mean', got {aggregation!r}")
        self.cutoff, self.n_dist_freq = cutoff, n_dist_freq
        # d²(current) is added inside each block; + sin/cos of initial distance; + the caller's edge features
        edge_dim = 1 + 2 * n_dist_freq + extra_edge_dim
        self.extra_edge_dim = extra_edge_dim
        self.embed = nn.Linear(in_features, hidden)
        self.blocks = nn.ModuleList(EquivariantBlock(
            hidden, edge_dim, attention=attention, tanh=tanh, coords_range=coords_range / layers,
            norm_constant=norm_constant, aggregation=aggregation, normalization_factor=normalization_factor)
            for _ in range(layers))
        self.out = nn.Linear(hidden, out_features)

    def forward(self, x: torch.Tensor, h: torch.Tensor, mask: torch.Tensor,
                edge_features=None) -> tuple[torch.Tensor, torch.Tensor]:
        """`edge_features(d0 (E,), graph (E,), row (E,), col (E,)) → (E, extra_edge_dim)`: invariant features of
        each edge from its input distance, particle index and end nodes (sparse indices), e.g.
        diffusion.edge_pdf.EdgePDF.features."""
        b, n, _ = x.shape
        flat, graph = dense_to_sparse_nodes(mask)
        xs = x.reshape(b * n, 3)[flat]
        hs = self.embed(h.reshape(b * n, -1)[flat])
        row, col = build_edges(x, mask, self.cutoff)
        degree = torch.zeros(xs.shape[0], dtype=xs.dtype, device=xs.device)
        degree.index_add_(0, row, torch.ones_like(row, dtype=xs.dtype))
        d0 = torch.sqrt((xs[row] - xs[col]).pow(2).sum(-1) + 1e-8)
        edge_attr = sinusoidal_distance(d0, self.n_dist_freq) if self.n_dist_freq else d0.new_zeros(d0.shape[0], 0)
        if self.extra_edge_dim:
            if edge_features is None:
                raise ValueError(f"edge_features: this EGNN was built with extra_edge_dim={self.extra_edge_dim}; "
                                 "pass the callable that computes them")
            edge_attr = torch.cat([edge_attr, edge_features(d0, graph[row], row, col)], dim=-1)
        for i, block in enumerate(self.blocks):
            if self.checkpoint and torch.is_grad_enabled():
                hs, xs = torch.utils.checkpoint.checkpoint(block, hs, xs, row, col, edge_attr, degree,
                                                           use_reentrant=False)
            else:
                hs, xs = block(hs, xs, row, col, edge_attr, degree)
            check_finite(f"egnn.layer{i}.h", hs)
            check_finite(f"egnn.layer{i}.x", xs)
        hs = self.out(hs)
        # (casts: under CUDA autocast the MLP outputs are bf16 while x/h stay float32)
        x_out = x.new_zeros(b * n, 3).index_copy(0, flat, xs.to(x.dtype)).reshape(b, n, 3)
        h_out = h.new_zeros(b * n, hs.shape[-1]).index_copy(0, flat, hs.to(h.dtype)).reshape(b, n, -1)
        return x_out, h_out
