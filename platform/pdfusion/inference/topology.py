"""Change a candidate's atom count by the fit itself: delete the atoms whose removal lowers R_wp.

Position refinement cannot change how many atoms a candidate has, and the measured gap between the model's
candidates and refined library cuts is topology (atom count and shape; docs/training.md, round 10): the guided
sampler already leaves them at a local minimum of R_wp over positions. Deleting an atom is a discrete move
scored exactly: every leave-one-out structure of a candidate is simulated in one masked batch, and the atoms
whose removal helps most are removed together, the batch halved until the joint removal helps too."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from pdfusion.config import PDFConfig
from pdfusion.pdf import rwp
from pdfusion.pdf.fitting import simulate_safe

PAIR_BUDGET = 2e7  # atom pairs simulated per batch of leave-one-out copies (bounds memory, ~1 GB)


@dataclass
class Pruned:
    positions: np.ndarray  # (n_kept, 3)
    numbers: np.ndarray  # (n_kept,)
    kept: np.ndarray  # (n_input,) bool: which input atoms remain
    rwp_before: float
    rwp_after: float
    rounds: int


def _rwp_of(pos: torch.Tensor, num: torch.Tensor, mask: torch.Tensor, target: torch.Tensor, cfg: PDFConfig
            ) -> torch.Tensor:
    g = simulate_safe(pos, num, mask, cfg)
    return rwp(g, target.expand(g.shape[0], -1))


def leave_one_out_rwp(positions: np.ndarray | torch.Tensor, numbers: np.ndarray | torch.Tensor,
                      target_g: np.ndarray | torch.Tensor, pdf_cfg: PDFConfig,
                      keep: np.ndarray | None = None) -> np.ndarray:
    """R_wp of the structure with atom i removed, for every atom i of ``keep`` (default all); inf elsewhere.

    One masked simulator batch per chunk of copies, sized so a chunk holds at most ``PAIR_BUDGET`` pairs."""
    pos = torch.as_tensor(np.asarray(positions), dtype=torch.float64)
    num = torch.as_tensor(np.asarray(numbers), dtype=torch.long)
    n = num.shape[0]
    keep_t = torch.ones(n, dtype=torch.bool) if keep is None else torch.as_tensor(keep, dtype=torch.bool)
    target = torch.as_tensor(np.asarray(target_g), dtype=torch.float64).reshape(1, -1)
    idx = torch.nonzero(keep_t).flatten()
    out = np.full(n, np.inf)
    chunk = max(1, int(PAIR_BUDGET // max(1, n * n // 2)))
    with torch.no_grad():
        for start in range(0, idx.numel(), chunk):
            sel = idx[start: start + chunk]
            b = sel.numel()
            mask = keep_t.expand(b, n).clone()
            mask[torch.arange(b), sel] = False
            out[sel.numpy()] = _rwp_of(pos.expand(b, n, 3), num.expand(b, n), mask, target, pdf_cfg).numpy()
    return out


def prune_by_rwp(positions: np.ndarray, numbers: np.ndarray, target_g: np.ndarray | torch.Tensor,
                 pdf_cfg: PDFConfig = PDFConfig(), *, max_remove: float = 0.5, max_rounds: int = 30,
                 batch_frac: float = 0.25, min_gain: float = 1e-4) -> Pruned:
    """Greedy deletion: each round, the atoms whose single removal lowers R_wp by more than ``min_gain`` are ranked
    by that gain; the best ``batch_frac`` of them are removed together if that lowers R_wp, else half as many, down
    to the single best (which always does). Stops when no removal helps, after ``max_rounds`` rounds, or when
    ``max_remove`` of the input atoms are gone. Positions are not moved (refine after)."""
    if not 0 < max_remove < 1:
        raise ValueError(f"prune_by_rwp: max_remove must be in (0, 1), got {max_remove}")
    if not 0 < batch_frac <= 1:
        raise ValueError(f"prune_by_rwp: batch_frac must be in (0, 1], got {batch_frac}")
    pos = np.asarray(positions, dtype=np.float64)
    num = np.asarray(numbers, dtype=np.int64)
    n = len(num)
    if pos.shape != (n, 3) or n == 0:
        raise ValueError(f"prune_by_rwp: positions must be (N, 3) for N = {n} numbers, got {pos.shape}")
    if not np.isfinite(pos).all():
        raise ValueError("prune_by_rwp: positions contain NaN or inf")
    pos_t, num_t = torch.as_tensor(pos), torch.as_tensor(num)
    target = torch.as_tensor(np.asarray(target_g), dtype=torch.float64).reshape(1, -1)
    keep = np.ones(n, dtype=bool)

    def score(k: np.ndarray) -> float:
        with torch.no_grad():
            return float(_rwp_of(pos_t[None], num_t[None], torch.as_tensor(k)[None], target, pdf_cfg)[0])

    r0 = current = score(keep)
    floor = n - math.floor(max_remove * n)
    rounds = 0
    for rounds in range(1, max_rounds + 1):  # noqa: B007  (rounds is reported)
        budget = int(keep.sum()) - floor
        if budget <= 0:
            rounds -= 1
            break
        loo = leave_one_out_rwp(pos, num, target, pdf_cfg, keep)
        gain = current - loo
        order = np.argsort(-gain, kind="stable")
        helpful = order[gain[order] > min_gain][:budget]
        if helpful.size == 0:
            break
        m = max(1, math.ceil(batch_frac * helpful.size))
        while True:
            trial = keep.copy()
            trial[helpful[:m]] = False
            r = score(trial) if m > 1 else float(loo[helpful[0]])
            if r < current or m == 1:
                break
            m //= 2
        keep, current = trial, r
    return Pruned(pos[keep], num[keep], keep, r0, current, rounds)
