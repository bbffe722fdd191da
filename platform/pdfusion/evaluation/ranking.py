"""Sample K candidate structures per PDF, score them against the PDF, rank, optionally refine.

A diffusion sample is only a proposal: the PDF it produces is simulated with the *training*
`PDFConfig` (so target and candidate are computed the same way) and candidates are ranked by R_wp.
`refine` then does what a crystallographer would do next, small gradient steps on R_wp through the
differentiable Debye simulator, with a short-distance penalty so atoms cannot collapse onto each other.
`library_lookup` is the baseline every generated answer has to beat.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from pdfusion.config import PDFConfig, SampleConfig
from pdfusion.diffusion.gaussian import types_to_numbers
from pdfusion.pdf.fitting import MIN_DISTANCE, fit_expansion
from pdfusion.pdf.fitting import blur as _blur
from pdfusion.pdf.fitting import min_pair_distance as _min_dist
from pdfusion.pdf.fitting import pair_penalty as _pair_penalty
from pdfusion.pdf.fitting import simulate_safe as simulate_candidates
from pdfusion.structures.particle import OXYGEN

if TYPE_CHECKING:
    from pdfusion.training.bundle import ModelBundle

# Coarse-to-fine refinement defaults, measured on 16 candidates of one 31-atom seed particle
# (jobs/exp_overfit_one.py): plain Adam lr 0.01 reached best R_wp 0.106 / median 0.246; blur 0.8 Å, lr 0.05: 0.026 / 0.115.
REFINE_LR = 0.05
REFINE_SMOOTH = 0.8  # Å, initial Gaussian blur of both G(r) curves (see `refine`)
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

    def to_xyz(self, comment: str | None = None) -> str:
        """Plain XYZ text (element symbols, Å)."""
        from pymatgen.core import Element

        if comment is None:
            comment = f"pdfusion candidate rwp={self.rwp:.5f} n_atoms={self.n_atoms}"
            comment += f" expansion={self.expansion:.5f}" if self.expansion is not None else ""
        lines = [str(self.n_atoms), comment.replace("\n", " ")]
        for z, (x, y, w) in zip(self.numbers, self.positions, strict=True):
            lines.append(f"{Element.from_Z(int(z)).symbol:<2s} {x:14.8f} {y:14.8f} {w:14.8f}")
        return "\n".join(lines) + "\n"


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


def _masked_rwp(g_sim: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    from pdfusion.pdf import rwp

    return rwp(g_sim, target)


def _chunks(n_total: int, n_max_atoms: int, max_batch: int | None) -> int:
    size = max(1, PAIR_BUDGET // max(1, n_max_atoms * n_max_atoms))
    return min(size, max_batch) if max_batch else size


@torch.no_grad()
def size_and_score(pos: torch.Tensor, numbers: torch.Tensor, mask: torch.Tensor, targets: torch.Tensor,
                   pdf_cfg: PDFConfig, bond_length: float | None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Sampler output -> (positions Å, simulated G(r), R_wp, fitted expansion or None), one row per sample.

    A model in a bond-length frame (`bond_length` not None) generates shapes: each is first scaled to its
    own target by `fit_expansion`, as a PDF refinement fits the lattice parameter before anything else."""
    if bond_length is None:
        g_sim = simulate_candidates(pos, numbers, mask, pdf_cfg)
        return pos, g_sim, _masked_rwp(g_sim, targets), None
    fit = fit_expansion(pos.double(), numbers, mask, targets, pdf_cfg)
    return fit.positions.to(pos.dtype), fit.g_sim.to(pos.dtype), fit.rwp.to(pos.dtype), fit.factor


def candidates_from(numbers: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor, g_sim: torch.Tensor,
                    scores: torch.Tensor, factor: torch.Tensor | None) -> list[Candidate]:
    """One Candidate per row of a scored batch (numbers, mask and `size_and_score`'s output), centred."""
    out = []
    for j in range(mask.shape[0]):
        m = mask[j]
        p = pos[j][m].double()
        out.append(Candidate(numbers=numbers[j][m].cpu().numpy().astype(np.int64), positions=(p - p.mean(0)).cpu().numpy(),
                             n_atoms=int(m.sum()), rwp=float(scores[j]), rwp_before_refine=None,
                             g_sim=g_sim[j].detach().cpu().numpy(),
                             expansion=None if factor is None else float(factor[j])))
    return out


@torch.no_grad()
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
) -> list[list[Candidate]]:
    """K = cfg.n_samples candidates for each of the B PDFs, all in as few sampler calls as the memory
    budget allows; each candidate's PDF simulated with `pdf_cfg`; each list sorted by R_wp ascending.
    A model with `bond_length` set samples shapes; each is first scaled to its target (`fit_expansion`)."""
    from pdfusion.diffusion.samplers import predict_n_atoms, sample

    device = torch.device(device)
    pdfs = torch.as_tensor(pdfs, dtype=torch.float32)
    if pdfs.ndim == 1:
        pdfs = pdfs[None]
    if pdfs.shape[-1] != pdf_cfg.n_r:
        raise ValueError(f"pdfs: expected {pdf_cfg.n_r} points on the model's r grid, got {pdfs.shape[-1]}")
    if not torch.isfinite(pdfs).all():
        raise ValueError("pdfs: contain NaN or inf")
    if len(metals) != pdfs.shape[0]:
        raise ValueError(f"metals: got {len(metals)} metals for {pdfs.shape[0]} PDFs")
    z = torch.tensor([metal_number(m) for m in metals], dtype=torch.long)
    n_pdf, k = pdfs.shape[0], cfg.n_samples
    rep_pdf = pdfs.repeat_interleave(k, 0).to(device)
    rep_metal = z.repeat_interleave(k, 0).to(device)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    model.eval()
    if cfg.n_atoms is not None:
        n_atoms = torch.full((n_pdf * k,), cfg.n_atoms, dtype=torch.long, device=device)
    else:
        n_atoms = predict_n_atoms(model, rep_pdf, rep_metal, generator=gen).long()
    # Sort by size so chunks hold similar sizes (little padding); undo the order afterwards.
    order = torch.argsort(n_atoms.cpu(), stable=True)
    results: list[Candidate | None] = [None] * (n_pdf * k)
    start = 0
    from tqdm.auto import tqdm

    bar = tqdm(total=n_pdf * k, desc="sample", disable=not progress)
    while start < order.numel():
        n_max = int(n_atoms[order[start:]].max()) if start < order.numel() else 0
        size = _chunks(order.numel() - start, n_max, max_batch)
        idx = order[start : start + size].to(device)
        res = sample(model, diffusion, rep_pdf[idx], rep_metal[idx], n_atoms[idx], cfg, generator=gen, pdf_cfg=pdf_cfg)
        pos, mask = res.positions.float(), res.mask.bool()
        if not torch.isfinite(pos[mask]).all():
            from pdfusion.diffusion.guards import NonFiniteError

            raise NonFiniteError("sample_and_score: sampler returned non-finite positions")
        numbers = types_to_numbers(res.types.long(), rep_metal[idx]) * mask
        scored = size_and_score(pos, numbers, mask, rep_pdf[idx], pdf_cfg, diffusion.model_cfg.bond_length)
        for flat, cand in zip(idx.tolist(), candidates_from(numbers, mask, *scored), strict=True):
            results[flat] = cand
        bar.update(len(idx))
        start += size
    bar.close()
    ranked = []
    for b in range(n_pdf):
        cands = [c for c in results[b * k : (b + 1) * k] if c is not None]
        ranked.append(sorted(cands, key=lambda c: c.rwp))
    return ranked


def generate_candidates(
    bundle: ModelBundle,
    pdfs: torch.Tensor | np.ndarray,
    metals: Sequence[int | str],
    cfg: SampleConfig | Sequence[SampleConfig],
    max_batch: int | None = None,
    progress: bool = False,
) -> list[list[Candidate]]:
    """Ranked candidates for each PDF (rows of `pdfs`, on `bundle.r_grid`).

    `cfg` may be one config or one per PDF; PDFs with equal configs are sampled together. With `cfg.refine`, every candidate is refined and the list re-ranked."""
    pdfs = torch.as_tensor(np.asarray(pdfs), dtype=torch.float32)
    if pdfs.ndim == 1:
        pdfs = pdfs[None]
    if pdfs.shape[-1] != len(bundle.r_grid):
        raise ValueError(
            f"pdfs: expected {len(bundle.r_grid)} points (the model's r grid {bundle.r_grid[0]:g}–"
            f"{bundle.r_grid[-1]:g} Å), got {pdfs.shape[-1]}; interpolate with pdfusion.pdf.files.interpolate_pdf"
        )
    cfgs = [cfg] * pdfs.shape[0] if isinstance(cfg, SampleConfig) else list(cfg)
    if len(cfgs) != pdfs.shape[0]:
        raise ValueError(f"cfg: got {len(cfgs)} sample configs for {pdfs.shape[0]} PDFs")
    groups: dict[SampleConfig, list[int]] = {}
    for i, c in enumerate(cfgs):
        groups.setdefault(c, []).append(i)
    out: list[list[Candidate] | None] = [None] * pdfs.shape[0]
    for gcfg, members in groups.items():
        ranked = sample_and_score(
            bundle.model, bundle.diffusion, pdfs[members], [metals[i] for i in members], gcfg,
            bundle.pdf_config, device=bundle.device, max_batch=max_batch, progress=progress,
        )
        if gcfg.refine:
            ranked = [
                refine_candidates(cands, pdfs[i], bundle.pdf_config, steps=gcfg.refine_steps)
                for cands, i in zip(ranked, members, strict=True)
            ]
        for i, cands in zip(members, ranked, strict=True):
            out[i] = cands
    return out  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------------
# refinement
# --------------------------------------------------------------------------------------------------
@dataclass
class Refined:
    positions: np.ndarray  # (B, Nmax, 3) or (N, 3) like the input; zero centroid
    rwp_before: np.ndarray  # (B,)
    rwp_after: np.ndarray  # (B,)
    g_sim: np.ndarray  # (B, n_r) after refinement


def refine(
    positions: np.ndarray | torch.Tensor,
    numbers: np.ndarray | torch.Tensor,
    target_g: np.ndarray | torch.Tensor,
    pdf_cfg: PDFConfig,
    steps: int = 100,
    lr: float = REFINE_LR,
    mask: np.ndarray | torch.Tensor | None = None,
    min_distance: float = MIN_DISTANCE,
    penalty: float = 1.0,
    max_step: float = 0.1,
    smooth: float = REFINE_SMOOTH,
) -> Refined:
    """Gradient descent (Adam) on R_wp through the differentiable simulator, one or B structures at once.

    Positions (N,3) or (B,N,3) Å; the short-distance penalty keeps pairs apart beyond `min_distance`;
    every step is clipped to `max_step` Å per atom and the centroid is kept at zero. The best
    positions seen are returned (no pair closer than 0.9 x min_distance first, then lowest R_wp), so
    refinement never makes a physically sane fit worse.

    Coarse to fine (`smooth` > 0, Å): the seed PDFs' peaks are ~0.09 Å wide, so a candidate whose distances
    are off by more than that sees almost no gradient towards the right peak. Both G(r) curves are first
    blurred by the same Gaussian of width `smooth` (a linear map, so a perfect fit stays perfect), and the
    width shrinks linearly to zero over the first 70% of the steps; the learning rate then decays (cosine).
    Only unblurred R_wp decides which positions are kept."""
    single = torch.as_tensor(positions).ndim == 2
    pos = torch.as_tensor(np.asarray(positions) if not torch.is_tensor(positions) else positions).double()
    num = torch.as_tensor(np.asarray(numbers) if not torch.is_tensor(numbers) else numbers).long()
    if single:
        pos, num = pos[None], num[None]
    msk = torch.ones(num.shape, dtype=torch.bool) if mask is None else torch.as_tensor(mask).bool().reshape(num.shape)
    target = torch.as_tensor(np.asarray(target_g) if not torch.is_tensor(target_g) else target_g).double()
    target = target.reshape(-1, target.shape[-1]).expand(pos.shape[0], -1)
    if not torch.isfinite(pos[msk]).all():
        raise ValueError("refine: positions contain NaN or inf")
    if steps < 0:
        raise ValueError(f"refine: steps must be >= 0, got {steps}")
    fmask = msk[..., None].double()

    def centre(p):
        c = (p * fmask).sum(1, keepdim=True) / fmask.sum(1, keepdim=True).clamp_min(1)
        return (p - c) * fmask

    pos = centre(pos)
    with torch.no_grad():
        g0 = simulate_candidates(pos, num, msk, pdf_cfg)
        r0 = _masked_rwp(g0, target)
    best_pos, best_r, best_g = pos.clone(), r0.clone(), g0.clone()
    floor = 0.9 * min_distance
    best_ok = _min_dist(pos, msk) >= floor  # a distance-valid structure beats any invalid one
    x = pos.clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, steps)) if smooth > 0 else None
    dr = float(pdf_cfg.rstep)
    for step in range(steps):
        g = simulate_candidates(x, num, msk, pdf_cfg)
        r = _masked_rwp(g, target)
        width = smooth * max(0.0, 1.0 - step / (0.7 * steps)) if smooth > 0 else 0.0
        fit = _masked_rwp(_blur(g, width, dr), _blur(target, width, dr)) if width > dr else r
        loss = (fit + penalty * _pair_penalty(x, msk, min_distance)).sum()
        if not torch.isfinite(loss):
            from pdfusion.diffusion.guards import NonFiniteError

            raise NonFiniteError(f"refine step {step}: loss is {float(loss)}")
        with torch.no_grad():
            ok = _min_dist(x, msk) >= floor
            better = ok & (~best_ok | (r < best_r))
            best_ok = best_ok | ok
            best_r = torch.where(better, r.detach(), best_r)
            best_pos[better] = x.detach()[better]
            best_g[better] = g.detach()[better]
        opt.zero_grad()
        loss.backward()
        before = x.detach().clone()
        opt.step()
        if sched is not None:
            sched.step()
        with torch.no_grad():
            delta = (x - before).clamp(-max_step, max_step)
            x.copy_(centre(before + delta))
    with torch.no_grad():
        g = simulate_candidates(x, num, msk, pdf_cfg)
        r = _masked_rwp(g, target)
        ok = _min_dist(x, msk) >= floor
        better = ok & (~best_ok | (r < best_r))
        best_r = torch.where(better, r, best_r)
        best_pos[better] = x.detach()[better]
        best_g[better] = g[better]
    out_pos = best_pos[0] if single else best_pos
    return Refined(out_pos.numpy(), r0.numpy(), best_r.numpy(), best_g.numpy())


def pad_structures(positions: Sequence[np.ndarray], numbers: Sequence[np.ndarray]
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Structures of different sizes -> (positions (B,Nmax,3), numbers (B,Nmax), mask): row i holds
    structure i in its first len(numbers[i]) atoms; padding is at the origin with number 0."""
    n_max = max(len(n) for n in numbers)
    pos = np.zeros((len(numbers), n_max, 3))
    num = np.full((len(numbers), n_max), OXYGEN, dtype=np.int64)
    mask = np.zeros((len(numbers), n_max), dtype=bool)
    for i, (p, n) in enumerate(zip(positions, numbers, strict=True)):
        pos[i, : len(n)], num[i, : len(n)], mask[i, : len(n)] = p, n, True
    return pos, num * mask, mask


def refine_ragged(positions: Sequence[np.ndarray], numbers: Sequence[np.ndarray], target_g: torch.Tensor | np.ndarray,
                  pdf_cfg: PDFConfig, **kwargs) -> Refined:
    """`refine` for structures of different sizes against one target, padded into one batch (`pad_structures`)."""
    pos, num, mask = pad_structures(positions, numbers)
    return refine(pos, num, target_g, pdf_cfg, mask=mask, **kwargs)


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


# --------------------------------------------------------------------------------------------------
# baseline
# --------------------------------------------------------------------------------------------------
@torch.no_grad()
def library_lookup(
    target_pdfs: torch.Tensor | np.ndarray, library_pdfs: torch.Tensor | np.ndarray, chunk_elements: int = 20_000_000
) -> tuple[np.ndarray, np.ndarray]:
    """For each target PDF, the index of the library PDF with the lowest R_wp, and that R_wp.

    Batched over (targets x library) in chunks of at most `chunk_elements` values."""
    t = torch.as_tensor(np.asarray(target_pdfs), dtype=torch.float64)
    lib = torch.as_tensor(np.asarray(library_pdfs), dtype=torch.float64)
    t = t[None] if t.ndim == 1 else t
    if lib.ndim != 2 or lib.shape[0] == 0:
        raise ValueError(f"library_pdfs: expected a non-empty (L, n_r) array, got shape {tuple(lib.shape)}")
    if t.shape[-1] != lib.shape[-1]:
        raise ValueError(f"target_pdfs: {t.shape[-1]} points but library PDFs have {lib.shape[-1]}")
    per = max(1, chunk_elements // max(1, lib.numel()))
    idx, best = [], []
    for s in range(0, t.shape[0], per):
        tb = t[s : s + per, None, :]
        shape = (tb.shape[0], lib.shape[0], lib.shape[1])
        scores = _masked_rwp(lib[None].expand(shape), tb.expand(shape))  # (b, L)
        val, arg = scores.min(dim=1)
        idx.append(arg)
        best.append(val)
    return torch.cat(idx).numpy(), torch.cat(best).numpy()
