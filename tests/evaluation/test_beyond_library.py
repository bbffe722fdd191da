"""Beyond-library benchmark: targets regenerate from the seed, are off-library at held-out metals, the library
is perfect spherical cuts and never holds a target, scoring finds a planted truth, the model side runs."""

from __future__ import annotations

import importlib.util
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from pdfusion.config import BeyondLibraryConfig, PDFConfig
from pdfusion.evaluation import beyond_library as bl
from pdfusion.inference.sizing import library_fit_sizes
from pdfusion.pdf import rwp
from pdfusion.structures.particle import Particle
from pdfusion.structures.particles import make_particle
from pdfusion.structures.variants import is_off_library, make_variant, variant_from_meta

ROOT = Path(__file__).resolve().parents[2]
SEED_H5 = ROOT.parent / "shared" / "data" / "seed-oxides" / "graphs_h5"
FAST_PDF = PDFConfig(rmax=12.0, rstep=0.05)
SMALL = BeyondLibraryConfig(n_targets=4, seed=3, metals=("Ba", "Zr"), types=("rocksalt", "spinel", "fluorite"),
                            radius_range=(5.0, 7.0), max_atoms=400, library_radii=(4.0, 5.0, 6.0, 7.0, 8.0), k=4,
                            refine_top=1, refine_steps=5)


@pytest.fixture(scope="module")
def targets():
    return bl.build_targets(SMALL, FAST_PDF)


def test_targets_regenerate_from_the_seed(targets):
    again = bl.build_targets(SMALL, FAST_PDF)
    for a, b in zip(targets, again, strict=True):
        assert np.array_equal(a.truth.numbers, b.truth.numbers) and np.array_equal(a.truth.positions, b.truth.positions)
        assert np.array_equal(a.pdf, b.pdf)
    other = bl.build_targets(replace(SMALL, seed=4), FAST_PDF)
    assert any(len(a.truth) != len(b.truth) or not np.allclose(a.pdf, b.pdf)
               for a, b in zip(targets, other, strict=True))


def test_targets_are_off_library_variants_at_the_given_metals(targets):
    assert [t.meta["metal"] for t in targets] == ["Ba", "Zr", "Ba", "Zr"]
    assert [t.meta["structure_type"] for t in targets] == ["rocksalt", "spinel", "fluorite", "rocksalt"]
    for t in targets:
        vc = variant_from_meta(t.meta)
        assert is_off_library(vc)
        assert SMALL.radius_range[0] <= vc.radius <= SMALL.radius_range[1] and len(t.truth) <= SMALL.max_atoms
        rebuilt = make_variant(vc)
        assert np.array_equal(rebuilt.positions, t.truth.positions)


def test_default_metals_are_absent_from_the_seed_data():
    if not SEED_H5.is_dir():
        pytest.skip("seed-oxides data not available")
    assert bl.training_overlap(SEED_H5) == []
    assert bl.training_overlap(SEED_H5, ["Ti", "Co"]) == ["Ti"]


def test_training_overlap_reads_a_generated_store(tmp_path):
    from pdfusion.config import GenerateConfig
    from pdfusion.data.generate import generate

    cfg = GenerateConfig(out_dir=str(tmp_path / "g"), types=("rocksalt",), metals=("Ti", "Zr"), radii=(5.0,),
                         pdf=FAST_PDF)
    generate(cfg)
    assert bl.training_overlap(tmp_path / "g") == ["Zr"]


def test_library_is_perfect_spherical_cuts_and_excludes_the_targets(targets):
    for metal in ("Ba", "Zr"):
        lib, pdfs = bl.library_for(metal, SMALL, FAST_PDF)
        assert len({p.meta["structure_type"] for p in lib}) == 13
        for p in lib[::7]:
            ref = make_particle(p.meta["structure_type"], metal, p.meta["radius"])
            assert p.meta["center"] == "atom" and np.array_equal(p.positions, ref.positions)
        for t in (t for t in targets if t.meta["metal"] == metal):
            g = torch.as_tensor(pdfs)
            scores = rwp(g, torch.as_tensor(t.pdf)[None].expand_as(g))
            assert float(scores.min()) > 0.01  # no library entry reproduces a target


def test_library_proposals_are_the_nearest_of_the_targets_metal(targets):
    props = bl.library_proposals(targets, SMALL, FAST_PDF)
    assert [len(p) for p in props] == [SMALL.k] * len(targets)
    for t, cands in zip(targets, props, strict=True):
        assert all(c.metal == t.truth.metal for c in cands)


def test_scoring_finds_a_planted_truth(targets):
    t = targets[0]
    decoy = make_particle("rocksalt", "Ba", 6.0)
    row = bl.score_proposals(t, [decoy, Particle(t.truth.numbers, t.truth.positions * 1.03)], SMALL, FAST_PDF)
    assert row["rwp_raw"] > 0.05  # the truth 3 % too large fits badly raw
    assert row["rwp_fitted"] < 0.01 and row["expansion_best"] == pytest.approx(1 / 1.03, abs=0.002)
    assert row["rwp_refined"] <= row["rwp_fitted"]
    assert row["composition_match"] == 0.5 and row["rmsd"] < 0.02
    empty = bl.score_proposals(t, [], SMALL, FAST_PDF, nan_count=4)
    assert math.isnan(empty["rwp_refined"]) and empty["nan_count"] == 4


def test_topology_stages_delete_and_add_the_atoms_a_target_needs(targets):
    from pdfusion.evaluation.harness import Target

    small, big = make_particle("rocksalt", "Mg", 4.0), make_particle("rocksalt", "Mg", 5.2)
    g = bl.simulate_many([small], FAST_PDF)[0]
    t = Target(0, g, small, dict(targets[0].meta))
    cfg = replace(SMALL, refine_steps=3, expansion=(0.98, 1.02))
    plain = bl.score_proposals(t, [big], cfg, FAST_PDF)
    cut = bl.score_proposals(t, [big], replace(cfg, prune_atoms=True), FAST_PDF)
    assert plain["atoms_pruned"] == 0 and plain["n_atoms_best"] == len(big)
    assert cut["atoms_pruned"] > 0 and cut["n_atoms_best"] == len(big) - cut["atoms_pruned"]
    assert cut["rwp_refined"] < 0.5 * plain["rwp_refined"]
    assert cut["rwp_fitted"] == plain["rwp_fitted"]  # pruning is a refinement stage only
    # the mirror: a candidate smaller than its target grows towards it
    gt = Target(0, bl.simulate_many([big], FAST_PDF)[0], big, dict(targets[0].meta))
    short = bl.score_proposals(gt, [small], cfg, FAST_PDF)
    grown = bl.score_proposals(gt, [small], replace(cfg, grow_atoms=True), FAST_PDF)
    assert grown["n_atoms_best"] > len(small) and grown["atoms_pruned"] < 0
    assert grown["rwp_refined"] < 0.5 * short["rwp_refined"]


def test_saved_candidates_load_back_exactly(tmp_path):
    parts = [make_particle("rocksalt", "Ba", 4.0), make_particle("spinel", "Zr", 5.0)]
    bl.save_proposals(tmp_path / "c" / "model_000.npz", parts)
    back = bl.load_proposals(tmp_path / "c" / "model_000.npz")
    assert [len(p) for p in back] == [len(p) for p in parts]
    for a, b in zip(parts, back, strict=True):
        assert np.array_equal(a.numbers, b.numbers) and np.array_equal(a.positions, b.positions)
    bl.save_proposals(tmp_path / "empty.npz", [])
    assert bl.load_proposals(tmp_path / "empty.npz") == []
    assert not list(tmp_path.rglob("*.tmp"))


def test_summary_and_head_to_head():
    a = [{"rwp_raw": 0.5, "rwp_fitted": 0.2, "rwp_refined": 0.05, "valid_fraction": 1.0, "rmsd": math.nan,
          "nan_count": 0},
         {"rwp_raw": 0.3, "rwp_fitted": math.nan, "rwp_refined": 0.01, "valid_fraction": 0.5, "rmsd": 0.3,
          "nan_count": 2}]
    b = [{"rwp_raw": 0.4, "rwp_fitted": 0.1, "rwp_refined": 0.02, "valid_fraction": 1.0, "rmsd": math.nan,
          "nan_count": 0}] * 2
    s = bl.summarise(a)
    assert s["rwp_raw_median"] == pytest.approx(0.4) and s["rwp_fitted_median"] == pytest.approx(0.2)
    assert s["rmsd_defined"] == 1 and s["nan_total"] == 2
    h = bl.head_to_head(a, b)
    assert h["frac_rwp_raw_beats"] == 0.5 and h["frac_rwp_fitted_beats"] == 0.0 and h["frac_rwp_refined_beats"] == 0.5


def test_model_side_runs_with_a_tiny_checkpoint(tmp_path):
    from pdfusion.inference.bundle import load_bundle
    from pdfusion_testdata import train_tiny_checkpoint

    parts = [make_particle("rocksalt", m, 4.0) for m in ("Ti", "Mg")]
    ckpt = train_tiny_checkpoint(tmp_path / "tiny.pt", [(p.numbers, p.positions, p.metal) for p in parts], FAST_PDF,
                                 steps=3, max_atoms=64)
    cfg = replace(SMALL, n_targets=2, k=2, refine_steps=2)
    report = bl.run_benchmark(cfg, bundle=load_bundle(str(ckpt)), model_targets=1)
    assert report["model"]["summary"]["n_targets"] == 1 and report["library"]["summary"]["n_targets"] == 2
    assert "frac_rwp_refined_beats" in report["model"]["vs_library"]
    assert "| model | 1 |" in bl.table(report)
    # a run split in two: the second half scores target 1 and saves what it sampled
    half = bl.run_benchmark(cfg, bundle=load_bundle(str(ckpt)), model_targets=1, model_start=1, library=False,
                            save_candidates=tmp_path / "cands")
    assert [r["index"] for r in half["model"]["rows"]] == [1]
    assert sorted(p.name for p in (tmp_path / "cands").iterdir()) == ["model_001.npz"]
    assert len(bl.load_proposals(tmp_path / "cands" / "model_001.npz")) == half["model"]["rows"][0]["n_candidates"]


def test_model_side_can_sample_at_the_nearest_library_entries_atom_counts(tmp_path, monkeypatch):
    from pdfusion.inference.bundle import load_bundle
    from pdfusion_testdata import train_tiny_checkpoint

    parts = [make_particle("rocksalt", m, 4.0) for m in ("Ti", "Mg")]
    ckpt = train_tiny_checkpoint(tmp_path / "tiny.pt", [(p.numbers, p.positions, p.metal) for p in parts], FAST_PDF,
                                 steps=2, max_atoms=160)
    cfg = replace(SMALL, n_targets=1, k=3, refine_steps=2, library_radii=(3.0, 4.0, 5.0))
    bundle = load_bundle(str(ckpt))
    targets = bl.build_targets(cfg, FAST_PDF)
    props, _ = bl.model_proposals(bundle, targets, cfg, sizes=[[7, 9, 11]])
    assert sorted(len(p) for p in props[0]) == [7, 9, 11]
    seen = []
    real = bl.model_proposals

    def spy(*args):
        out = real(*args)
        seen.append(sorted(len(p) for p in out[0][0]))
        return out

    monkeypatch.setattr(bl, "model_proposals", spy)
    report = bl.run_benchmark(cfg, bundle=bundle, sizes="library")
    assert seen == [sorted(len(p) for p in bl.library_proposals(targets, cfg, FAST_PDF)[0])]
    assert report["model"]["sizes"] == "library" and report["model"]["rows"][0]["n_candidates"] == 3
    # "fit": the counts of the best expansion-fitted library entries (inference.sizing), scaled
    seen.clear()
    report = bl.run_benchmark(cfg, bundle=bundle, sizes="fit", size_scale=0.5, library=False)
    lib, lib_g = bl.library_for(bl.element_symbol(targets[0].metal), cfg, FAST_PDF)
    want = library_fit_sizes(targets[0].pdf, lib, lib_g, FAST_PDF, cfg.k, scale=0.5, max_atoms=160)
    assert report["model"]["sizes"] == "library fit x 0.5" and seen == [sorted(want)]
    with pytest.raises(ValueError, match="sizes"):
        bl.run_benchmark(cfg, bundle=bundle, sizes="oracle")


def test_job_refuses_training_data_holding_a_target_metal(tmp_path, capsys):
    from pdfusion.config import GenerateConfig
    from pdfusion.data.generate import generate

    generate(GenerateConfig(out_dir=str(tmp_path / "g"), types=("rocksalt",), metals=("Zr",), radii=(5.0,),
                            pdf=FAST_PDF))
    generate(GenerateConfig(out_dir=str(tmp_path / "ok"), types=("rocksalt",), metals=("Ti",), radii=(5.0,),
                            pdf=FAST_PDF))
    spec = importlib.util.spec_from_file_location("bench_beyond_library",
                                                  ROOT / "benchmarks" / "bench_beyond_library.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    assert job.main(["--train-data", str(tmp_path / "g"), "--out", str(tmp_path / "o")]) == 2
    assert "Zr" in capsys.readouterr().err
    # every store of the model's training data is checked, not only the first (--data + --extra-train)
    assert job.main(["--train-data", str(tmp_path / "ok"), str(tmp_path / "g"), "--out", str(tmp_path / "o")]) == 2
    assert "Zr" in capsys.readouterr().err
