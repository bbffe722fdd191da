"""Atom counts for a PDF's candidates, read off the library structures that fit it best after an expansion fit.

Why: the count head regresses to its training mean (median draws of ~250 atoms for beyond-library targets of
53–867), while the expansion-fitted nearest perfect cut of the target's metal has nearly the target's size
(docs/evaluation.md, r11). A candidate of the wrong size cannot fit however well the model places it, and pruning
(:mod:`pdfusion.inference.topology`) narrows a size only from above, so ``scale`` > 1 samples larger than the
library's count for the pruning stage to carve.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch

from pdfusion.config import BeyondLibraryConfig, PDFConfig
from pdfusion.data.generate import simulate_batch
from pdfusion.inference.library import build_library
from pdfusion.inference.lookup import nearest_library
from pdfusion.inference.refine import pad_structures
from pdfusion.pdf.fitting import fit_expansion
from pdfusion.structures.particle import Particle

__all__ = ["LIBRARY_RADII", "library_fit_sizes", "metal_library", "sizes_for"]

# perfect atom-centred spherical cuts every 0.5 Å from 4 to 14 Å (the beyond-library benchmark's library)
LIBRARY_RADII: tuple[float, ...] = BeyondLibraryConfig.library_radii
LIBRARY_MAX_ATOMS = 6000  # a 14 Å cut of the densest prototype holds ~1,500 atoms; this only bounds the cost


@lru_cache(maxsize=8)
def metal_library(metal: str, pdf_cfg: PDFConfig, radii: tuple[float, ...] = LIBRARY_RADII,
                  max_atoms: int = LIBRARY_MAX_ATOMS) -> tuple[tuple[Particle, ...], np.ndarray]:
    """Every oxide prototype of ``metal`` cut as a perfect sphere at each of ``radii`` (one per distinct size) and
    their G(r) under ``pdf_cfg``; cached, since a service sizes many PDFs of one metal (~15 s per metal)."""
    lib = build_library(f"{metal}O", radii, families=("oxide",), max_atoms=max_atoms)
    g = simulate_batch(lib, pdf_cfg)
    return tuple(lib), g


def library_fit_sizes(target_g: np.ndarray, library: Sequence[Particle], library_g: np.ndarray, pdf_cfg: PDFConfig,
                      k: int, *, top: int = 4, pool: int = 16, scale: float = 1.0, max_atoms: int | None = None,
                      expansion: tuple[float, float] = (0.85, 1.15)) -> list[int]:
    """``k`` atom counts for one target G(r): its ``pool`` nearest library PDFs by raw R_wp are fitted by an
    isotropic expansion, and the atom counts of the ``top`` best fits, each times ``scale``, fill the ``k`` slots in
    turn (best first), clamped to [2, ``max_atoms``]."""
    if k < 1 or top < 1 or pool < 1:
        raise ValueError(f"library_fit_sizes: k, top and pool must be >= 1, got k={k}, top={top}, pool={pool}")
    if not (scale > 0 and np.isfinite(scale)):
        raise ValueError(f"library_fit_sizes: scale must be finite and > 0, got {scale}")
    if len(library) == 0 or len(library) != len(library_g):
        raise ValueError(f"library_fit_sizes: need one G(r) per library structure, got {len(library)} structures "
                         f"and {len(library_g)} curves")
    target = np.asarray(target_g, dtype=np.float64)
    near = nearest_library(target[None], np.asarray(library_g), min(pool, len(library)))[0]
    cands = [library[int(j)] for j in near]
    pos, num, mask = (torch.as_tensor(a) for a in pad_structures([c.positions for c in cands],
                                                                 [c.numbers for c in cands]))
    tgt = torch.as_tensor(target)[None].expand(len(cands), -1)
    fit = fit_expansion(pos, num, mask, tgt, pdf_cfg, lo=expansion[0], hi=expansion[1], coarse=13, fine=11)
    order = np.argsort(fit.rwp.numpy(), kind="stable")[:top]
    hi = max_atoms if max_atoms is not None else np.inf
    counts = [int(np.clip(round(len(cands[i]) * scale), 2, hi)) for i in order]
    return [counts[j % len(counts)] for j in range(k)]


def sizes_for(pdfs: np.ndarray, metals: Sequence[str], pdf_cfg: PDFConfig, k: int, *, scale: float = 1.0,
              max_atoms: int | None = None) -> list[list[int]]:
    """``k`` atom counts for each PDF (rows of ``pdfs``) from its metal's library (:func:`metal_library`):
    ``SampleConfig.sizing = "library"``."""
    out = []
    for g, metal in zip(np.atleast_2d(np.asarray(pdfs, dtype=np.float64)), metals, strict=True):
        lib, lib_g = metal_library(str(metal), pdf_cfg)
        out.append(library_fit_sizes(g, lib, lib_g, pdf_cfg, k, scale=scale, max_atoms=max_atoms))
    return out
