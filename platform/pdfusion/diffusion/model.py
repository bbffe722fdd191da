"""The denoiser: PDF encoder + metal embedding → condition, time embedding, EGNN, atom-count head.

The condition (PDF ⊕ metal) is one vector per particle that joins every node's features. Classifier-free
guidance needs an unconditional branch, so a **learned null embedding** replaces the condition wherever
`cond_mask` is False (training drops it with probability p_uncond; sampling runs both halves).
Inputs are diffusion-space tensors: positions already divided by `position_scale`, one-hot types already
scaled by `type_scale` (see GaussianDiffusion). The radius cutoff is given in Å and converted here.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from pdfusion.config import ModelConfig, from_dict
from pdfusion.diffusion.edge_pdf import EdgePDF, angstrom_scale
from pdfusion.diffusion.egnn import EGNN, dense_to_sparse_nodes, sinusoidal_distance
from pdfusion.diffusion.geometry import remove_mean
from pdfusion.diffusion.guards import check_finite
from pdfusion.diffusion.pdf_gradient import pdf_gradient
from pdfusion.structures.particle import OXYGEN

__all__ = ["PDFusionDenoiser", "PDFEncoder", "remove_mean", "timestep_embedding"]


FRAME_FREQS = (0.5, 1.0, 2.0)  # cycles per model unit (3.5 Å): coarse position down to ~lattice spacing
FRAME_FEATURES = 3 + 6 * len(FRAME_FREQS)


def frame_features(x: torch.Tensor) -> torch.Tensor:
    """(B,N,3) absolute coordinates (model units) → (B,N,FRAME_FEATURES): x and sin/cos(2π f x)."""
    f = torch.tensor(FRAME_FREQS, device=x.device, dtype=x.dtype)
    arg = 2 * math.pi * x[..., None] * f  # (B,N,3,F)
    return torch.cat([x, torch.sin(arg).flatten(-2), torch.cos(arg).flatten(-2)], dim=-1)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of t ∈ [0, 1] (scaled by 1000 as in DDPM), (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    arg = (t.float() * 1000.0)[:, None] * freqs[None, :]
    emb = torch.cat([torch.cos(arg), torch.sin(arg)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class PDFEncoder(nn.Module):
    """G(r) (B, n_r) → (B, embed). `mlp`: the 2023 report's n_r → 512 → embed; `conv`: strided 1-D convs."""

    def __init__(self, n_points: int, embed: int, kind: str = "mlp") -> None:
        super().__init__()
        self.n_points, self.kind = n_points, kind
        if kind == "mlp":
            self.net = nn.Sequential(nn.Linear(n_points, 512), nn.GELU(), nn.Linear(512, embed), nn.GELU())
        elif kind == "conv":
            self.net = nn.Sequential(
                nn.Conv1d(1, 16, 9, stride=4, padding=4), nn.GELU(),
                nn.Conv1d(16, 32, 9, stride=4, padding=4), nn.GELU(),
                nn.Conv1d(32, 64, 9, stride=4, padding=4), nn.GELU(),
                nn.AdaptiveAvgPool1d(8), nn.Flatten(), nn.Linear(64 * 8, embed), nn.GELU())
        else:
            raise ValueError(f"model.pdf_encoder: must be 'mlp' or 'conv', got {kind!r}")

    def forward(self, pdf: torch.Tensor) -> torch.Tensor:
        if pdf.dim() != 2 or pdf.shape[-1] != self.n_points:
            raise ValueError(f"pdf: expected (B, {self.n_points}) points (model.pdf_points), got {tuple(pdf.shape)}; "
                             "interpolate the G(r) onto the model's r grid")
        return self.net(pdf.unsqueeze(1) if self.kind == "conv" else pdf)


class PDFusionDenoiser(nn.Module):
    """ε-prediction network. forward(x, h, mask, t, pdf, metal, cond_mask) → (eps_x (B,N,3), eps_h (B,N,n_types)).

    t: (B,) float in [0, 1]; cond_mask: (B,) bool, True = use the condition, False = null embedding.
    `pdf`/`metal` may be None for unconditional models (every row then uses the null embedding)."""

    def __init__(self, cfg: ModelConfig | dict | None = None, alphas_cumprod: torch.Tensor | None = None) -> None:
        """`alphas_cumprod` (T + 1,): the noise schedule's ᾱ_t, needed by `model.edge_pdf="noise_aware"` to turn
        t into the spread of pair distances (a derived, non-persistent buffer: checkpoints do not carry it)."""
        super().__init__()
        cfg = ModelConfig() if cfg is None else (from_dict(ModelConfig, cfg) if isinstance(cfg, dict) else cfg)
        self.cfg = cfg
        if (cfg.edge_pdf == "noise_aware" or cfg.pdf_gradient) and alphas_cumprod is None:
            raise ValueError("model.edge_pdf='noise_aware' and model.pdf_gradient read the target at each noise "
                             "level's spread: build the denoiser with the schedule, "
                             "PDFusionDenoiser(cfg, build_schedule(...).alphas_cumprod)")
        self.register_buffer("abar", None if alphas_cumprod is None else alphas_cumprod.detach().float().clone(),
                             persistent=False)
        e = cfg.pdf_embed
        self.pdf_encoder = PDFEncoder(cfg.pdf_points, e, cfg.pdf_encoder)
        self.metal_embedding = nn.Embedding(cfg.n_metals, e)
        self.cond_mlp = nn.Sequential(nn.Linear(2 * e, e), nn.SiLU(), nn.Linear(e, e))
        self.null_embedding = nn.Parameter(torch.randn(e) * 0.02)
        self.time_dim = 32
        self.time_mlp = nn.Sequential(nn.Linear(self.time_dim, e), nn.SiLU(), nn.Linear(e, e))
        cutoff = None if cfg.cutoff is None else cfg.cutoff / cfg.position_scale
        frame_in = ((FRAME_FEATURES if cfg.frame_features else 0) + (1 if cfg.pdf_gradient else 0)
                    + (cfg.n_types + 2 if cfg.self_condition else 0))
        frame_out = (3 if cfg.frame_features else 0) + (1 if cfg.pdf_gradient else 0) + (1 if cfg.self_condition else 0)
        extra_edge = ((EdgePDF.dim() if cfg.edge_pdf != "off" else 0)
                      + (self_condition_edge_dim(cfg) if cfg.self_condition else 0))
        self.egnn = EGNN(cfg.n_types + 1 + e + frame_in, cfg.n_types + frame_out, hidden=cfg.hidden, layers=cfg.layers,
                         attention=cfg.attention, tanh=cfg.tanh, coords_range=cfg.coords_range,
                         norm_constant=cfg.norm_constant, aggregation=cfg.aggregation,
                         normalization_factor=cfg.normalization_factor, cutoff=cutoff,
                         checkpoint=cfg.grad_checkpoint,
                         extra_edge_dim=extra_edge)
        if frame_out:  # the extra displacement heads start near zero (EDM-style tiny updates)
            with torch.no_grad():
                self.egnn.out.weight[cfg.n_types:].mul_(1e-3)
                self.egnn.out.bias[cfg.n_types:].zero_()
        self.count_head = nn.Sequential(nn.Linear(e, 2 * e), nn.SiLU(), nn.Linear(2 * e, cfg.max_atoms))

    # ------------------------------------------------------------------------------------------
    def condition(self, pdf: torch.Tensor | None, metal: torch.Tensor | None, cond_mask: torch.Tensor | None,
                  batch_size: int, *, need_encoding: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """((B, pdf_embed) condition: encoded (PDF, metal) where cond_mask, the learned null embedding
        elsewhere; the raw encoding (B, pdf_embed) when computed, else None)."""
        null = self.null_embedding.unsqueeze(0).expand(batch_size, -1)
        if cond_mask is None:
            cond_mask = torch.full((batch_size,), pdf is not None, dtype=torch.bool, device=null.device)
        if not bool(cond_mask.any()) and not need_encoding:
            return null, None
        if pdf is None or metal is None:
            raise ValueError("cond_mask: the condition is needed but pdf/metal is None; pass both "
                             "or set cond_mask to all False (unconditional)")
        c = self.encode_condition(pdf, metal)
        return torch.where(cond_mask.to(c.device)[:, None], c, null), c

    def encode_condition(self, pdf: torch.Tensor, metal: torch.Tensor) -> torch.Tensor:
        check_finite("pdf", pdf)
        metal = metal.long().reshape(-1)
        if metal.numel() and (int(metal.min()) < 0 or int(metal.max()) >= self.cfg.n_metals):
            raise ValueError(f"metal: atomic numbers must be in 0..{self.cfg.n_metals - 1} (model.n_metals), "
                             f"got {metal.tolist()}")
        return self.cond_mlp(torch.cat([self.pdf_encoder(pdf.float()), self.metal_embedding(metal)], dim=-1))

    def forward(self, x: torch.Tensor, h: torch.Tensor, mask: torch.Tensor, t: torch.Tensor,
                pdf: torch.Tensor | None = None, metal: torch.Tensor | None = None,
                cond_mask: torch.Tensor | None = None, return_count: bool = False,
                self_cond: tuple[torch.Tensor, torch.Tensor] | None = None):
        """Returns (eps_x, eps_h), or (eps_x, eps_h, count_logits) with `return_count` (one forward, so DDP
        sees every parameter used; the count head always sees the real condition, never the null one).
        `self_cond`: a previous estimate (x̂0, ĥ0) in diffusion space, for `model.self_condition` (None: none yet)."""
        b, n, _ = x.shape
        if h.shape[:2] != (b, n) or h.shape[-1] != self.cfg.n_types or mask.shape != (b, n):
            raise ValueError(f"h/mask: expected ({b}, {n}, {self.cfg.n_types}) and ({b}, {n}), "
                             f"got {tuple(h.shape)} and {tuple(mask.shape)}")
        mask = mask.bool()
        check_finite("x", x)
        check_finite("h", h)
        t = t.to(x.dtype).reshape(-1).expand(b) if t.numel() == 1 else t.to(x.dtype).reshape(b)
        cond, enc = self.condition(pdf, metal, cond_mask, b, need_encoding=return_count)
        cond = cond + self.time_mlp(timestep_embedding(t, self.time_dim))
        parts = [h, t[:, None, None].expand(b, n, 1), cond[:, None, :].expand(b, n, -1)]
        if self.cfg.frame_features:
            parts.append(frame_features(x))
        edge_fn, descent, reader, clean_reader = None, None, None, None
        if self.cfg.self_condition:
            x_hat, h_hat, has = _self_cond_inputs(x, h, mask, self_cond)
            parts += [h_hat, has[:, None, None].expand(b, n, 1), (x_hat - x).norm(dim=-1, keepdim=True)]
        elif self_cond is not None:
            raise ValueError("self_cond: this model was built without model.self_condition; pass self_cond=None")
        if self.cfg.edge_pdf != "off" or self.cfg.pdf_gradient:
            keep = torch.zeros(b, dtype=torch.bool, device=x.device) if cond_mask is None or pdf is None else cond_mask
            keep = keep.to(x.device)
            curves = pdf if pdf is not None else x.new_zeros(b, self.cfg.pdf_points)
            abar = (None if self.abar is None
                    else self.abar.to(x.device)[(t.float() * (self.abar.numel() - 1)).round().long()])
            scale = angstrom_scale(self.cfg, curves)  # once for both readers (a first-peak search per row)
            if self.cfg.edge_pdf != "off":
                noise = (abar.sqrt(), (1 - abar).sqrt()) if self.cfg.edge_pdf == "noise_aware" else None
                reader = EdgePDF(self.cfg, curves, keep, noise, scale)
                clean_reader = reader if noise is None else EdgePDF(self.cfg, curves, keep, None, scale)
                edge_fn = reader.features
            if self.cfg.pdf_gradient:
                if bool(keep.any()):  # rows without the condition get zeros (and any valid Z to simulate with)
                    metal_z = torch.where(keep, metal.long().reshape(-1).to(x.device), OXYGEN)
                    descent, size = pdf_gradient(self.cfg, x, h, mask, curves, metal_z, keep, abar, scale)
                else:
                    descent, size = torch.zeros_like(x), x.new_zeros(b, n, 1)
                parts.append(size)
        if self.cfg.self_condition:
            edge_fn = _self_cond_edges(x_hat, mask, reader, clean_reader)
        x_out, h_out = self.egnn(x, torch.cat(parts, dim=-1), mask, edge_features=edge_fn)
        m = mask.unsqueeze(-1).to(x.dtype)
        nt = self.cfg.n_types
        shift = x_out - x
        extra = h_out[..., nt:]
        if self.cfg.frame_features:
            shift, extra = shift + extra[..., :3], extra[..., 3:]
        if descent is not None:  # a learned, per-atom gate on the PDF's descent direction (equivariant)
            shift, extra = shift + extra[..., :1] * descent, extra[..., 1:]
        if self.cfg.self_condition:  # and on the step toward the previous estimate (zero when there is none)
            shift = shift + extra[..., :1] * (x - x_hat)
        eps_x = remove_mean(shift * m, mask)
        eps_h = h_out[..., :nt] * m
        check_finite("eps_x", eps_x)
        check_finite("eps_h", eps_h)
        if return_count:
            return eps_x, eps_h, self.count_head(enc)
        return eps_x, eps_h

    def count_logits(self, pdf: torch.Tensor, metal: torch.Tensor) -> torch.Tensor:
        """(B, max_atoms) logits of p(N | PDF, metal); class k means N = k + 1."""
        return self.count_head(self.encode_condition(pdf, metal))


def self_condition_edge_dim(cfg: ModelConfig) -> int:
    """Edge features from the previous estimate: sin/cos of its pair distance, and the target read there."""
    return 12 + (EdgePDF.dim() if cfg.edge_pdf != "off" else 0)


def _self_cond_inputs(x: torch.Tensor, h: torch.Tensor, mask: torch.Tensor,
                      self_cond: tuple[torch.Tensor, torch.Tensor] | None):
    """(x̂0, ĥ0, has (B,)): without an estimate x̂0 = x_t and ĥ0 = 0, so the inputs say "nothing yet"."""
    b = x.shape[0]
    if self_cond is None:
        return x, torch.zeros_like(h), x.new_zeros(b)
    x_hat, h_hat = self_cond
    if x_hat.shape != x.shape or h_hat.shape != h.shape:
        raise ValueError(f"self_cond: expected x̂0 {tuple(x.shape)} and ĥ0 {tuple(h.shape)}, "
                         f"got {tuple(x_hat.shape)} and {tuple(h_hat.shape)}")
    check_finite("self_cond.x", x_hat)
    check_finite("self_cond.h", h_hat)
    m = mask.unsqueeze(-1).to(x.dtype)
    return x_hat.to(x.dtype) * m, h_hat.to(h.dtype) * m, x.new_ones(b)


def _self_cond_edges(x_hat: torch.Tensor, mask: torch.Tensor, reader: EdgePDF | None, clean_reader: EdgePDF | None):
    """The EGNN's edge-feature callable: the edge-PDF features of x_t (if any), then the previous estimate's."""
    flat, _ = dense_to_sparse_nodes(mask)
    xs_hat = x_hat.reshape(-1, 3)[flat]

    def features(d0: torch.Tensor, graph: torch.Tensor, row: torch.Tensor, col: torch.Tensor) -> torch.Tensor:
        d_hat = torch.sqrt((xs_hat[row] - xs_hat[col]).pow(2).sum(-1) + 1e-8).to(d0.dtype)
        out = [] if reader is None else [reader.features(d0, graph)]
        out.append(sinusoidal_distance(d_hat, 6))
        if clean_reader is not None:
            out.append(clean_reader.features(d_hat, graph))
        return torch.cat(out, dim=-1)

    return features
