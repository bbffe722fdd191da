"""Sanity of the evaluation harness on structures the test builds itself."""

import numpy as np
import pytest

from pdfusion.config import PDFConfig
from pdfusion.evaluation import harness
from pdfusion.structures.particle import Particle

CFG = PDFConfig(rmax=15.0)


def _rocksalt(metal: int, a: float, radius: float = 5.0) -> Particle:
    n = int(np.ceil(radius / (a / 2))) + 1
    g = np.arange(-n, n + 1)
    ijk = np.array(np.meshgrid(g, g, g, indexing="ij")).reshape(3, -1).T
    pos = ijk * a / 2
    keep = np.linalg.norm(pos, axis=1) <= radius
    numbers = np.where(ijk.sum(axis=1) % 2 == 0, metal, 8)
    return Particle(numbers[keep], pos[keep], {"source": f"rs_{metal}_{a}", "formula": "MO"})


def _rotation(rng):
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q *= np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


@pytest.fixture(scope="module")
def library():
    parts = [_rocksalt(m, a) for m in (22, 26, 28) for a in (4.0, 4.2, 4.4, 4.6)]
    pdfs = harness.simulate_many(parts, CFG)
    return parts, pdfs


def _targets(parts, pdfs, idx):
    return [harness.Target(i, pdfs[i], parts[i], dict(parts[i].meta)) for i in idx]


def test_truth_scores_zero_rwp_and_rmsd_even_rotated_and_permuted(library):
    parts, pdfs = library
    rng = np.random.default_rng(0)

    def oracle(targets, k, seed):
        out = []
        for t in targets:
            cands = []
            for _ in range(k):
                perm = rng.permutation(len(t.truth))
                pos = t.truth.positions[perm] @ _rotation(rng).T + rng.normal(size=3)
                cands.append(Particle(t.truth.numbers[perm], pos))
            out.append(harness.Proposal(cands, 0, 0.0))
        return out

    rows, _ = harness.score_targets(oracle, _targets(parts, pdfs, [0, 5]), CFG, k=3)
    for row in rows:
        assert row["rwp_best"] < 1e-6 and row["rwp_mean"] < 1e-6
        assert row["rmsd_best"] < 1e-6
        assert row["valid_fraction"] == 1.0 and row["n_atoms_error"] == 0.0 and row["mo_ratio_error"] == 0.0
        assert row["nan_count"] == 0


def test_random_baseline_clearly_worse_than_library(library):
    parts, pdfs = library
    val = [1, 6, 10]
    train = [i for i in range(len(parts)) if i not in val]
    targets = _targets(parts, pdfs, val)
    lib_rows, _ = harness.score_targets(harness.library_method([parts[i] for i in train], pdfs[train]),
                                        targets, CFG, k=4)
    rnd_rows, _ = harness.score_targets(harness.random_method(), targets, CFG, k=4)
    lib, rnd = harness.summarise(lib_rows), harness.summarise(rnd_rows)
    assert lib["rwp_best_median"] < 0.5 * rnd["rwp_best_median"]
    # the random baseline keeps the atom count and stoichiometry exactly
    assert rnd["n_atoms_error_median"] == 0.0 and rnd["mo_ratio_error_median"] == 0.0


def test_missing_candidates_count_as_nan_not_zero(library):
    parts, pdfs = library

    def broken(targets, k, seed):
        return [harness.Proposal([], k, 0.0) for _ in targets]

    rows, _ = harness.score_targets(broken, _targets(parts, pdfs, [2]), CFG, k=5)
    summary = harness.summarise(rows)
    assert summary["nan_total"] == 5 and np.isnan(summary["rwp_best_median"])


def test_refined_wrapper_refines_any_method_and_never_scores_worse(library):
    parts, pdfs = library
    targets = _targets(parts, pdfs, [0, 7])
    raw_rows, raw_props = harness.score_targets(harness.random_method(), targets, CFG, k=3)
    ref_rows, _ = harness.score_targets(harness.refined(harness.random_method(), CFG, steps=40), targets, CFG, k=3)
    for raw, ref in zip(raw_rows, ref_rows, strict=True):
        assert ref["rwp_best"] <= raw["rwp_best"] + 1e-9 and ref["rwp_median"] < raw["rwp_median"]
        assert ref["n_atoms_error"] == raw["n_atoms_error"] and ref["nan_count"] == 0
    # steps=0 is the identity
    same_rows, _ = harness.score_targets(harness.refined(harness.random_method(), CFG, steps=0), targets, CFG, k=3)
    assert [r["rwp_best"] for r in same_rows] == [r["rwp_best"] for r in raw_rows]
