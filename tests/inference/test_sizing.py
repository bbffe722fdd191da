"""Sizing from the fitted library: a PDF of a (strained) library particle gets that particle's atom count, counts are
scaled, clamped and cycled as documented, bad input is refused, and sampling uses the counts when asked to."""

from __future__ import annotations

import numpy as np
import pytest

from pdfusion.config import ConfigError, PDFConfig, SampleConfig
from pdfusion.inference import sizing
from pdfusion.inference.lookup import nearest_library
from pdfusion.inference.sizing import library_fit_sizes, metal_library, sizes_for
from pdfusion.structures.particle import Particle

SMALL_PDF = PDFConfig(rmax=10.0, rstep=0.05, qmax=20.0)
RADII = (3.0, 4.0, 5.0, 6.0)


@pytest.fixture(scope="module")
def library():
    return metal_library("Mg", SMALL_PDF, RADII, 500)


def _target(p: Particle, expansion: float) -> np.ndarray:
    from pdfusion.data.generate import simulate_batch

    return simulate_batch([Particle(p.numbers, p.positions * expansion)], SMALL_PDF)[0]


def test_a_strained_library_particle_is_sized_as_itself(library):
    lib, lib_g = library
    for stype in ("antifluorite", "wurtzite"):  # two prototypes, 47 and 57 atoms
        j = max((i for i, p in enumerate(lib) if p.meta["structure_type"] == stype and len(p) < 100),
                key=lambda i: len(lib[i]))
        target = _target(lib[j], 1.03)  # 3 % expanded: the raw nearest PDF is another particle, the fitted one itself
        assert library_fit_sizes(target, lib, lib_g, SMALL_PDF, k=3, top=1) == [len(lib[j])] * 3
        assert nearest_library(target[None], lib_g, 1)[0, 0] != j


def test_counts_are_scaled_clamped_and_cycled_best_first(library):
    lib, lib_g = library
    target = _target(lib[len(lib) // 2], 1.0)
    best4 = library_fit_sizes(target, lib, lib_g, SMALL_PDF, k=4, top=4)
    assert best4[0] == len(lib[len(lib) // 2])
    assert library_fit_sizes(target, lib, lib_g, SMALL_PDF, k=6, top=2) == [best4[0], best4[1]] * 3
    assert library_fit_sizes(target, lib, lib_g, SMALL_PDF, k=1, top=1, scale=1.5) == [round(best4[0] * 1.5)]
    assert library_fit_sizes(target, lib, lib_g, SMALL_PDF, k=2, top=1, max_atoms=7) == [min(best4[0], 7)] * 2


def test_bad_input_is_refused(library):
    lib, lib_g = library
    with pytest.raises(ValueError, match="scale"):
        library_fit_sizes(lib_g[0], lib, lib_g, SMALL_PDF, k=2, scale=0.0)
    with pytest.raises(ValueError, match="k, top and pool"):
        library_fit_sizes(lib_g[0], lib, lib_g, SMALL_PDF, k=0)
    with pytest.raises(ValueError, match="one G"):
        library_fit_sizes(lib_g[0], lib[:3], lib_g, SMALL_PDF, k=2)
    with pytest.raises(ConfigError, match="sizing"):
        SampleConfig(sizing="oracle")
    with pytest.raises(ConfigError, match="size_scale"):
        SampleConfig(size_scale=-1.0)


def test_sizes_for_reads_each_metals_cached_library(library, monkeypatch):
    lib, lib_g = library
    monkeypatch.setattr(sizing, "metal_library", lambda metal, cfg: library if metal == "Mg" else None)
    target = _target(lib[5], 1.0)
    assert sizes_for(target[None], ["Mg"], SMALL_PDF, 3) == [library_fit_sizes(target, lib, lib_g, SMALL_PDF, 3)]
    assert metal_library("Mg", SMALL_PDF, RADII, 500) is library  # lru cache: one build per metal and PDF setting


def test_sampling_takes_the_librarys_counts_when_asked(monkeypatch):
    from test_candidates import SMALL_PDF as CAND_PDF
    from test_candidates import _gaussian_bundle

    import pdfusion.inference.candidates as cand

    bundle = _gaussian_bundle()
    seen = []

    def fake(pdfs, metals, pdf_cfg, k, *, scale, max_atoms):
        seen.append((list(metals), k, scale, max_atoms))
        return [[5, 7, 9][:k] for _ in metals]

    monkeypatch.setattr(cand, "sizes_for", fake)
    g = np.zeros(CAND_PDF.n_r, dtype=np.float32)
    g[40:60] = 1.0
    cfg = SampleConfig(steps=3, n_samples=3, sizing="library", size_scale=1.25, prune_fragments=False)
    cands = cand.generate_candidates(bundle, g[None], ["Mg"], cfg)[0]
    assert seen == [(["Mg"], 3, 1.25, bundle.diffusion.model_cfg.max_atoms)]
    assert sorted(len(c.numbers) for c in cands) == [5, 7, 9]
    seen.clear()
    cand.generate_candidates(bundle, g[None], ["Mg"], SampleConfig(steps=3, n_samples=3))  # default: the count head
    assert seen == []
