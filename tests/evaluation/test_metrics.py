import numpy as np
import pytest

from pdfusion.evaluation import metrics
from pdfusion.structures.particle import Particle


def _random_rotation(rng):
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q *= np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] *= -1
    return q


def _rocksalt_cluster(n_side=3, a=4.2):
    g = np.arange(n_side) * a / 2
    pts = np.array([(x, y, z) for x in g for y in g for z in g])
    idx = np.round(pts / (a / 2)).astype(int).sum(axis=1) % 2
    numbers = np.where(idx == 0, 22, 8)
    return Particle(numbers, pts - pts.mean(axis=0))


def test_rmsd_zero_against_itself_and_rotated_permuted_copy():
    rng = np.random.default_rng(0)
    ref = _rocksalt_cluster()
    ref = Particle(ref.numbers, ref.positions + rng.normal(scale=0.05, size=ref.positions.shape))
    assert metrics.rmsd(ref, ref) == pytest.approx(0.0, abs=1e-9)
    perm = rng.permutation(len(ref))
    moved = Particle(ref.numbers[perm], ref.positions[perm] @ _random_rotation(rng).T + np.array([3.0, -1.0, 2.0]))
    assert metrics.rmsd(moved, ref) < 1e-6


def test_rmsd_detects_distortion_and_composition_mismatch():
    rng = np.random.default_rng(1)
    ref = _rocksalt_cluster()
    noisy = Particle(ref.numbers, ref.positions + rng.normal(scale=0.3, size=ref.positions.shape))
    value = metrics.rmsd(noisy, ref)
    assert 0.1 < value < 0.6
    other = Particle(np.where(ref.numbers == 22, 26, 8), ref.positions)
    assert metrics.rmsd(other, ref) == float("inf")


def test_validity_flags_close_and_isolated_atoms():
    ref = _rocksalt_cluster()
    assert metrics.validity(ref.positions).valid
    close = ref.positions.copy()
    close[1] = close[0] + np.array([0.5, 0.0, 0.0])
    v = metrics.validity(close)
    assert not v.valid and v.min_distance == pytest.approx(0.5)
    far = np.vstack([ref.positions, [[50.0, 0.0, 0.0]]])
    v = metrics.validity(far)
    assert not v.valid and v.isolated_fraction == pytest.approx(1 / len(far))


def test_stoichiometry_error_closed_form():
    ref = np.array([22, 8, 8])  # TiO2: M:O = 0.5
    cand = np.array([22, 22, 8, 8])  # 1.0
    assert metrics.stoichiometry_error(cand, ref) == pytest.approx(1.0)
    assert metrics.stoichiometry_error(ref, ref) == 0.0


def test_diversity_zero_for_identical_positive_for_different():
    ref = _rocksalt_cluster()
    assert metrics.pairwise_diversity([ref.positions, ref.positions.copy()]) == 0.0
    rng = np.random.default_rng(2)
    assert metrics.pairwise_diversity([ref.positions, rng.normal(scale=3.0, size=ref.positions.shape)]) > 0.1


def test_best_of_k_is_the_one_median_and_name():
    assert metrics.BEST_OF_K_METRIC == "rwp_best_median" and metrics.VAL_BEST_OF_K_METRIC == "val_rwp_best_median"
    assert metrics.best_of_k([0.3, 0.1, 0.2, 0.6]) == {"rwp_best_median": pytest.approx(0.25),
                                                       "rwp_best_mean": pytest.approx(0.3)}
    assert metrics.best_of_k([0.4], prefix="val_") == {"val_rwp_best_median": 0.4, "val_rwp_best_mean": 0.4}
    assert metrics.best_of_k([]) == {"rwp_best_median": float("inf"), "rwp_best_mean": float("inf")}
    nan = metrics.best_of_k([], empty=float("nan"))
    assert all(v != v for v in nan.values())
