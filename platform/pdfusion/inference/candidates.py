"""Sample K candidate structures per PDF, size and score them against the PDF, rank them: the one
implementation that training's validation, evaluation, tuning, the CLI and serving all call.

A diffusion sample is only a proposal: its PDF is simulated with the *training* `PDFConfig` (so target and
candidate are computed the same way) and candidates are ranked by R_wp. Every candidate of every PDF becomes
one row: rows are sorted by atom count and cut into chunks under `PAIR_BUDGET`, so one sampler call serves
a mix of particle sizes (a live service's requests) with little padding. Only the sampler loop (`steps`,
`guidance`) and the random stream (`seed`) are shared by the rows of one call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm.auto import tqdm

from pdfusion.config import PDFConfig, SampleConfig
from pdfusion.diffusion.gaussian import types_to_numbers
from pdfusion.diffusion.guards import NonFiniteError
from pdfusion.diffusion.samplers import SamplingCancelled, predict_n_atoms, sample, target_groups
from pdfusion.inference.refine import REFINE_LR, REFINE_SMOOTH, refine_ragged
from pdfusion.inference.sizing import sizes_for
from pdfusion.inference.topology import reshape_and_refine
from pdfusion.pdf import rwp
from pdfusion.pdf.fitting import fit_expansion, simulate_safe
from pdfusion.structures.io import xyz_text
from pdfusion.structures.particle import OXYGEN
from pdfusion.structures.prototypes import element_symbol

if TYPE_CHECKING:
    from pdfusion.inference.bundle import ModelBundle

PAIR_BUDGET = 2_000_000  # (samples x atoms^2) per forward pass; bounds EGNN message memory


@dataclass
class Candidate:
    """One generated structure and how well its simulated PDF fits the target."""

    numbers: np.ndarray  # (N,) atomic numbers
    positions: np.ndarray  # (N, 3) Å, zero centroid
    n_atoms: int
    rwp: float
    rwp_before_refine: float | None
    g_sim: np.ndarray  # (n_r,) simulated G(r) on the bundle's grid
    expansion: float | None = None  # isotropic scale fitted to the target (bond-length-frame models only)
    n_sampled: int | None = None  # atoms the sampler drew, before detached fragments were dropped

    def to_xyz(self, comment: str | None = None) -> str:
        """Plain XYZ text (element symbols, Å; ``pdfusion.structures.io.xyz_text``)."""
        if comment is None:
            comment = f"pdfusion candidate rwp={self.rwp:.5f} n_atoms={self.n_atoms}"
            comment += f" expansion={self.expansion:.5f}" if self.expansion is not None else ""
        return xyz_text(self.numbers, self.positions, comment)


def metal_number(metal: int | str) -> int:
    """Atomic number of a metal given as Z or symbol; clear error otherwise."""
    from pymatgen.core import Element

    if isinstance(metal, str) and metal.strip().isdigit():
        metal = int(metal)
    if isinstance(metal, str):
        try:
            return int(Element(metal.strip().capitalize()).Z)
        except (ValueError, KeyError) as exc:
            raise ValueError(f"metal: {metal!r} is not an element symbol (e.g. 'Ti', 'Zn')") from exc
    z = int(metal)
    if not 1 <= z <= 118 or z == OXYGEN:
        raise ValueError(f"metal: atomic number {z} is not a metal (give e.g. 22 or 'Ti')")
    return z


def _chunk_size(n_max_atoms: int, max_batch: int | None = None) -> int:
    size = max(1, PAIR_BUDGET // max(1, n_max_atoms * n_max_atoms))
    return min(size, max_batch) if max_batch else size


def _chunks(sizes: torch.Tensor, groups: torch.Tensor | None, max_batch: int | None) -> list[torch.Tensor]:
    """Row indices per sampler call, each under `PAIR_BUDGET`. Rows are sorted by size so a chunk holds similar
    sizes (little padding); with `groups` (population resampling) each target's rows stay in one chunk where the
    budget allows, sorted by target and then size."""
    if groups is None:
        order = torch.argsort(sizes, stable=True)
        out, start = [], 0
        while start < order.numel():
            out.append(order[start : start + _chunk_size(int(sizes[order[start:]].max()), max_batch)])
            start += out[-1].numel()
        return out
    out, current = [], torch.empty(0, dtype=torch.long)
    for g in torch.unique(groups):
        rows = torch.nonzero(groups.cpu() == g).squeeze(1)
        rows = rows[torch.argsort(sizes[rows], stable=True)]
        merged = torch.cat([current, rows])
        if current.numel() and merged.numel() > _chunk_size(int(sizes[merged].max()), max_batch):
            out.append(current)
            merged = rows
        while merged.numel() > (cap := _chunk_size(int(sizes[merged].max()), max_batch)):
            out.append(merged[:cap])
            merged = merged[cap:]
        current = merged
    if current.numel():
        out.append(current)
    return out


def keep_largest_fragments(pos: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B,N) mask of each structure's largest bonded group (`structures.fragments.largest_fragment`): the atoms
    of `mask` that are kept when detached fragments are dropped (SampleConfig.prune_fragments)."""
    from pdfusion.structures.fragments import largest_fragment

    keep = mask.clone()
    for j in range(mask.shape[0]):
        idx = torch.nonzero(mask[j]).squeeze(1)
        ok = torch.from_numpy(largest_fragment(pos[j, idx].detach().cpu().numpy())).to(mask.device)
        keep[j, idx[~ok]] = False
    return keep


@torch.no_grad()
def fit_and_score(pos: torch.Tensor, numbers: torch.Tensor, mask: torch.Tensor, targets: torch.Tensor,
                  pdf_cfg: PDFConfig, bond_length: float | None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Sampler output -> (positions Å, simulated G(r), R_wp, fitted expansion or None), one row per sample.

    A model in a bond-length frame (`bond_length` not None) generates shapes: each is first scaled to its
    own target by `fit_expansion`, as a PDF refinement fits the lattice parameter before anything else."""
    if bond_length is None:
        g_sim = simulate_safe(pos, numbers, mask, pdf_cfg)
        return pos, g_sim, rwp(g_sim, targets), None
    fit = fit_expansion(pos.double(), numbers, mask, targets, pdf_cfg)
    return fit.positions.to(pos.dtype), fit.g_sim.to(pos.dtype), fit.rwp.to(pos.dtype), fit.factor


def candidates_from(numbers: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor, g_sim: torch.Tensor,
                    scores: torch.Tensor, factor: torch.Tensor | None, drawn: torch.Tensor) -> list[Candidate]:
    """One Candidate per row of a scored batch (numbers, mask and `fit_and_score`'s output), centred; `drawn` is
    the sampler's mask before detached fragments were dropped."""
    out = []
    for j in range(mask.shape[0]):
        m = mask[j]
        p = pos[j][m].double()
        out.append(Candidate(numbers=numbers[j][m].cpu().numpy().astype(np.int64),
                             positions=(p - p.mean(0)).cpu().numpy(),
                             n_atoms=int(m.sum()), rwp=float(scores[j]), rwp_before_refine=None,
                             g_sim=g_sim[j].detach().cpu().numpy(),
                             expansion=None if factor is None else float(factor[j]),
                             n_sampled=int(drawn[j].sum())))
    return out


@torch.no_grad()
def sample_rows(
    model: torch.nn.Module,
    diffusion,
    pdf_cfg: PDFConfig,
    pdfs: torch.Tensor,
    metals: torch.Tensor,
    n_atoms: torch.Tensor,
    cfg: SampleConfig,
    device: torch.device,
    max_batch: int | None = None,
    should_stop: Callable[[], bool] | None = None,
    progress: bool = False,
) -> list[Candidate]:
    """One scored candidate per row: `pdfs` (R, n_r), `metals` (R,) atomic numbers, `n_atoms` (R,) with -1
    where the model's count head draws the size. Rows are sampled in size-sorted chunks; the result is in
    row order. `should_stop` is checked between chunks and sampler steps (`SamplingCancelled`)."""
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    model.eval()
    pdfs, metals, sizes = pdfs.to(device), metals.to(device), n_atoms.to(device).clone()
    free = sizes < 0
    if bool(free.any()):
        sizes[free] = predict_n_atoms(model, pdfs[free], metals[free], generator=gen,
                                      temperature=cfg.count_temperature).long()
    results: list[Candidate | None] = [None] * sizes.numel()
    bar = tqdm(total=sizes.numel(), desc="sample", disable=not progress)
    groups = target_groups(pdfs) if cfg.resample_at else None
    for idx in _chunks(sizes.cpu(), groups, max_batch):
        if should_stop is not None and should_stop():
            raise SamplingCancelled("sampling cancelled between chunks")
        idx = idx.to(device)
        res = sample(model, diffusion, pdfs[idx], metals[idx], sizes[idx], cfg, generator=gen, pdf_cfg=pdf_cfg,
                     should_stop=should_stop)
        pos, mask = res.positions.float(), res.mask.bool()
        if not torch.isfinite(pos[mask]).all():
            raise NonFiniteError("sample_rows: sampler returned non-finite positions")
        if cfg.prune_fragments:
            mask = keep_largest_fragments(pos, mask)
        numbers = types_to_numbers(res.types.long(), metals[idx]) * mask
        scored = fit_and_score(pos, numbers, mask, pdfs[idx], pdf_cfg, diffusion.model_cfg.bond_length)
        for row, cand in zip(idx.tolist(), candidates_from(numbers, mask, *scored, res.mask.bool()), strict=True):
            results[row] = cand
        bar.update(len(idx))
    bar.close()
    return results  # type: ignore[return-value]


def _check_pdfs(pdfs: torch.Tensor, n_r: int) -> torch.Tensor:
    pdfs = pdfs[None] if pdfs.ndim == 1 else pdfs
    if pdfs.ndim != 2 or pdfs.shape[-1] != n_r:
        raise ValueError(f"pdfs: expected (B, {n_r}) on the model's r grid, got {tuple(pdfs.shape)}")
    if not torch.isfinite(pdfs).all():
        raise ValueError("pdfs: contain NaN or inf")
    return pdfs


def _ranked(results: Sequence[Candidate], owner: torch.Tensor, n_pdf: int) -> list[list[Candidate]]:
    ranked: list[list[Candidate]] = [[] for _ in range(n_pdf)]
    for row, cand in enumerate(results):
        ranked[int(owner[row])].append(cand)
    return [sorted(c, key=lambda c: c.rwp) for c in ranked]


def sample_and_score(
    model: torch.nn.Module,
    diffusion,
    pdfs: torch.Tensor,
    metals: Sequence[int | str],
    cfg: SampleConfig,
    pdf_cfg: PDFConfig,
    device: str | torch.device = "cpu",
    max_batch: int | None = None,
    progress: bool = False,
    sizes: Sequence[Sequence[int]] | None = None,
) -> list[list[Candidate]]:
    """K = cfg.n_samples candidates of cfg.n_atoms atoms (None: the count head's) for each of the B PDFs,
    each list sorted by R_wp ascending; `sizes` (B lists of K atom counts, e.g. the nearest library structures')
    overrides both. A model with `bond_length` set samples shapes; each is first scaled to its target
    (`fit_expansion`)."""
    pdfs = _check_pdfs(torch.as_tensor(pdfs, dtype=torch.float32), pdf_cfg.n_r)
    if len(metals) != pdfs.shape[0]:
        raise ValueError(f"metals: got {len(metals)} metals for {pdfs.shape[0]} PDFs")
    n_pdf, k = pdfs.shape[0], cfg.n_samples
    owner = torch.arange(n_pdf).repeat_interleave(k)
    z = torch.tensor([metal_number(m) for m in metals], dtype=torch.long)
    n_atoms = torch.full((n_pdf * k,), -1 if cfg.n_atoms is None else cfg.n_atoms, dtype=torch.long)
    if sizes is not None:
        if len(sizes) != n_pdf or any(len(row) != k for row in sizes):
            raise ValueError(f"sizes: expected {n_pdf} lists of {k} atom counts (one per candidate)")
        n_atoms = torch.tensor([int(n) for row in sizes for n in row], dtype=torch.long)
        if int(n_atoms.min()) < 1 or int(n_atoms.max()) > diffusion.model_cfg.max_atoms:
            raise ValueError(f"sizes: atom counts must be in 1..{diffusion.model_cfg.max_atoms} (model.max_atoms)")
    rows = sample_rows(model, diffusion, pdf_cfg, pdfs[owner], z[owner], n_atoms, cfg, torch.device(device),
                       max_batch=max_batch, progress=progress)
    return _ranked(rows, owner, n_pdf)


def sample_mixed(
    bundle: ModelBundle,
    pdfs: np.ndarray | torch.Tensor,
    metals: Sequence[int],
    n_samples: Sequence[int],
    n_atoms: Sequence[int | None],
    cfg: SampleConfig,
    should_stop: Callable[[], bool] | None = None,
) -> list[list[Candidate]]:
    """Ranked candidates for many requests in one pass: row i of `pdfs` (on `bundle.r_grid`) gets
    `n_samples[i]` candidates of `n_atoms[i]` atoms (None: drawn from the count head). `cfg` supplies what
    all rows share (guidance, steps, eta, clip_x0, seed); its own `n_samples`/`n_atoms` are ignored. For one
    request this draws exactly what `sample_and_score` draws."""
    pdfs = torch.as_tensor(np.asarray(pdfs), dtype=torch.float32)
    n_pdf = pdfs.shape[0]
    if not (len(metals) == len(n_samples) == len(n_atoms) == n_pdf):
        raise ValueError(f"sample_mixed: {n_pdf} PDFs but {len(metals)} metals, {len(n_samples)} n_samples, "
                         f"{len(n_atoms)} n_atoms")
    pdfs = _check_pdfs(pdfs, len(bundle.r_grid))
    counts = torch.tensor([int(k) for k in n_samples], dtype=torch.long)
    if int(counts.min()) < 1:
        raise ValueError(f"n_samples: every PDF needs >= 1 candidate, got {counts.tolist()}")
    owner = torch.repeat_interleave(torch.arange(n_pdf), counts)  # candidate row -> PDF index
    z = torch.tensor([int(m) for m in metals], dtype=torch.long)
    fixed = torch.tensor([-1 if n is None else int(n) for n in n_atoms], dtype=torch.long)
    rows = sample_rows(bundle.model, bundle.diffusion, bundle.pdf_config, pdfs[owner], z[owner], fixed[owner], cfg,
                       bundle.device, should_stop=should_stop)
    return _ranked(rows, owner, n_pdf)


def generate_candidates(
    bundle: ModelBundle,
    pdfs: torch.Tensor | np.ndarray,
    metals: Sequence[int | str],
    cfg: SampleConfig | Sequence[SampleConfig],
    max_batch: int | None = None,
    progress: bool = False,
    sizes: Sequence[Sequence[int]] | None = None,
) -> list[list[Candidate]]:
    """Ranked candidates for each PDF (rows of `pdfs`, on `bundle.r_grid`).

    `cfg` may be one config or one per PDF; PDFs with equal configs are sampled together. With `cfg.refine`, every
    candidate is refined and the list re-ranked. `sizes`: per PDF, the atom count of each candidate
    (`sample_and_score`); else `cfg.sizing` decides (the count head, or the fitted library: `inference.sizing`)."""
    pdfs = torch.as_tensor(np.asarray(pdfs), dtype=torch.float32)
    if pdfs.ndim == 1:
        pdfs = pdfs[None]
    if pdfs.shape[-1] != len(bundle.r_grid):
        raise ValueError(
            f"pdfs: expected {len(bundle.r_grid)} points (the model's r grid {bundle.r_grid[0]:g}–"
            f"{bundle.r_grid[-1]:g} Å), got {pdfs.shape[-1]}; put a measured PDF on it with "
            "pdfusion.pdf.files.map_to_grid"
        )
    cfgs = [cfg] * pdfs.shape[0] if isinstance(cfg, SampleConfig) else list(cfg)
    if len(cfgs) != pdfs.shape[0]:
        raise ValueError(f"cfg: got {len(cfgs)} sample configs for {pdfs.shape[0]} PDFs")
    groups: dict[SampleConfig, list[int]] = {}
    for i, c in enumerate(cfgs):
        groups.setdefault(c, []).append(i)
    out: list[list[Candidate] | None] = [None] * pdfs.shape[0]
    for gcfg, members in groups.items():
        counts = None if sizes is None else [sizes[i] for i in members]
        if counts is None and gcfg.n_atoms is None and gcfg.sizing == "library":
            counts = sizes_for(pdfs[members].numpy(), [element_symbol(metal_number(metals[i])) for i in members],
                               bundle.pdf_config, gcfg.n_samples, scale=gcfg.size_scale,
                               max_atoms=bundle.diffusion.model_cfg.max_atoms)
        ranked = sample_and_score(
            bundle.model, bundle.diffusion, pdfs[members], [metals[i] for i in members], gcfg,
            bundle.pdf_config, device=bundle.device, max_batch=max_batch, progress=progress, sizes=counts,
        )
        if gcfg.refine:
            ranked = [
                refine_candidates(cands, pdfs[i], bundle.pdf_config, steps=gcfg.refine_steps)
                for cands, i in zip(ranked, members, strict=True)
            ]
        if gcfg.prune_atoms:
            ranked = [
                prune_candidates(cands, pdfs[i], bundle.pdf_config, steps=gcfg.refine_steps, top=gcfg.prune_top)
                for cands, i in zip(ranked, members, strict=True)
            ]
        for i, cands in zip(members, ranked, strict=True):
            out[i] = cands
    return out  # type: ignore[return-value]


def refine_candidates(
    cands: list[Candidate], target_g: torch.Tensor | np.ndarray, pdf_cfg: PDFConfig, steps: int = 100,
    lr: float = REFINE_LR, smooth: float = REFINE_SMOOTH,
) -> list[Candidate]:
    """Refine every candidate of one PDF in one batch and re-rank."""
    if not cands or steps == 0:
        return cands
    res = refine_ragged([c.positions for c in cands], [c.numbers for c in cands], target_g, pdf_cfg,
                        steps=steps, lr=lr, smooth=smooth)
    out = []
    for i, c in enumerate(cands):
        out.append(
            Candidate(
                numbers=c.numbers, positions=res.positions[i, : c.n_atoms], n_atoms=c.n_atoms,
                rwp=float(res.rwp_after[i]), rwp_before_refine=c.rwp, g_sim=res.g_sim[i].astype(np.float32),
                expansion=c.expansion,
            )
        )
    return sorted(out, key=lambda c: c.rwp)


def prune_candidates(cands: list[Candidate], target_g: torch.Tensor | np.ndarray, pdf_cfg: PDFConfig,
                     steps: int = 100, top: int = 4) -> list[Candidate]:
    """The best `top` refined candidates of one PDF lose the atoms whose removal lowers R_wp and are refined again
    (`inference.topology.reshape_and_refine`); each is replaced only where R_wp falls. Re-ranked."""
    if not cands or steps == 0:
        return cands
    best = sorted(cands, key=lambda c: c.rwp)
    head = best[:top]
    shaped = reshape_and_refine([c.positions for c in head], [c.numbers for c in head],
                                np.array([c.rwp for c in head]), target_g, pdf_cfg, steps)
    out = list(best)
    for j, c in enumerate(head):
        if not shaped.changed[j]:
            continue
        z = shaped.numbers[j]
        out[j] = Candidate(numbers=z, positions=shaped.positions[j], n_atoms=len(z), rwp=float(shaped.rwp[j]),
                           rwp_before_refine=c.rwp_before_refine, g_sim=shaped.g_sim[j].astype(np.float32),
                           expansion=c.expansion, n_sampled=c.n_sampled)
    return sorted(out, key=lambda c: c.rwp)
