"""`pdfusion sample` end to end: a tiny model trained here, a PDF file in, ranked XYZ + summary + plot out."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from pdfusion.cli import main
from pdfusion.config import PDFConfig

SMALL_PDF = PDFConfig(rmax=10.0, rstep=0.05, qmax=20.0)


def rocksalt_cluster(radius: float, metal: int = 22, a: float = 4.2):
    n = int(math.ceil(2 * radius / a)) + 2
    idx = np.stack(np.meshgrid(*[np.arange(-n, n + 1)] * 3, indexing="ij"), -1).reshape(-1, 3)
    pos = idx * a / 2
    keep = np.linalg.norm(pos, axis=1) <= radius
    return np.where(idx.sum(1) % 2 == 0, metal, 8)[keep], pos[keep]


def simulate(numbers, pos, cfg=SMALL_PDF):
    from pdfusion.pdf import simulate_pdf

    z = torch.as_tensor(numbers)[None]
    return simulate_pdf(torch.as_tensor(pos, dtype=torch.float64)[None], z, torch.ones_like(z, dtype=torch.bool),
                        cfg)[0]


def write_gr(path, r, g):
    path.write_text("# two-column G(r) written by the test\n"
                    + "\n".join(f"{a:.4f} {b:.8f}" for a, b in zip(r, g, strict=True)) + "\n")
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from pdfusion_testdata import train_tiny_checkpoint

    clusters = [rocksalt_cluster(radius, metal) for radius in (2.5, 3.0, 3.3, 3.7) for metal in (22, 30)]
    particles = [(numbers, pos - pos.mean(0), int(numbers.max())) for numbers, pos in clusters]
    return train_tiny_checkpoint(tmp_path_factory.mktemp("model") / "tiny.pt", particles, SMALL_PDF)


@pytest.fixture(scope="module")
def target_gr(tmp_path_factory):
    numbers, pos = rocksalt_cluster(3.3, 22)
    fine = PDFConfig(rmax=12.0, rstep=0.01, qmax=20.0)
    g = simulate(numbers, pos, fine).numpy() * 3.7  # arbitrary scale: the command rescales to max 1
    r = np.arange(fine.n_r) * fine.rstep
    return write_gr(tmp_path_factory.mktemp("pdf") / "target.gr", r, g)


def _check_outputs(out, k):
    from pdfusion.structures.io import read_structure

    xyz = sorted(out.glob("rank*.xyz"))
    assert [p.name[:6] for p in xyz] == [f"rank{i:02d}" for i in range(1, k + 1)]
    summary = json.loads((out / "summary.json").read_text())
    rwps = [c["rwp"] for c in summary["candidates"]]
    assert rwps == sorted(rwps) and len(rwps) == k
    for c, p in zip(summary["candidates"], xyz, strict=True):
        assert c["file"] == p.name and p.name.endswith(f"_rwp{c['rwp']:.4f}.xyz")
        particle = read_structure(p)
        assert len(particle) == c["n_atoms"]
    assert (out / "overlay.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return summary, xyz


def test_sample_writes_ranked_candidates(checkpoint, target_gr, tmp_path, capsys):
    from pdfusion.pdf import rwp
    from pdfusion.structures.io import read_structure

    out = tmp_path / "out"
    rc = main(["sample", str(checkpoint), str(target_gr), "--metal", "Ti", "-k", "3", "--n-atoms", "12",
               "-o", str(out)])
    assert rc == 0, capsys.readouterr().err
    summary, xyz = _check_outputs(out, 3)
    assert summary["metal"] == 22 and summary["sample_config"]["steps"] == 5  # the checkpoint's default
    # independent check of the best score: re-simulate the written XYZ against the target on the model grid
    from pdfusion.cli.sample_cmd import load_target

    grid = np.arange(SMALL_PDF.n_r) * SMALL_PDF.rstep
    target = torch.as_tensor(load_target(target_gr, grid))
    best = read_structure(xyz[0])
    raw = simulate(best.numbers, best.positions, dataclasses.replace(SMALL_PDF, normalize=False))
    g = raw / raw.max() if raw.max() > 0 else torch.zeros_like(raw)  # G = 0 (R_wp 1) when no pair is within rmax
    score = float(rwp(g, target))
    assert score == pytest.approx(summary["candidates"][0]["rwp"], rel=1e-3, abs=1e-4)
    assert "best R_wp" in capsys.readouterr().out


def test_sample_refine_and_predicted_size(checkpoint, target_gr, tmp_path):
    out = tmp_path / "out"
    rc = main(["sample", str(checkpoint), str(target_gr), "--metal", "22", "-k", "2", "--refine",
               "--refine-steps", "5", "--seed", "4", "-o", str(out)])
    assert rc == 0
    summary, _ = _check_outputs(out, 2)
    for c in summary["candidates"]:
        assert c["rwp_before_refine"] is not None and c["rwp"] <= c["rwp_before_refine"] + 1e-9
        assert 2 <= c["n_atoms"] <= 48


def test_sample_prune_atoms_implies_refine_and_is_recorded(checkpoint, target_gr, tmp_path):
    out = tmp_path / "out"
    rc = main(["sample", str(checkpoint), str(target_gr), "--metal", "22", "-k", "2", "--prune-atoms",
               "--prune-top", "1", "--refine-steps", "5", "--seed", "4", "-o", str(out)])
    assert rc == 0
    summary, _ = _check_outputs(out, 2)
    cfg = summary["sample_config"]
    assert cfg["refine"] and cfg["prune_atoms"] and cfg["prune_top"] == 1
    for c in summary["candidates"]:
        assert c["rwp_before_refine"] is not None and c["rwp"] <= c["rwp_before_refine"] + 1e-9


def test_sample_sizing_library_samples_at_the_fitted_librarys_counts(checkpoint, target_gr, tmp_path, capsys,
                                                                       monkeypatch):
    from pdfusion.inference import sizing

    real = sizing.metal_library
    monkeypatch.setattr(sizing, "metal_library", lambda metal, cfg: real(metal, cfg, (3.0, 4.0), 200))  # small: fast
    out = tmp_path / "out"
    rc = main(["sample", str(checkpoint), str(target_gr), "--metal", "Ti", "-k", "2", "--sizing", "library",
               "--size-scale", "0.5", "--no-prune-fragments", "-o", str(out)])
    assert rc == 0, capsys.readouterr().err
    summary, _ = _check_outputs(out, 2)
    assert summary["sample_config"]["sizing"] == "library" and summary["sample_config"]["size_scale"] == 0.5
    from pdfusion.cli.sample_cmd import load_target
    from pdfusion.inference.bundle import load_bundle

    bundle = load_bundle(str(checkpoint))
    g = load_target(target_gr, bundle.r_grid)
    want = sizing.sizes_for(g[None], ["Ti"], bundle.pdf_config, 2, scale=0.5,
                            max_atoms=bundle.config.model.max_atoms)[0]
    assert sorted(c["n_atoms"] for c in summary["candidates"]) == sorted(want)
    rc = main(["sample", str(checkpoint), str(target_gr), "--metal", "Ti", "--size-scale", "0", "-o", str(out)])
    assert rc == 2 and "size_scale" in capsys.readouterr().err


def test_sample_with_pdf_guidance(checkpoint, target_gr, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["sample", str(checkpoint), str(target_gr), "--metal", "Ti", "-k", "2", "--n-atoms", "12",
               "--pdf-guidance", "0.2", "--pdf-guidance-iters", "2", "--pdf-guidance-window", "0.5", "1", "-o",
               str(out)])
    assert rc == 0, capsys.readouterr().err
    summary, _ = _check_outputs(out, 2)
    assert summary["sample_config"]["pdf_guidance"] == 0.2 and summary["sample_config"]["pdf_guidance_iters"] == 2
    assert summary["sample_config"]["pdf_guidance_window"] == [0.5, 1.0]
    rc = main(["sample", str(checkpoint), str(target_gr), "--metal", "Ti", "--pdf-guidance-window", "0.6", "0.2",
               "-o", str(out)])
    assert rc == 2 and "pdf_guidance_window" in capsys.readouterr().err
    rc = main(["sample", str(checkpoint), str(target_gr), "--metal", "Ti", "--pdf-guidance", "-1", "-o", str(out)])
    assert rc == 2 and "pdf_guidance" in capsys.readouterr().err


def test_pdf_not_covering_the_grid_is_a_clear_error(checkpoint, tmp_path, capsys):
    r = np.arange(0, 3, 0.01)  # 30% of the model's 0–9.95 Å: refused
    short = write_gr(tmp_path / "short.gr", r, np.sin(r))
    rc = main(["sample", str(checkpoint), str(short), "--metal", "Ti", "-k", "1", "-o", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "short.gr" in err and "r covers" in err and "at least 50%" in err
    r = np.arange(0, 6, 0.01)  # 60%: sampled, with G = 0 beyond 6 Å and a warning
    part = write_gr(tmp_path / "part.gr", r, np.sin(r))
    rc = main(["sample", str(checkpoint), str(part), "--metal", "Ti", "-k", "1", "--n-atoms", "6", "--no-plot",
               "-o", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 0 and "warning: part.gr: data end at r = 5.99 Å" in err


def test_bad_metal_is_a_clear_error(checkpoint, target_gr, tmp_path, capsys):
    rc = main(["sample", str(checkpoint), str(target_gr), "--metal", "Qq", "-o", str(tmp_path / "o")])
    assert rc == 2 and "metal" in capsys.readouterr().err


def test_sample_measured_pt_gr(checkpoint, measured_gr, tmp_path):
    out = tmp_path / "pt"
    rc = main(["sample", str(checkpoint), str(measured_gr), "--metal", "Pt", "-k", "2", "--n-atoms", "10",
               "-o", str(out)])
    assert rc == 0
    summary, _ = _check_outputs(out, 2)
    assert summary["metal"] == 78 and all(np.isfinite(c["rwp"]) for c in summary["candidates"])


def test_sample_seed_h5(checkpoint, seed_135_dir, tmp_path):
    path = sorted(seed_135_dir.glob("*.h5"))[0]
    out = tmp_path / "seed"
    assert main(["sample", str(checkpoint), str(path), "--metal", "Ti", "-k", "1", "--n-atoms", "8",
                 "-o", str(out)]) == 0
    _check_outputs(out, 1)


def test_load_target_maps_a_partial_range_like_the_http_service(tmp_path, capsys):
    """A file starting above 0 Å and ending before the model's rmax, on a coarser step: mapped with G = 0
    outside its range and one warning line each; the HTTP service's to_model_grid gives the same curve."""
    from pdfusion.cli.sample_cmd import load_target
    from pdfusion.pdf.files import read_pdf_file
    from pdfusion.serving.pdf_input import to_model_grid

    grid = np.round(np.arange(0, 10, 0.05), 6)
    r = np.round(np.arange(1.0, 8.0, 0.1), 4)
    path = write_gr(tmp_path / "part.gr", r, np.sin(r) + 1.5)
    target = load_target(path, grid)
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 3 and all(line.startswith("warning: part.gr: ") for line in err)
    assert target[grid < 0.99].max() == 0 and target[grid > 8.0].max() == 0 and target.max() == pytest.approx(1.0)
    d = read_pdf_file(path)
    http, interpolated = to_model_grid(d.r, d.g, grid, normalize=True)
    assert interpolated and np.array_equal(http, target.astype(np.float32))


def test_sample_without_a_checkpoint_uses_the_default_model_and_its_sampling_defaults(checkpoint, target_gr, tmp_path,
                                                                                     monkeypatch, capsys):
    from pdfusion.inference.bundle import export_model

    shipped = export_model(torch.load(checkpoint, weights_only=True), tmp_path / "models" / "m" / "model.pt",
                           {"pdf_guidance": 0.2, "pdf_guidance_iters": 2})
    monkeypatch.setenv("PDFUSION_MODEL", str(shipped))
    out = tmp_path / "out"
    rc = main(["sample", str(target_gr), "--metal", "Ti", "-k", "2", "--n-atoms", "12", "-o", str(out)])
    assert rc == 0, capsys.readouterr().err
    summary, _ = _check_outputs(out, 2)
    assert summary["checkpoint"] == str(shipped)
    assert summary["sample_config"]["pdf_guidance"] == 0.2 and summary["sample_config"]["pdf_guidance_iters"] == 2
    rc = main(["sample", str(target_gr), "--metal", "Ti", "-k", "2", "--n-atoms", "12", "--pdf-guidance", "0",
               "-o", str(out)])
    assert rc == 0 and json.loads((out / "summary.json").read_text())["sample_config"]["pdf_guidance"] == 0.0
    monkeypatch.setenv("PDFUSION_MODEL", str(tmp_path / "absent.pt"))
    rc = main(["sample", str(target_gr), "--metal", "Ti", "-o", str(tmp_path / "o2")])
    err = capsys.readouterr().err
    assert rc == 2 and "PDFUSION_MODEL" in err and "Traceback" not in err and not (tmp_path / "o2").exists()
