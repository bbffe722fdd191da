"""Off-library variants: determinism, exact rebuild from recorded parameters, shapes as asked, M:O bound,
physical distances, every prototype at any metal from 5 to 12 Å, and the generator wiring."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
from scipy.spatial import cKDTree

from pdfusion.config import (
    DEFAULT_VARIANT_MIX,
    ConfigError,
    GenerateConfig,
    PDFConfig,
    VariantConfig,
    VariantGenerateConfig,
    VariantMixConfig,
    to_dict,
)
from pdfusion.structures.particle import OXYGEN
from pdfusion.structures.particles import bond_cutoff, make_particle
from pdfusion.structures.prototypes import PROTOTYPES, unit_cell
from pdfusion.structures.variants import (
    _cut,
    _vacancies,
    facet_normals,
    facet_volume,
    is_off_library,
    make_variant,
    mo_deviation,
    sample_variant,
    surface_atoms,
    variant_from_meta,
)


def _axis_ratios(pos: np.ndarray) -> np.ndarray:
    """Semi-axis ratios of a filled ellipsoid from its gyration tensor (eigenvalue_i = a_i^2 / 5), sorted."""
    x = pos - pos.mean(0)
    ev = np.linalg.eigvalsh(x.T @ x / len(x))
    a = np.sqrt(5 * ev)
    return np.sort(a)[::-1]


def test_sampling_and_building_are_seeded():
    a = sample_variant("spinel", "Co", 8.0, np.random.default_rng(3), DEFAULT_VARIANT_MIX)
    b = sample_variant("spinel", "Co", 8.0, np.random.default_rng(3), DEFAULT_VARIANT_MIX)
    c = sample_variant("spinel", "Co", 8.0, np.random.default_rng(4), DEFAULT_VARIANT_MIX)
    assert a == b and a != c
    pa, pb = make_variant(a), make_variant(b)
    assert np.array_equal(pa.numbers, pb.numbers) and np.array_equal(pa.positions, pb.positions)
    noisy = VariantConfig("rocksalt", "Co", 7.0, thermal_sigma=0.05, seed=1)
    p1, p2 = make_variant(noisy), make_variant(replace(noisy, seed=2))
    assert not np.allclose(p1.positions, p2.positions)


@pytest.mark.parametrize("seed", range(6))
def test_recorded_parameters_rebuild_the_structure_exactly(seed):
    vc = sample_variant("wurtzite", "Zr", 9.0, np.random.default_rng(seed),
                        replace(DEFAULT_VARIANT_MIX, vacancies=1.0, relaxation=1.0, thermal=1.0, strain=1.0))
    p = make_variant(vc)
    assert p is not None
    meta = json.loads(json.dumps(p.meta))  # as a dataset row stores it
    again = make_variant(variant_from_meta(meta))
    assert np.array_equal(again.numbers, p.numbers)
    assert np.array_equal(again.positions, p.positions)
    assert variant_from_meta(meta) == vc


def test_plain_variant_is_the_library_cut():
    """No modification: the same atoms as the seed-convention sphere of structures.particles."""
    for t in ("rocksalt", "spinel", "rutile", "corundum"):
        p = make_variant(VariantConfig(t, "Ti", 7.0))
        ref = make_particle(t, "Ti", 7.0)
        assert not is_off_library(variant_from_meta(p.meta))
        assert len(p) == len(ref) and np.array_equal(np.sort(p.numbers), np.sort(ref.numbers))
        d = cKDTree(ref.positions).query(p.positions)[0]
        assert d.max() < 1e-6


def test_ellipsoid_axis_ratios_are_measured():
    ratios = (1.5, 1.0, 1 / 1.5)
    quat = tuple(np.array([0.9, 0.3, -0.2, 0.25]) / np.linalg.norm([0.9, 0.3, -0.2, 0.25]))
    vc = VariantConfig("rocksalt", "Co", 12.0, "ellipsoid", axis_ratios=ratios, orientation=quat)
    p = make_variant(vc)
    metals = p.positions[p.numbers != OXYGEN]
    a = _axis_ratios(metals)
    assert a[0] / a[2] == pytest.approx(1.5**2, rel=0.08)
    assert a[0] / a[1] == pytest.approx(1.5, rel=0.08)
    # the mean semi-axis stays the radius (axis product 1: a sphere's volume)
    assert np.prod(a) ** (1 / 3) == pytest.approx(12.0, rel=0.08)
    sphere = _axis_ratios(make_variant(VariantConfig("rocksalt", "Co", 12.0)).positions)
    assert sphere[0] / sphere[2] < 1.05


def test_faceted_cut_is_bounded_by_its_planes():
    cell = unit_cell("rocksalt", "Co")
    d100, d111 = 9.0, 9.0 * 1.2  # a cube truncated at the corners
    p = make_variant(VariantConfig("rocksalt", "Co", 1.0, "faceted", facet_100=d100, facet_111=d111))
    m = p.positions[p.numbers != OXYGEN]  # atom-centred rocksalt: the centroid is the cut's centre
    n100, n111 = facet_normals(cell.lattice, "100"), facet_normals(cell.lattice, "111")
    assert (m @ n100.T).max() <= d100 + 1e-6 and (m @ n111.T).max() <= d111 + 1e-6
    a = cell.parameters["a"]
    assert (m @ n100.T).max() > d100 - a / 2  # each face is populated, not a sphere inside the box
    assert (m @ n111.T).max() > d111 - a / 2
    sphere_like = np.linalg.norm(m, axis=1).max()
    assert sphere_like > d100 * 1.15  # edges reach out beyond the inscribed sphere


def test_facet_scaling_keeps_the_sphere_volume():
    for t in ("rocksalt", "wurtzite", "rutile"):
        lat = unit_cell(t, "Co").lattice
        assert facet_volume(lat, 1.0, None) == pytest.approx(8.0, rel=0.01) if t == "rocksalt" else True
        vc = sample_variant(t, "Co", 10.0, np.random.default_rng(0), VariantMixConfig(faceted=1.0))
        vol = facet_volume(lat, vc.facet_100 * 10.0, vc.facet_111 * 10.0)
        assert vol == pytest.approx(4 / 3 * math.pi * 1000.0, rel=1e-6)


def test_off_centre_cut_differs_from_the_atom_centred_one():
    base = make_variant(VariantConfig("fluorite", "La", 8.0))
    off = make_variant(VariantConfig("fluorite", "La", 8.0, center=(0.13, 0.41, 0.77)))
    assert off.meta["center"] == "point" and base.meta["center"] == "atom"
    assert len(off) != len(base) or not np.allclose(np.sort(np.linalg.norm(off.positions, axis=1)),
                                                    np.sort(np.linalg.norm(base.positions, axis=1)))


def test_vacancies_remove_only_undercoordinated_atoms_and_keep_mo_bound():
    vc = VariantConfig("rocksalt", "Co", 12.0, vacancy_fraction=0.5, mo_bound=0.4, seed=5)
    numbers, pos, bulk, cutoff, _, _ = _cut(vc)
    surface = surface_atoms(numbers, pos, bulk, cutoff)
    assert 0 < surface.sum() < len(numbers)
    keep = _vacancies(vc, numbers, pos, bulk, cutoff, np.random.default_rng(0))
    gone = np.flatnonzero(~keep)
    assert gone.size > 0 and np.any(numbers[gone] != OXYGEN) and np.any(numbers[gone] == OXYGEN)
    # removed: surface atoms, plus oxygens orphaned by a removed metal (never a bulk atom that keeps a metal)
    kept_m = pos[keep & (numbers != OXYGEN)]
    for i in gone:
        if not surface[i]:
            assert numbers[i] == OXYGEN and cKDTree(kept_m).query(pos[i])[0] >= cutoff
    assert mo_deviation(numbers[keep], "rocksalt") <= 0.4 + 1e-12
    # every oxygen left has a metal
    o = pos[keep & (numbers == OXYGEN)]
    assert cKDTree(kept_m).query(o)[0].max() < cutoff


@pytest.mark.parametrize("t", ["rocksalt", "reo3", "cuprite", "spinel"])
def test_vacancies_never_push_mo_past_the_bound(t):
    """Small cuts are O-rich (complete polyhedra), beyond the bound: there a vacancy only moves toward it."""
    for seed in range(4):
        vc = VariantConfig(t, "Ga", 6.0 + 2 * seed, vacancy_fraction=0.4, mo_bound=0.15, seed=seed)
        cut = _cut(vc)[0]
        p = make_variant(vc)
        assert p.meta["vacancies"] > 0
        assert mo_deviation(p.numbers, t) <= max(0.15, mo_deviation(cut, t)) + 1e-12


def test_the_bound_is_what_stops_removal():
    """Removing every surface atom would leave a metal-rich core far off the formula: with a tight bound the
    particle ends inside it; a loose bound lets many more atoms go."""
    tight = VariantConfig("rocksalt", "Co", 10.0, vacancy_fraction=1.0, mo_bound=0.05, seed=1)
    numbers, pos, bulk, cutoff, _, _ = _cut(tight)
    assert mo_deviation(numbers, "rocksalt") > 0.3  # the perfect cut is O-rich
    keep = _vacancies(tight, numbers, pos, bulk, cutoff, np.random.default_rng(0))
    assert (~keep).sum() > 50
    assert mo_deviation(numbers[keep], "rocksalt") <= 0.05
    loose = _vacancies(replace(tight, mo_bound=0.9), numbers, pos, bulk, cutoff, np.random.default_rng(0))
    assert (~loose).sum() > (~keep).sum() + 50


def test_strain_stretches_the_shell_not_the_core():
    plain = make_variant(VariantConfig("spinel", "Sn", 10.0))
    strained = make_variant(VariantConfig("spinel", "Sn", 10.0, strain=0.04, core_fraction=0.5))
    assert np.array_equal(plain.numbers, strained.numbers)
    r0, r1 = np.linalg.norm(plain.positions, axis=1), np.linalg.norm(strained.positions, axis=1)
    rc = 0.5 * r0.max()
    core = r0 < rc - 0.2
    assert np.abs(r1[core] - r0[core]).max() < 0.05  # only the centroid may move a little
    assert r1.max() == pytest.approx(r0.max() + 0.04 * (r0.max() - rc), abs=0.05)


def test_relaxation_moves_the_surface_and_decays_inward():
    plain = make_variant(VariantConfig("rocksalt", "Ba", 10.0))
    relaxed = make_variant(VariantConfig("rocksalt", "Ba", 10.0, relax_amplitude=0.2, decay_length=1.0))
    shift = np.linalg.norm(relaxed.positions, axis=1) - np.linalg.norm(plain.positions, axis=1)
    r0 = np.linalg.norm(plain.positions, axis=1)
    assert shift[r0 > r0.max() - 0.5].mean() == pytest.approx(0.2, abs=0.03)
    # the core (a bond or more below every surface atom) barely moves: exp(-depth / 1 Å)
    assert np.abs(shift[r0 < 5.0]).max() < 0.1 * 0.2


def test_thermal_snapshot_has_the_stated_amplitude():
    plain = make_variant(VariantConfig("corundum", "Pt", 9.0))
    hot = make_variant(VariantConfig("corundum", "Pt", 9.0, thermal_sigma=0.06, seed=3))
    d = hot.positions - plain.positions
    assert d.std() == pytest.approx(0.06, rel=0.1)


@pytest.mark.parametrize("t", sorted(PROTOTYPES))
def test_every_prototype_any_metal_5_to_12_angstrom(t):
    rng = np.random.default_rng(hash(t) % 2**32)
    built = 0
    for metal in ("Li", "Co", "Zr", "Ba", "Pt", "Hg"):
        for radius in (5.0, 12.0):
            vc = sample_variant(t, metal, radius, rng, DEFAULT_VARIANT_MIX)
            p = make_variant(vc)
            if p is None:
                continue
            built += 1
            assert p.min_distance() >= 1.2
            assert set(np.unique(p.numbers)) == {OXYGEN, p.metal}
            assert p.meta["structure_type"] == t and p.meta["radius"] == radius
            # no stray atom: everyone has a neighbour within the (displaced) bond length
            cutoff = bond_cutoff(unit_cell(t, metal)) * 1.15 + 0.3
            d, _ = cKDTree(p.positions).query(p.positions, k=2)
            assert d[:, 1].max() < cutoff
            outer = np.linalg.norm(p.positions, axis=1).max()
            assert outer > 0.6 * radius
    assert built >= 10


def test_sample_variant_follows_the_fractions():
    rng = np.random.default_rng(0)
    mix = VariantMixConfig(ellipsoid=0.3, faceted=0.2, off_centre=0.5, vacancies=0.25, thermal=0.0)
    draws = [sample_variant("rutile", "Ti", 6.0, rng, mix) for _ in range(400)]
    shapes = [d.shape for d in draws]
    assert shapes.count("ellipsoid") / 400 == pytest.approx(0.3, abs=0.07)
    assert shapes.count("faceted") / 400 == pytest.approx(0.2, abs=0.07)
    assert np.mean([d.center is not None for d in draws]) == pytest.approx(0.5, abs=0.08)
    assert np.mean([d.vacancy_fraction > 0 for d in draws]) == pytest.approx(0.25, abs=0.07)
    assert all(d.thermal_sigma == 0 for d in draws)
    for d in draws:
        assert np.prod(d.axis_ratios) == pytest.approx(1.0)
        assert max(d.axis_ratios) / min(d.axis_ratios) <= mix.axis_ratio_max + 1e-9
    nothing = sample_variant("rutile", "Ti", 6.0, rng, VariantMixConfig())
    assert not is_off_library(nothing)


def test_variant_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="shape"):
        VariantConfig(shape="cube")
    with pytest.raises(ConfigError, match="facet_100"):
        VariantConfig(shape="faceted")
    with pytest.raises(ConfigError, match="orientation"):
        VariantConfig(orientation=(1.0, 1.0, 0.0, 0.0))
    with pytest.raises(ConfigError, match="faceted"):
        VariantMixConfig(ellipsoid=0.7, faceted=0.5)
    with pytest.raises(ValueError, match="variant_params"):
        variant_from_meta({"structure_type": "rocksalt"})


def test_generator_rows_record_their_variant(tmp_path):
    from pdfusion.data.generate import build_records, config_hash, expand_grid

    fast = PDFConfig(rmax=12.0, rstep=0.05)
    plain = GenerateConfig(out_dir=str(tmp_path / "a"), types=("spinel", "cscl"), metals=("Co",), radii=(5.0,),
                           variants=3, pdf=fast, seed=2)
    varied = VariantGenerateConfig(**{k: getattr(plain, k) for k in to_dict(plain) if k not in ("pdf", "augment")},
                                   pdf=fast, augment=plain.augment, off_library=DEFAULT_VARIANT_MIX)
    assert config_hash(plain) != config_hash(varied)
    recs_plain, _ = build_records(plain, expand_grid(plain)[0])
    assert all("variant_params" not in r.meta for r in recs_plain)
    recs, dropped = build_records(varied, expand_grid(varied)[0])
    assert len(recs) + len(dropped) == 6
    again, _ = build_records(varied, expand_grid(varied)[0])
    for r, r2 in zip(recs, again, strict=True):
        assert np.array_equal(r.positions, r2.positions)
        p = make_variant(variant_from_meta(r.meta))
        assert np.array_equal(p.numbers, r.numbers) and np.array_equal(p.positions, r.positions)


def _generate_job():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "jobs" / "generate_dataset.py"
    spec = importlib.util.spec_from_file_location("generate_dataset_job", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_generate_job_off_library_flag(tmp_path):
    job = _generate_job()
    grid = ["--out", str(tmp_path / "g"), "--types", "NaCl", "--metals", "Ti", "--radii", "5"]
    plain = job.config_from_args(job.build_parser().parse_args(grid))
    assert type(plain) is GenerateConfig  # the default grid is untouched
    cfg = job.config_from_args(job.build_parser().parse_args([*grid, "--off-library"]))
    assert isinstance(cfg, VariantGenerateConfig) and cfg.off_library == DEFAULT_VARIANT_MIX
    cfg = job.config_from_args(job.build_parser().parse_args(
        [*grid, "--off-library", "ellipsoid=0.5", "thermal=1", "thermal_range=0.01,0.02"]))
    assert cfg.off_library == VariantMixConfig(ellipsoid=0.5, thermal=1.0, thermal_range=(0.01, 0.02))
    with pytest.raises(ConfigError, match="off-library"):
        job.config_from_args(job.build_parser().parse_args([*grid, "--off-library", "cubes=0.5"]))
