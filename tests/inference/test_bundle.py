"""ModelBundle: rebuilt from a checkpoint alone, EMA weights in eval mode, defaults stored and overridable."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch_geometric.data import Data

from pdfusion.config import DataConfig, PDFConfig, preset
from pdfusion.inference import bundle as bundle_mod
from pdfusion.inference.bundle import load_bundle
from pdfusion.training.trainer import Trainer

SMALL_PDF = PDFConfig(rmax=8.0, rstep=0.1, qmax=20.0)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.set_num_threads(1)
    base = preset("tiny")
    cfg = dataclasses.replace(base, model=dataclasses.replace(base.model, pdf_points=SMALL_PDF.n_r, max_atoms=32),
                              data=DataConfig(batch_size=2), pdf=SMALL_PDF)
    g = torch.Generator().manual_seed(0)
    data = []
    for n in (6, 8, 9, 7):
        z = torch.tensor([22, 8] * (n // 2) + [22] * (n % 2))
        data.append(Data(pos=torch.randn(n, 3, generator=g) * 2, z=z, x=torch.zeros(n, 7),
                         y=torch.rand(1, SMALL_PDF.n_r, generator=g), metal=torch.tensor([22]), num_nodes=n))
    tr = Trainer(cfg)
    tr.fit(data, progress=False, max_steps=4)
    path = tmp_path_factory.mktemp("ck") / "model.pt"
    tr.save_checkpoint(path, extra={"defaults": {"guidance": 2.0, "steps": 7}, "name": "toy", "version": "3"})
    return path, tr


def test_bundle_holds_ema_weights_configs_and_grid(checkpoint):
    from pdfusion.pdf import r_grid

    path, tr = checkpoint
    b = load_bundle(path)
    assert not b.model.training
    for k, v in tr.ema.state_dict().items():
        assert torch.equal(b.model.state_dict()[k], v)
    assert any(not torch.equal(tr.module.state_dict()[k], v) for k, v in tr.ema.state_dict().items())
    assert b.config == tr.cfg and b.pdf_config == SMALL_PDF
    np.testing.assert_allclose(b.r_grid, np.asarray(r_grid(SMALL_PDF)))
    assert len(b.r_grid) == SMALL_PDF.n_r
    assert b.defaults == {"guidance": 2.0, "steps": 7, "pdf_guidance": 0.0, "pdf_guidance_iters": 1,
                          "pdf_guidance_cohesion": 0.0, "pdf_guidance_window": [0.0, 1.0], "resample_at": [],
                          "resample_keep": 0.5, "prune_fragments": False,
                          "restarts": 0, "restart_t": 100, "count_temperature": 1.0,
                                   "sizing": "head", "size_scale": 1.0}
    assert (b.name, b.version) == ("toy", "3")


def test_defaults_overridable_and_validated(checkpoint):
    path, _ = checkpoint
    assert load_bundle(path, defaults={"steps": 50}).defaults == {"guidance": 2.0, "steps": 50, "pdf_guidance": 0.0,
                                                                  "pdf_guidance_iters": 1,
                                                                  "pdf_guidance_cohesion": 0.0,
                                                                  "pdf_guidance_window": [0.0, 1.0], "resample_at": [],
                                                                  "resample_keep": 0.5, "prune_fragments": False,
                                                                  "restarts": 0, "restart_t": 100,
                                                                  "count_temperature": 1.0, "sizing": "head",
                                                                  "size_scale": 1.0}
    with pytest.raises(ValueError, match="unknown key"):
        load_bundle(path, defaults={"stepz": 50})


def test_sample_config_is_the_models_defaults_under_the_callers_overrides(checkpoint):
    """The one reading of a model's sampling defaults (CLI, demo, benchmarks, serve): None keeps the model's."""
    from pdfusion.config import ConfigError, SampleConfig

    path, _ = checkpoint
    b = load_bundle(path, defaults={"pdf_guidance": 0.3, "pdf_guidance_iters": 8, "pdf_guidance_cohesion": 0.5,
                                    "resample_at": [0.8, 0.9]})
    assert b.sample_config() == SampleConfig(guidance=2.0, steps=7, pdf_guidance=0.3, pdf_guidance_iters=8,
                                             pdf_guidance_cohesion=0.5, resample_at=(0.8, 0.9))
    cfg = b.sample_config(guidance=None, steps=3, n_samples=4, pdf_guidance=0.0, resample_at=())
    assert (cfg.guidance, cfg.steps, cfg.n_samples, cfg.pdf_guidance, cfg.resample_at) == (2.0, 3, 4, 0.0, ())
    with pytest.raises(ConfigError, match="resample_keep"):
        b.sample_config(resample_keep=2.0)


def test_mlflow_uris_go_through_tracking(checkpoint, monkeypatch):
    path, _ = checkpoint
    seen = []

    def fake_download(uri, **kw):
        seen.append(uri)
        return path

    from pdfusion import tracking

    monkeypatch.setattr(tracking, "download_checkpoint", fake_download)
    monkeypatch.setattr(tracking, "model_defaults", lambda uri, **kw: {"steps": 7} if "@" in uri else {})
    b = load_bundle("models:/pdfusion-oxides/5")
    assert seen == ["models:/pdfusion-oxides/5"] and (b.name, b.version) == ("pdfusion-oxides", "5")
    b = load_bundle("models:/pdfusion-oxides@production")
    assert (b.name, b.version) == ("pdfusion-oxides", "production")
    assert b.defaults["steps"] == 7  # recorded on the registered version (e.g. by a guidance sweep)
    load_bundle("runs:/abc123/model")
    assert seen[-1] == "runs:/abc123/model"


def test_bad_checkpoint_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_bundle(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    torch.save({"weights": torch.zeros(2)}, bad)
    with pytest.raises(ValueError, match="bad.pt"):
        load_bundle(bad)
    assert bundle_mod.DEFAULTS == {"guidance": 1.0, "steps": 100, "pdf_guidance": 0.0, "pdf_guidance_iters": 1,
                                   "pdf_guidance_cohesion": 0.0, "pdf_guidance_window": [0.0, 1.0], "resample_at": [],
                                   "resample_keep": 0.5, "prune_fragments": False,
                                   "restarts": 0, "restart_t": 100, "count_temperature": 1.0,
                                   "sizing": "head", "size_scale": 1.0}


def test_exported_model_is_slim_and_samples_as_the_checkpoint_does(checkpoint, tmp_path):
    from pdfusion.inference.bundle import export_model

    path, tr = checkpoint
    out = export_model(torch.load(path, weights_only=True), tmp_path / "m" / "model.pt",
                       {"pdf_guidance": 0.3, "pdf_guidance_iters": 3}, name="shipped", version="9")
    slim = torch.load(out, weights_only=True)
    assert set(slim) == {"config", "ema", "step", "extra"} and out.stat().st_size < path.stat().st_size
    a, b = load_bundle(path), load_bundle(out)
    for k, v in a.model.state_dict().items():
        assert torch.equal(b.model.state_dict()[k], v)
    assert b.defaults == {"guidance": 2.0, "steps": 7, "pdf_guidance": 0.3, "pdf_guidance_iters": 3,
                          "pdf_guidance_cohesion": 0.0, "pdf_guidance_window": [0.0, 1.0], "resample_at": [],
                          "resample_keep": 0.5, "prune_fragments": False,
                          "restarts": 0, "restart_t": 100, "count_temperature": 1.0,
                                   "sizing": "head", "size_scale": 1.0}
    assert (b.name, b.version) == ("shipped", "9")
    with pytest.raises(ValueError, match="unknown key"):
        export_model(torch.load(path, weights_only=True), tmp_path / "x.pt", {"guidence": 1.0})
    assert not (tmp_path / "x.pt").exists()


def test_default_model_is_the_shipped_file_or_pdfusion_model(checkpoint, monkeypatch, tmp_path):
    from pdfusion.inference.bundle import SHIPPED_MODEL, default_model_path

    monkeypatch.setenv("PDFUSION_MODEL", str(checkpoint[0]))
    assert default_model_path() == checkpoint[0]
    monkeypatch.setenv("PDFUSION_MODEL", str(tmp_path / "missing.pt"))
    with pytest.raises(FileNotFoundError, match="PDFUSION_MODEL"):
        default_model_path()
    monkeypatch.delenv("PDFUSION_MODEL")
    assert SHIPPED_MODEL.parent.parent.name == "models"


def test_the_shipped_model_loads_samples_and_is_what_serve_deploys():
    """models/pdfusion-cpu-v2 (committed, models/README.md): loads with weights_only, carries its sampling
    defaults, is serve/config.yaml's model, and samples finite candidates on its own grid."""
    import yaml

    from pdfusion.config import SampleConfig
    from pdfusion.inference.bundle import SHIPPED_MODEL
    from pdfusion.inference.candidates import generate_candidates

    assert SHIPPED_MODEL.is_file() and SHIPPED_MODEL.stat().st_size < 20e6
    b = load_bundle(SHIPPED_MODEL)
    assert b.defaults["pdf_guidance"] > 0 and b.config.model.edge_pdf == "raw"
    assert len(b.r_grid) == b.config.model.pdf_points
    root = SHIPPED_MODEL.parents[2]
    args = yaml.safe_load((root / "serve" / "config.yaml").read_text())["applications"][0]["args"]
    assert (root / args["model"]).resolve() == SHIPPED_MODEL
    r = b.r_grid
    target = np.exp(-((r - 2.0) ** 2) / 0.01) + 0.5 * np.exp(-((r - 3.0) ** 2) / 0.01)
    cands = generate_candidates(b, (target / target.max())[None].astype(np.float32), [22],
                                SampleConfig(n_samples=2, n_atoms=12, steps=4, seed=0))[0]
    assert len(cands) == 2 and all(np.isfinite(c.positions).all() and np.isfinite(c.rwp) for c in cands)
    # its defaults drop detached fragments (docs/training.md, round 7): every candidate is one bonded particle
    from pdfusion.structures.fragments import largest_fragment

    assert b.defaults["prune_fragments"] is True
    cands = generate_candidates(b, (target / target.max())[None].astype(np.float32), [22],
                                b.sample_config(n_samples=2, n_atoms=12, steps=4, seed=0, pdf_guidance=0.0))[0]
    assert all(largest_fragment(c.positions).all() and c.n_atoms <= 12 for c in cands)
