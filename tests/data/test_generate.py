"""Dataset generation library: grid expansion, whole-config validation, determinism, PDFs and augmentation."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from pdfusion.config import AugmentConfig, ConfigError, GenerateConfig, PDFConfig
from pdfusion.data.generate import (
    build_records,
    config_hash,
    expand_grid,
    generate,
    summarize,
    validate_config,
    write_summary,
)
from pdfusion.data.store import StoreReader
from pdfusion.pdf import simulate_pdf
from pdfusion.structures.particles import make_particle

FAST_PDF = PDFConfig(rmax=12.0, rstep=0.05)


def small_cfg(tmp_path, **kw) -> GenerateConfig:
    base = dict(out_dir=str(tmp_path / "gen"), types=("NaCl", "rutile"), metals=("Ti", "zn"), radii=(5.0,),
                variants=2, shard_size=3, pdf=FAST_PDF, seed=7)
    base.update(kw)
    return GenerateConfig(**base)


def test_expand_grid_is_deterministic_and_complete(tmp_path):
    cfg = small_cfg(tmp_path)
    units = expand_grid(cfg)
    assert units == expand_grid(cfg)
    keys = [it.key for u in units for it in u.items]
    assert len(keys) == len(set(keys)) == 2 * 2 * 1 * 2
    assert [len(u.items) for u in units] == [3, 3, 2]
    assert all(u.shard_name.startswith(f"gen-{config_hash(cfg)}-") for u in units)
    assert keys[0] == "rocksalt_Ti_r5_v0"  # aliases and element case are normalised
    assert config_hash(replace(cfg, seed=8)) != config_hash(cfg)
    assert config_hash(replace(cfg, out_dir="elsewhere")) == config_hash(cfg)


@pytest.mark.parametrize(
    "kw, field",
    [({"types": ("NaCl", "perovskite")}, "types"), ({"metals": ("Ti", "Qq")}, "metals"), ({"metals": ("O",)}, "metals"),
     ({"radii": (5.0, 1.0)}, "radii"), ({"min_distance": 9.0}, "min_distance")],
)
def test_validation_names_the_field(tmp_path, kw, field):
    with pytest.raises(ConfigError, match=f"^{field}:"):
        validate_config(small_cfg(tmp_path, **kw))


def test_unwritable_or_foreign_out_dir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="^out_dir:"):
        validate_config(small_cfg(tmp_path, out_dir=str(blocker / "sub")))
    cfg = small_cfg(tmp_path, types=("NaCl",), metals=("Mg",), variants=1)
    generate(cfg)
    with pytest.raises(ConfigError, match="^out_dir: .*different grid"):
        validate_config(replace(cfg, seed=99))


def test_records_are_deterministic_and_independent_of_sharding(tmp_path):
    cfg = small_cfg(tmp_path)
    a = {r.id: r for u in expand_grid(cfg) for r in build_records(cfg, u)[0]}
    cfg2 = replace(cfg, shard_size=5)
    b = {r.id: r for u in expand_grid(cfg2) for r in build_records(cfg2, u)[0]}
    assert a.keys() == b.keys() and len(a) == 8
    for k in a:
        assert np.array_equal(a[k].positions, b[k].positions) and np.array_equal(a[k].pdf, b[k].pdf)
    # variant 1 is a different particle from variant 0 of the same grid point
    assert len(a["rutile_Ti_r5_v0"].numbers) != len(a["rutile_Ti_r5_v1"].numbers) or not np.allclose(
        np.sort(np.linalg.norm(a["rutile_Ti_r5_v0"].positions, axis=1)),
        np.sort(np.linalg.norm(a["rutile_Ti_r5_v1"].positions, axis=1)))


def test_record_contents_match_independent_computation(tmp_path):
    cfg = small_cfg(tmp_path, variants=1)
    recs, dropped = build_records(cfg, expand_grid(cfg)[0])
    assert not dropped
    for r in recs:
        p = make_particle(r.meta["structure_type"], r.meta["metal"], r.meta["radius"])
        assert np.array_equal(r.positions, p.positions)
        assert (np.array_equal(r.node_attributes[:, 4:], r.positions)
                and np.array_equal(r.node_attributes[:, 0], r.numbers))
        # batched + padded simulation equals a single, unpadded one
        single = simulate_pdf(torch.from_numpy(p.positions)[None], torch.from_numpy(p.numbers)[None], None, FAST_PDF)[0]
        assert np.allclose(r.pdf, single.numpy(), atol=1e-5)
        assert r.pdf.dtype == np.float32 and np.isfinite(r.pdf).all()


def test_augmentation_is_recorded_and_reproducible(tmp_path):
    aug = AugmentConfig(noise_std=0.01, scale_range=(0.8, 1.2), qdamp_range=(0.02, 0.05), biso_range=(0.2, 0.6))
    cfg = small_cfg(tmp_path, types=("fluorite",), metals=("Ce",), variants=2, augment=aug)
    recs, _ = build_records(cfg, expand_grid(cfg)[0])
    for r in recs:
        a = r.meta["augment"]
        assert 0.02 <= a["qdamp"] <= 0.05 and 0.2 <= a["biso"] <= 0.6 and 0.8 <= a["scale"] <= 1.2
        pcfg = replace(FAST_PDF, qdamp=a["qdamp"], biso=a["biso"])
        clean = simulate_pdf(torch.from_numpy(r.positions)[None], torch.from_numpy(r.numbers)[None], None,
                             pcfg)[0].numpy()
        noise = np.random.default_rng(a["noise_seed"]).normal(0.0, 0.01, size=clean.shape)
        assert np.allclose(r.pdf, clean * a["scale"] + noise, atol=1e-5)
    assert recs[0].meta["augment"]["qdamp"] != recs[1].meta["augment"]["qdamp"]


def test_generate_resumes_and_summarises(tmp_path):
    cfg = small_cfg(tmp_path)
    first = generate(cfg)
    assert sum(r["written"] for r in first) == 8
    assert generate(cfg) == []  # everything verified and skipped
    body = write_summary(cfg.out_dir)
    assert body["per_type"] == {"rocksalt": 4, "rutile": 4}
    saved = json.loads((tmp_path / "gen" / "summary.json").read_text())
    assert saved["n_structures"] == 8 and (tmp_path / "gen" / "atom_counts.png").stat().st_size > 1000
    with StoreReader(cfg.out_dir) as reader:
        assert sorted(reader.ids()) == sorted(it.key for u in expand_grid(cfg) for it in u.items)
    assert summarize(cfg.out_dir)["atoms"]["min"] > 10
