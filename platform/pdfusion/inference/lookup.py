"""Library lookup by PDF: the library structures whose G(r) is nearest a target's by R_wp, in bounded chunks.

Why here: sampling (the size of a candidate, :mod:`pdfusion.inference.sizing`), solving and every baseline read
the same nearest entries, so the lookup sits in the inference layer that all of them may import.
"""

from __future__ import annotations

import numpy as np
import torch

from pdfusion.pdf import rwp

__all__ = ["library_lookup", "nearest_library"]


def _library_rwp(target_pdfs, library_pdfs, chunk_elements: int):
    """R_wp of every (target, library) pair, yielded as (b, L) blocks of at most `chunk_elements` values."""
    t = torch.as_tensor(np.atleast_2d(np.asarray(target_pdfs)), dtype=torch.float64)
    lib = torch.as_tensor(np.asarray(library_pdfs), dtype=torch.float64)
    if lib.ndim != 2 or lib.shape[0] == 0:
        raise ValueError(f"library_pdfs: expected a non-empty (L, n_r) array, got shape {tuple(lib.shape)}")
    if t.shape[-1] != lib.shape[-1]:
        raise ValueError(f"target_pdfs: {t.shape[-1]} points but library PDFs have {lib.shape[-1]}")
    per = max(1, chunk_elements // max(1, lib.numel()))
    for s in range(0, t.shape[0], per):
        tb = t[s : s + per, None, :]
        yield rwp(lib[None, :, :].expand(tb.shape[0], -1, -1), tb.expand(-1, lib.shape[0], -1))


@torch.no_grad()
def nearest_library(target_pdfs: np.ndarray, library_pdfs: np.ndarray, k: int,
                    chunk_elements: int = 20_000_000) -> np.ndarray:
    """(B, k) indices of the k library PDFs with the lowest R_wp to each target, best first."""
    k = min(k, len(library_pdfs))
    blocks = [torch.topk(sc, k, dim=1, largest=False).indices
              for sc in _library_rwp(target_pdfs, library_pdfs, chunk_elements)]
    return torch.cat(blocks).numpy()


@torch.no_grad()
def library_lookup(target_pdfs: torch.Tensor | np.ndarray, library_pdfs: torch.Tensor | np.ndarray,
                   chunk_elements: int = 20_000_000) -> tuple[np.ndarray, np.ndarray]:
    """For each target PDF, the index of the library PDF with the lowest R_wp, and that R_wp."""
    best = [sc.min(dim=1) for sc in _library_rwp(target_pdfs, library_pdfs, chunk_elements)]
    return torch.cat([b.indices for b in best]).numpy(), torch.cat([b.values for b in best]).numpy()
