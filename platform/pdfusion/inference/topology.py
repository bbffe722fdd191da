"""Change a candidate's atom count by the fit itself: delete the atoms whose removal lowers R_wp, add atoms at
vacant lattice sites where that lowers it.

Position refinement cannot change how many atoms a candidate has, and the measured gap between the model's
candidates and refined library cuts is topology (atom count and shape; docs/training.md, round 10): the guided
sampler already leaves them at a local minimum of R_wp over positions. Deleting an atom is a discrete move
scored exactly: every leave-one-out structure of a candidate is simulated in one masked batch, and the atoms
whose removal helps most are removed together, the batch halved until the joint removal helps too. Growth is
the same with one-atom additions: the candidate's own sublattice translations (vectors between same-element
neighbours that recur) applied to its atoms give the vacant sites a larger cut of that lattice would fill."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from pdfusion.config import PDFConfig
from pdfusion.inference.refine import refine_ragged
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


def _checked(who: str, positions, numbers, batch_frac: float, min_atoms: int) -> tuple[np.ndarray, np.ndarray]:
    if not 0 < batch_frac <= 1:
        raise ValueError(f"{who}: batch_frac must be in (0, 1], got {batch_frac}")
    pos = np.asarray(positions, dtype=np.float64)
    num = np.asarray(numbers, dtype=np.int64)
    if pos.shape != (len(num), 3) or len(num) < min_atoms:
        raise ValueError(f"{who}: positions must be (N, 3) for N = {len(num)} >= {min_atoms} numbers, got {pos.shape}")
    if not np.isfinite(pos).all():
        raise ValueError(f"{who}: positions contain NaN or inf")
    return pos, num


def prune_by_rwp(positions: np.ndarray, numbers: np.ndarray, target_g: np.ndarray | torch.Tensor,
                 pdf_cfg: PDFConfig = PDFConfig(), *, max_remove: float = 0.5, max_rounds: int = 30,
                 batch_frac: float = 0.25, min_gain: float = 1e-4) -> Pruned:
    """Greedy deletion: each round, the atoms whose single removal lowers R_wp by more than ``min_gain`` are ranked
    by that gain; the best ``batch_frac`` of them are removed together if that lowers R_wp, else half as many, down
    to the single best (which always does). Stops when no removal helps, after ``max_rounds`` rounds, or when
    ``max_remove`` of the input atoms are gone. Positions are not moved (refine after)."""
    if not 0 < max_remove < 1:
        raise ValueError(f"prune_by_rwp: max_remove must be in (0, 1), got {max_remove}")
    pos, num = _checked("prune_by_rwp", positions, numbers, batch_frac, min_atoms=1)
    n = len(num)
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


def lattice_vectors(positions: np.ndarray, numbers: np.ndarray, element: int, *, tol: float = 0.35,
                    min_count: int = 3, shell: float = 1.2) -> np.ndarray:
    """The recurring nearest-neighbour vectors (V, 3) Å of one element's sublattice: every vector from an atom of
    ``element`` to another within ``shell`` x the median nearest same-element distance, clustered greedily within
    ``tol`` Å and kept when seen ``min_count`` times. Empty when the element has fewer than 2 atoms."""
    x = np.asarray(positions, dtype=np.float64)[np.asarray(numbers) == element]
    if len(x) < 2:
        return np.zeros((0, 3))
    d = np.linalg.norm(x[:, None] - x[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    cut = shell * float(np.median(d.min(axis=1)))
    i, j = np.nonzero(d < cut)
    vecs = x[j] - x[i]
    centres: list[np.ndarray] = []
    counts: list[int] = []
    members: list[list[np.ndarray]] = []
    for v in vecs:
        for k, c in enumerate(centres):
            if np.linalg.norm(v - c) < tol:
                members[k].append(v)
                counts[k] += 1
                break
        else:
            centres.append(v)
            counts.append(1)
            members.append([v])
    keep = [np.mean(m, axis=0) for m, n in zip(members, counts, strict=True) if n >= min_count]
    return np.asarray(keep).reshape(-1, 3)


def vacant_sites(positions: np.ndarray, numbers: np.ndarray, *, clearance: float = 0.75
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Sites (M, 3) and their elements (M,) one sublattice translation away from an atom of the same element, with
    no atom of that element nearer than ``clearance`` x its nearest-neighbour distance and no other atom nearer
    than ``clearance`` x the shortest distance between unlike atoms; duplicates within 0.5 of that first distance
    merged."""
    pos = np.asarray(positions, dtype=np.float64)
    num = np.asarray(numbers)
    sites, elems = [], []
    d_all = np.linalg.norm(pos[:, None] - pos[None], axis=-1)
    unlike = num[:, None] != num[None]
    hetero = float(np.min(d_all[unlike])) if unlike.any() else np.inf
    for e in np.unique(num):
        vecs = lattice_vectors(pos, num, int(e))
        if not len(vecs):
            continue
        own = pos[num == e]
        d = np.linalg.norm(own[:, None] - own[None], axis=-1)
        np.fill_diagonal(d, np.inf)
        nn = float(np.median(d.min(axis=1)))
        cand = (own[:, None] + vecs[None]).reshape(-1, 3)
        near_own = np.linalg.norm(cand[:, None] - own[None], axis=-1).min(axis=1)
        ok = near_own > clearance * nn
        other = pos[num != e]
        if len(other):
            ok &= np.linalg.norm(cand[:, None] - other[None], axis=-1).min(axis=1) > clearance * hetero
        cand = cand[ok]
        chosen: list[np.ndarray] = []
        for c in cand:
            if all(np.linalg.norm(c - q) > 0.5 * nn for q in chosen):
                chosen.append(c)
        sites.extend(chosen)
        elems.extend([int(e)] * len(chosen))
    return np.asarray(sites).reshape(-1, 3), np.asarray(elems, dtype=np.int64)


def _shortest(pos: np.ndarray) -> float:
    d = np.linalg.norm(pos[:, None] - pos[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    return float(d.min())


def _separated(sites: np.ndarray, order: np.ndarray, sep: float) -> np.ndarray:
    """The sites of ``order`` (best first) kept greedily so that no two kept ones are closer than ``sep``."""
    kept: list[int] = []
    for k in order:
        if all(np.linalg.norm(sites[k] - sites[j]) >= sep for j in kept):
            kept.append(int(k))
    return np.asarray(kept, dtype=np.int64)


def add_one_rwp(positions: np.ndarray, numbers: np.ndarray, sites: np.ndarray, elements: np.ndarray,
                target_g: np.ndarray | torch.Tensor, pdf_cfg: PDFConfig) -> np.ndarray:
    """R_wp of the structure with site k added (element ``elements[k]``), for every site, in chunked batches."""
    pos = torch.as_tensor(np.asarray(positions), dtype=torch.float64)
    num = torch.as_tensor(np.asarray(numbers), dtype=torch.long)
    target = torch.as_tensor(np.asarray(target_g), dtype=torch.float64).reshape(1, -1)
    n, m = num.shape[0] + 1, len(sites)
    out = np.full(m, np.inf)
    chunk = max(1, int(PAIR_BUDGET // max(1, n * n // 2)))
    s_t = torch.as_tensor(sites, dtype=torch.float64)
    e_t = torch.as_tensor(elements, dtype=torch.long)
    with torch.no_grad():
        for start in range(0, m, chunk):
            b = min(chunk, m - start)
            p = torch.cat([pos.expand(b, -1, 3), s_t[start: start + b, None]], dim=1)
            z = torch.cat([num.expand(b, -1), e_t[start: start + b, None]], dim=1)
            out[start: start + b] = _rwp_of(p, z, torch.ones(b, n, dtype=torch.bool), target, pdf_cfg).numpy()
    return out


def grow_by_rwp(positions: np.ndarray, numbers: np.ndarray, target_g: np.ndarray | torch.Tensor,
                pdf_cfg: PDFConfig = PDFConfig(), *, max_add: float = 1.0, max_rounds: int = 12,
                batch_frac: float = 0.5, min_gain: float = 1e-4, max_sites: int = 384, seed: int = 0) -> Pruned:
    """Greedy growth, the mirror of :func:`prune_by_rwp`: each round the vacant sites (:func:`vacant_sites`) whose
    single addition lowers R_wp are ranked; the best ``batch_frac`` of them, mutually farther apart than 0.75 x
    the structure's shortest distance, are added together if that lowers R_wp, else half as many, down to one.
    At most ``max_add`` x the input count of atoms is added. Each round scores at most ``max_sites`` sites (a
    seeded random subset): the cost is sites x atoms², the budget of a 2-core machine. ``kept`` marks the input
    atoms (all True); added atoms follow them in ``positions``."""
    if max_add <= 0:
        raise ValueError(f"grow_by_rwp: max_add must be > 0, got {max_add}")
    pos, num = _checked("grow_by_rwp", positions, numbers, batch_frac, min_atoms=2)
    n0 = len(num)
    target = torch.as_tensor(np.asarray(target_g), dtype=torch.float64).reshape(1, -1)

    def score(p: np.ndarray, z: np.ndarray) -> float:
        with torch.no_grad():
            return float(_rwp_of(torch.as_tensor(p)[None], torch.as_tensor(z)[None],
                                 torch.ones(1, len(z), dtype=torch.bool), target, pdf_cfg)[0])

    rng = np.random.default_rng(seed)
    r0 = current = score(pos, num)
    limit = n0 + max(1, math.floor(max_add * n0))
    rounds = 0
    for rounds in range(1, max_rounds + 1):  # noqa: B007  (rounds is reported)
        budget = limit - len(num)
        if budget <= 0:
            rounds -= 1
            break
        sites, elems = vacant_sites(pos, num)
        if not len(sites):
            break
        if len(sites) > max_sites:
            pick = np.sort(rng.choice(len(sites), max_sites, replace=False))
            sites, elems = sites[pick], elems[pick]
        add = add_one_rwp(pos, num, sites, elems, target, pdf_cfg)
        gain = current - add
        order = np.argsort(-gain, kind="stable")
        helpful = order[gain[order] > min_gain][:budget]
        if helpful.size == 0:
            break
        helpful = _separated(sites, helpful, 0.75 * _shortest(pos))
        m = max(1, math.ceil(batch_frac * helpful.size))
        while True:
            pick = helpful[:m]
            p, z = np.concatenate([pos, sites[pick]]), np.concatenate([num, elems[pick]])
            r = score(p, z) if m > 1 else float(add[helpful[0]])
            if r < current or m == 1:
                break
            m //= 2
        pos, num, current = p, z, r
    return Pruned(pos, num, np.ones(n0, dtype=bool), r0, current, rounds)


@dataclass
class Reshaped:
    positions: list[np.ndarray]  # per structure, (n_i, 3)
    numbers: list[np.ndarray]  # per structure, (n_i,)
    rwp: np.ndarray  # (B,) after the stage; never above the input's
    changed: np.ndarray  # (B,) bool: the reshaped structure replaced the input
    g_sim: list[np.ndarray | None]  # (n_r,) G(r) of each replaced structure (refinement's); None where unchanged


def reshape_and_refine(positions: list[np.ndarray], numbers: list[np.ndarray], rwp_now: np.ndarray,
                       target_g: np.ndarray | torch.Tensor, pdf_cfg: PDFConfig, refine_steps: int, *,
                       prune: bool = True, grow: bool = False) -> Reshaped:
    """The topology stage after position refinement: each refined structure is grown (optional) and pruned by
    R_wp, the results refined again in one batch, and each replaces its input only where that lowers R_wp
    (``rwp_now``, the input's R_wp), so the stage never makes a candidate worse."""
    rwp_now = np.asarray(rwp_now, dtype=np.float64)
    if not (len(positions) == len(numbers) == len(rwp_now)):
        raise ValueError(f"reshape_and_refine: {len(positions)} positions, {len(numbers)} numbers, "
                         f"{len(rwp_now)} R_wp values")
    out_p, out_z = [np.asarray(p) for p in positions], [np.asarray(z) for z in numbers]
    changed = np.zeros(len(out_p), dtype=bool)
    g_sim: list[np.ndarray | None] = [None] * len(out_p)
    if not out_p or not (prune or grow):
        return Reshaped(out_p, out_z, rwp_now.copy(), changed, g_sim)
    cuts = []
    for p, z in zip(out_p, out_z, strict=True):
        if grow:
            grown = grow_by_rwp(p, z, target_g, pdf_cfg)
            p, z = grown.positions, grown.numbers
        if prune:
            cut = prune_by_rwp(p, z, target_g, pdf_cfg)
            p, z = cut.positions, cut.numbers
        cuts.append((p, z))
    res = refine_ragged([c[0] for c in cuts], [c[1] for c in cuts], target_g, pdf_cfg, steps=refine_steps)
    final = rwp_now.copy()
    for j, (_, z) in enumerate(cuts):
        if res.rwp_after[j] < final[j]:
            final[j], changed[j] = float(res.rwp_after[j]), True
            out_p[j], out_z[j], g_sim[j] = res.positions[j, : len(z)], z, res.g_sim[j]
    return Reshaped(out_p, out_z, final, changed, g_sim)
