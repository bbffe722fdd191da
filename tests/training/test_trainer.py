"""Trainer: exact resume, EMA formula, clipping, LR schedule, non-finite guards, validation.

Data are rock-salt clusters the test builds itself, with PDFs from pdfusion's own simulator."""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch_geometric.data import Data

from pdfusion.config import DataConfig, PDFConfig, preset
from pdfusion.training.trainer import Trainer, autocast_for, ema_decay_at, lr_factor
from pdfusion_testdata import rocksalt_cluster

SMALL_PDF = PDFConfig(rmax=10.0, rstep=0.05, qmax=20.0)


def make_data(n: int, pdf_cfg: PDFConfig = SMALL_PDF, seed: int = 0) -> list[Data]:
    from pdfusion.pdf import simulate_pdf

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        metal = [22, 30, 27][i % 3]
        numbers, pos = rocksalt_cluster(rng.uniform(3.0, 4.2), metal, shift=rng.uniform(-0.6, 0.6, 3))
        p = torch.tensor(pos, dtype=torch.float32)
        z = torch.tensor(numbers, dtype=torch.long)
        g = simulate_pdf(p[None].double(), z[None], torch.ones(1, len(z), dtype=torch.bool), pdf_cfg)[0]
        out.append(Data(pos=p, z=z, x=torch.zeros(len(z), 7), y=g.float().reshape(1, -1),
                        metal=torch.tensor([metal]), num_nodes=len(z)))
    return out


def tiny_cfg(**kw):
    base = preset("tiny")
    return dataclasses.replace(
        base,
        model=dataclasses.replace(base.model, pdf_points=SMALL_PDF.n_r, max_atoms=64),
        data=DataConfig(batch_size=4),
        pdf=SMALL_PDF,
        **kw,
    )


@pytest.fixture(scope="module")
def data():
    torch.set_num_threads(1)
    return make_data(12)


def _params(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_lr_schedule_warmup_then_cosine():
    assert lr_factor(0, 10, 110) == pytest.approx(0.1)
    assert lr_factor(9, 10, 110) == pytest.approx(1.0)
    assert lr_factor(10, 10, 110) == pytest.approx(1.0)
    mid = 10 + 50
    assert lr_factor(mid, 10, 110) == pytest.approx(0.05 + 0.95 * 0.5)
    assert lr_factor(110, 10, 110) == pytest.approx(0.05)
    assert lr_factor(500, 10, None) == 1.0


def test_checkpoint_resume_is_bit_exact(data, tmp_path):
    cfg = tiny_cfg(max_steps=6, epochs=5, checkpoint_every_steps=1000)
    full = Trainer(cfg)
    full.fit(data, progress=False, max_steps=6)

    first = Trainer(cfg)
    first.fit(data, progress=False, max_steps=4, checkpoint_path=tmp_path / "ck.pt")
    resumed = Trainer.from_checkpoint(tmp_path / "ck.pt")
    assert resumed.step == 4 and resumed.sampler_state is not None
    resumed.fit(data, progress=False, max_steps=6)

    assert resumed.step == full.step == 6 and resumed.epoch == full.epoch
    for name, ref in (("model", full.module), ("ema", full.ema)):
        got = (resumed.module if name == "model" else resumed.ema).state_dict()
        for k, v in ref.state_dict().items():
            assert torch.equal(got[k], v), f"{name}.{k} differs after resume"
    s_full, s_res = full.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    for k in s_full:
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(s_full[k][key], s_res[k][key])
    assert full.optimizer.param_groups[0]["lr"] == resumed.optimizer.param_groups[0]["lr"]
    assert torch.equal(full.generator.get_state(), resumed.generator.get_state())


def test_step_level_resume_with_caller_batches(data, tmp_path):
    """train k, save, train m  ==  load, train m (batches supplied by the caller)."""
    cfg = tiny_cfg()
    batches = [Trainer.collate(data[i : i + 4]) for i in range(0, 12, 4)]
    a = Trainer(cfg)
    for b in batches[:2]:
        a.train_step(b)
    a.save_checkpoint(tmp_path / "a.pt", sampler_state={"position": 2})
    for b in batches[2:]:
        a.train_step(b)
    b_tr = Trainer.from_checkpoint(tmp_path / "a.pt")
    assert b_tr.sampler_state == {"position": 2}
    for b in batches[2:]:
        b_tr.train_step(b)
    for k, v in a.module.state_dict().items():
        assert torch.equal(b_tr.module.state_dict()[k], v)


def test_ema_update_formula(data):
    cfg = tiny_cfg(ema_decay=0.9)
    tr = Trainer(cfg)
    batch = Trainer.collate(data[:4])
    ema0 = _params(tr.ema)
    tr.train_step(batch)
    p1 = _params(tr.module)
    d = ema_decay_at(1, 0.9)
    assert d == pytest.approx(2 / 11)
    for k, v in tr.ema.state_dict().items():
        if v.is_floating_point():
            torch.testing.assert_close(v, d * ema0[k] + (1 - d) * p1[k])
    ema1 = _params(tr.ema)
    for _ in range(30):
        tr.train_step(batch)
    p = _params(tr.module)
    # decay saturates at ema_decay once (1+s)/(10+s) > 0.9
    assert ema_decay_at(200, 0.9) == 0.9
    assert any(not torch.equal(ema1[k], tr.ema.state_dict()[k]) for k in p)


def test_gradient_clipping(data):
    tr = Trainer(tiny_cfg(grad_clip=1e-3))
    out = tr.train_step(Trainer.collate(data[:4]))
    assert out["grad_norm"] > 1e-3  # pre-clip norm is reported
    total = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in tr.module.parameters() if p.grad is not None))
    assert float(total) <= 1e-3 * (1 + 1e-4)


def test_autocast_is_bf16_on_cuda_only_and_a_no_op_on_cpu(data):
    """The single-process and Ray loops share autocast_for: bf16 only on CUDA; on CPU a step inside it is
    bit-identical to one outside it."""
    with warnings.catch_warnings():  # without CUDA, torch builds the context disabled and says so
        warnings.simplefilter("ignore", UserWarning)
        amp = autocast_for("cuda")
    assert isinstance(amp, torch.autocast) and amp.fast_dtype == torch.bfloat16 and amp.device == "cuda"
    assert not isinstance(autocast_for("cuda:0", bf16=False), torch.autocast)
    assert not isinstance(autocast_for("cpu"), torch.autocast)
    a, b = Trainer(tiny_cfg()), Trainer(tiny_cfg())
    batch = Trainer.collate(data[:4])
    with autocast_for(a.device):
        out_a = a.train_step(batch)
    out_b = b.train_step(batch)
    assert out_a["loss"] == out_b["loss"]
    for pa, pb in zip(a.module.parameters(), b.module.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_non_finite_loss_raises_naming_step(data):
    from pdfusion.diffusion.guards import NonFiniteError

    tr = Trainer(tiny_cfg())
    batch = Trainer.collate(data[:4])
    tr.train_step(batch)
    tr.train_step(batch)
    real = tr.diffusion.training_loss

    def bad(model, b, generator=None, **kw):
        loss, metrics = real(model, b, generator=generator, **kw)
        return loss * float("nan"), metrics

    tr.diffusion.training_loss = bad
    with pytest.raises(NonFiniteError, match="step 2"):
        tr.train_step(batch)
    assert tr.step == 2


def test_non_finite_gradient_names_parameter(data):
    from pdfusion.diffusion.guards import NonFiniteError

    tr = Trainer(tiny_cfg())
    name, param = next(iter(tr.module.named_parameters()))
    param.register_hook(lambda g: g * float("inf"))
    with pytest.raises(NonFiniteError, match=name.replace(".", r"\.")):
        tr.train_step(Trainer.collate(data[:4]))


def test_validate_reports_loss_and_best_of_k(data):
    tr = Trainer(tiny_cfg())
    tr.fit(data[:8], progress=False, max_steps=3)
    out = tr.validate(data[8:], n_pdfs=2, k=2, steps=4)
    assert set(out) >= {"val_loss", "val_rwp_best_median"}
    assert all(np.isfinite(v) for v in out.values())
    assert out["val_rwp_best_median"] > 0


def test_wrap_model_keeps_unwrapped_module(data):
    wrapped = []

    def wrap(m):
        wrapped.append(m)
        return _Wrapper(m)

    tr = Trainer(tiny_cfg(), wrap_model=wrap)
    assert wrapped == [tr.module] and isinstance(tr.model, _Wrapper)
    tr.train_step(Trainer.collate(data[:4]))
    assert set(tr.state_dict()["model"]) == set(tr.module.state_dict())


class _Wrapper(torch.nn.Module):
    """Stands in for DDP: forwards calls to `.module`, like DistributedDataParallel."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.module, name)


def test_unconditional_cube_smoke():
    """The toy experiment's path (experiments/exp_cube.py at smoke size): batches without a PDF train the null
    embedding only (no count loss) and the fixed-noise loss of the raw model goes down."""
    import itertools

    from pdfusion.config import DiffusionConfig, ModelConfig, ScheduleConfig, TrainConfig
    from pdfusion.data.batching import DenseBatch

    corners = torch.tensor(list(itertools.product([-0.5, 0.5], repeat=3)), dtype=torch.float32)
    g = torch.Generator().manual_seed(0)

    def batch():
        pos = corners.expand(16, 8, 3) + 0.001 * torch.randn(16, 8, 3, generator=g)
        return DenseBatch(pos=pos, z=torch.full((16, 8), 22), mask=torch.ones(16, 8, dtype=torch.bool),
                          pdf=None, metal=None, n_atoms=torch.full((16,), 8))

    cfg = TrainConfig(model=ModelConfig(hidden=16, layers=2, pdf_points=8, pdf_embed=8, max_atoms=8,
                                        position_scale=0.5),
                      pdf=PDFConfig(rmax=8.0, rstep=1.0),
                      diffusion=DiffusionConfig(schedule=ScheduleConfig(timesteps=100), p_uncond=1.0),
                      lr=2e-3, warmup_steps=5)
    tr = Trainer(cfg)
    fixed = [batch() for _ in range(4)]
    before = tr.evaluate_loss(fixed, use_ema=False)
    for _ in range(60):
        out = tr.train_step(batch())
        assert "loss_count" not in out or out["loss_count"] == 0.0
    after = tr.evaluate_loss(fixed, use_ema=False)
    assert after < 0.8 * before


def test_ray_train_sample_artifacts_overlay_the_sampled_curve(data, tmp_path, monkeypatch):
    """The MLflow overlay must draw each candidate's simulated G(r) (`g_sim`); it once read a missing `pdf`
    attribute and silently drew the target alone."""
    from pdfusion.evaluation import plots
    from pdfusion.training import ray_train

    drawn, logged = [], []
    real = plots.candidate_overlay

    def spy(r, target, cands, title, path, n_best=3):
        drawn.append([c.g_sim for c in cands[:n_best]])
        return real(r, target, cands, title, path, n_best)

    monkeypatch.setattr(plots, "candidate_overlay", spy)

    class Logger:
        def log_artifact(self, path, folder):
            logged.append((folder, Path(path).suffix, Path(path).read_bytes()[:4]))

    cfg = dataclasses.replace(tiny_cfg(), val_samples=2, val_steps=3)
    ray_train._log_samples(Trainer(cfg), data[:2], cfg, Logger(), n_pdfs=2)
    assert len(drawn) == 2 and all(len(g) == 2 and np.isfinite(g[0]).all() and np.ptp(g[0]) > 0 for g in drawn)
    assert sorted(f for f, *_ in logged) == ["plots", "plots", "samples", "samples"]
    assert all(head == b"\x89PNG" for f, suffix, head in logged if f == "plots")
