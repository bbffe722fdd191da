"""Sample and rank the candidates of many requests in one pass, whatever their atom counts and sizes.

`evaluation.ranking.generate_candidates` samples together only PDFs whose whole `SampleConfig` is
equal, so two requests that differ in `n_atoms` or `n_samples` (the normal case for a live service)
would each take their own sampler loop. Here every candidate of every request becomes one row:
rows are sorted by atom count and cut into chunks under `ranking.PAIR_BUDGET`, so one sampler call
serves a mix of particle sizes with little padding, and the PDFs of all candidates are simulated and
scored in the same chunks. Only the sampler loop itself (`steps`, `guidance`) and the random stream
(`seed`) must be shared by the rows of one call.

For a single request this follows `ranking.sample_and_score` step by step (same generator draws in
the same order), so a seeded request gets exactly the candidates `generate_candidates` would give.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from pdfusion.config import SampleConfig
from pdfusion.diffusion.gaussian import types_to_numbers
from pdfusion.evaluation.ranking import PAIR_BUDGET, Candidate, size_and_score


def _chunk_size(n_max_atoms: int) -> int:
    return max(1, PAIR_BUDGET // max(1, n_max_atoms * n_max_atoms))


@torch.no_grad()
def sample_mixed(
    bundle,
    pdfs: np.ndarray | torch.Tensor,
    metals: Sequence[int],
    n_samples: Sequence[int],
    n_atoms: Sequence[int | None],
    cfg: SampleConfig,
    should_stop: Callable[[], bool] | None = None,
) -> list[list[Candidate]]:
    """Ranked candidates (best R_wp first) for each PDF row of `pdfs` (on `bundle.r_grid`).

    Row i gets `n_samples[i]` candidates of `n_atoms[i]` atoms (None: drawn from the model's count
    head). `cfg` supplies what all rows share: guidance, steps, eta, clip_x0 and seed; its own
    `n_samples`/`n_atoms` are ignored. `should_stop` is checked between sampler steps (and chunks): when it
    returns True, `diffusion.samplers.SamplingCancelled` is raised."""
    from pdfusion.diffusion.guards import NonFiniteError
    from pdfusion.diffusion.samplers import SamplingCancelled, predict_n_atoms, sample

    device = bundle.device
    pdfs = torch.as_tensor(np.asarray(pdfs), dtype=torch.float32)
    n_pdf = pdfs.shape[0]
    if not (len(metals) == len(n_samples) == len(n_atoms) == n_pdf):
        raise ValueError(f"sample_mixed: {n_pdf} PDFs but {len(metals)} metals, {len(n_samples)} n_samples, "
                         f"{len(n_atoms)} n_atoms")
    if pdfs.ndim != 2 or pdfs.shape[1] != len(bundle.r_grid):
        raise ValueError(f"pdfs: expected (B, {len(bundle.r_grid)}) on the model's r grid, got {tuple(pdfs.shape)}")
    if not torch.isfinite(pdfs).all():
        raise ValueError("pdfs: contain NaN or inf")
    counts = torch.tensor([int(k) for k in n_samples], dtype=torch.long)
    if int(counts.min()) < 1:
        raise ValueError(f"n_samples: every PDF needs >= 1 candidate, got {counts.tolist()}")
    owner = torch.repeat_interleave(torch.arange(n_pdf), counts)  # candidate row -> PDF index
    rep_pdf = pdfs[owner].to(device)
    rep_metal = torch.tensor([int(m) for m in metals], dtype=torch.long)[owner].to(device)
    fixed = torch.tensor([-1 if n is None else int(n) for n in n_atoms], dtype=torch.long)[owner].to(device)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    model = bundle.model
    model.eval()
    sizes = fixed.clone()
    free = fixed < 0
    if bool(free.any()):
        sizes[free] = predict_n_atoms(model, rep_pdf[free], rep_metal[free], generator=gen).long()
    # Sort by size so chunks hold similar sizes (little padding); results go back to their rows.
    order = torch.argsort(sizes.cpu(), stable=True)
    results: list[Candidate | None] = [None] * owner.numel()
    start = 0
    while start < order.numel():
        if should_stop is not None and should_stop():
            raise SamplingCancelled("sampling cancelled between chunks")
        idx = order[start : start + _chunk_size(int(sizes[order[start:]].max()))].to(device)
        res = sample(model, bundle.diffusion, rep_pdf[idx], rep_metal[idx], sizes[idx], cfg, generator=gen,
                     pdf_cfg=bundle.pdf_config, should_stop=should_stop)
        pos, mask = res.positions.float(), res.mask.bool()
        if not torch.isfinite(pos[mask]).all():
            raise NonFiniteError("sample_mixed: sampler returned non-finite positions")
        numbers = types_to_numbers(res.types.long(), rep_metal[idx]) * mask
        pos, g_sim, scores, factor = size_and_score(pos, numbers, mask, rep_pdf[idx], bundle.pdf_config,
                                                    bundle.diffusion.model_cfg.bond_length)
        scores = scores.cpu()
        pos_c, num_c, mask_c, g_c = pos.double().cpu(), numbers.cpu(), mask.cpu(), g_sim.detach().cpu()
        for j, row in enumerate(idx.tolist()):
            m = mask_c[j]
            p = pos_c[j][m]
            results[row] = Candidate(
                numbers=num_c[j][m].numpy().astype(np.int64), positions=(p - p.mean(0)).numpy(),
                n_atoms=int(m.sum()), rwp=float(scores[j]), rwp_before_refine=None, g_sim=g_c[j].numpy(),
                expansion=None if factor is None else float(factor[j]),
            )
        start += idx.numel()
    ranked: list[list[Candidate]] = [[] for _ in range(n_pdf)]
    for row, cand in enumerate(results):
        ranked[int(owner[row])].append(cand)  # type: ignore[arg-type]
    return [sorted(c, key=lambda c: c.rwp) for c in ranked]
