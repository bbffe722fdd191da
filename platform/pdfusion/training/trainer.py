"""Single-process trainer: AdamW, warmup + cosine LR, gradient clipping, EMA, exact checkpoints.

The same object is the per-worker engine of the Ray Train job: `wrap_model` (e.g.
`ray.train.torch.prepare_model`) wraps the built module for DDP, while `.module` stays the unwrapped
module so that EMA, checkpoints and sampling never depend on how training was distributed.
A checkpoint holds everything that influences the next step (weights, EMA, optimizer, scheduler,
step, epoch, every RNG), so resuming reproduces an uninterrupted run bit for bit.
"""

from __future__ import annotations

import contextlib
import copy
import math
import random
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pdfusion.config import SampleConfig, TrainConfig, from_dict, to_dict
from pdfusion.data.batching import BucketBatchSampler, collate
from pdfusion.diffusion.factory import build_model
from pdfusion.diffusion.guards import NonFiniteError
from pdfusion.evaluation.metrics import best_of_k
from pdfusion.inference.candidates import sample_and_score
from pdfusion.inference.checkpoint import load_checkpoint, save_checkpoint

CHECKPOINT_FORMAT = 1


def lr_factor(step: int, warmup_steps: int, total_steps: int | None, min_factor: float = 0.05) -> float:
    """Linear warmup to 1, then cosine decay to `min_factor` at `total_steps` (constant if unknown).

    A floor above zero keeps the last steps of a run useful instead of frozen."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if not total_steps or total_steps <= warmup_steps:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def ema_decay_at(step: int, decay: float) -> float:
    """EMA decay used after optimizer step `step` (1-based): min(decay, (1 + step) / (10 + step)).

    The warm-up term lets short runs (tests, overfitting experiments) get an EMA that is not dominated
    by the random initial weights."""
    return min(decay, (1.0 + step) / (10.0 + step))


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model, for every floating parameter and buffer."""
    for e, p in zip(ema.parameters(), model.parameters(), strict=True):
        e.lerp_(p.detach(), 1.0 - decay)
    for e, b in zip(ema.buffers(), model.buffers(), strict=True):
        e.copy_(b)


def _rng_state(generator: torch.Generator) -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "generator": generator.get_state(),
        "numpy_keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
        "numpy_rest": [str(np_state[0]), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": _py_state_to_plain(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _py_state_to_plain(state: tuple) -> list:
    version, internal, gauss = state
    return [int(version), [int(v) for v in internal], gauss]


def _set_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["generator"])
    kind, pos, has_gauss, cached = state["numpy_rest"]
    keys = state["numpy_keys"].numpy().astype(np.uint32)
    np.random.set_state((kind, keys, int(pos), int(has_gauss), float(cached)))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Trainer:
    """Trains a `PDFusionDenoiser` with `GaussianDiffusion`; see the module docstring."""

    def __init__(
        self,
        cfg: TrainConfig,
        device: str | torch.device = "cpu",
        wrap_model: Callable[[nn.Module], nn.Module] | None = None,
        total_steps: int | None = None,
    ) -> None:
        self.cfg = cfg
        self.device = torch.device(device)
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed % 2**32)
        random.seed(cfg.seed)
        module, self.diffusion = build_model(cfg)
        self.module: nn.Module = module.to(self.device)
        self.ema: nn.Module = copy.deepcopy(self.module).eval()
        for p in self.ema.parameters():
            p.requires_grad_(False)
        self.model: nn.Module = wrap_model(self.module) if wrap_model is not None else self.module
        self.optimizer = torch.optim.AdamW(self.module.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.total_steps = total_steps if total_steps is not None else cfg.max_steps
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, self.cfg.warmup_steps, self.total_steps)
        )
        # Training noise comes from a dedicated generator so that it is part of the checkpoint.
        self.generator = torch.Generator(device=self.device).manual_seed(cfg.seed)
        self.step = 0
        self.epoch = 0
        self.sampler_state: dict | None = None
        self.history: list[dict[str, float]] = []

    # ------------------------------------------------------------------------------------------
    # one step
    # ------------------------------------------------------------------------------------------
    def _batch_to(self, batch):
        return batch.to(self.device)

    def _loss(self, model: nn.Module, batch, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        """Diffusion loss + count_loss_weight x the atom-count head's cross-entropy (inside the model's
        forward, so DDP synchronises the count head too)."""
        loss, metrics = self.diffusion.training_loss(
            model, batch, generator=generator, count_loss_weight=self.cfg.count_loss_weight, step=self.step
        )
        return loss, {k: float(v) for k, v in dict(metrics).items()}

    def train_step(self, batch) -> dict[str, float]:
        """One optimizer step; raises NonFiniteError naming the step and tensor on NaN/inf."""
        self.model.train()
        batch = self._batch_to(batch)
        loss, metrics = self._loss(self.model, batch, self.generator)
        if not torch.isfinite(loss):
            raise NonFiniteError(
                f"training step {self.step}: loss is {float(loss.detach())} (metrics {metrics}); "
                "lower the learning rate or check the batch for bad positions/PDFs"
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.cfg.grad_clip)
        if not torch.isfinite(grad_norm):
            bad = [n for n, p in self.module.named_parameters() if p.grad is not None
                   and not torch.isfinite(p.grad).all()]
            raise NonFiniteError(
                f"training step {self.step}: gradient of parameter(s) {bad[:5]} is not finite "
                f"(grad_norm {float(grad_norm)}); "
                "the optimizer step was skipped - lower the learning rate or check the batch"
            )
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.lr_scheduler.step()
        self.step += 1
        ema_update(self.ema, self.module, ema_decay_at(self.step, self.cfg.ema_decay))
        out = {"loss": float(loss.detach()), "grad_norm": float(grad_norm), "lr": float(lr), "step": self.step}
        out.update({k: v for k, v in metrics.items() if k != "loss"})
        return out

    @torch.no_grad()
    def evaluate_loss(self, batches: Iterable, use_ema: bool = True) -> float:
        """Mean training loss over `batches`, with a fixed noise seed so values are comparable."""
        model = self.ema if use_ema else self.module
        model.eval()
        gen = torch.Generator(device=self.device).manual_seed(12345)
        total, count = 0.0, 0
        for batch in batches:
            batch = self._batch_to(batch)
            loss, _ = self._loss(model, batch, gen)
            n = len(batch)
            total += float(loss) * n
            count += n
        if count == 0:
            raise ValueError("evaluate_loss: got no batches")
        return total / count

    @torch.no_grad()
    def validate(
        self,
        val_data: Sequence,
        n_pdfs: int | None = None,
        k: int | None = None,
        steps: int | None = None,
        batch_size: int | None = None,
        guidance: float = 1.0,
    ) -> dict[str, float]:
        """Validation loss plus best-of-K R_wp: sample K candidates per validation PDF with the EMA model
        (strided sampler, predicted atom count), simulate their PDFs, keep the best R_wp per PDF."""
        n_pdfs = self.cfg.val_pdfs if n_pdfs is None else n_pdfs
        k = self.cfg.val_samples if k is None else k
        steps = self.cfg.val_steps if steps is None else steps
        batch_size = batch_size or self.cfg.data.batch_size
        data = list(val_data)
        if not data:
            raise ValueError("validate: val_data is empty")
        batches = [self.collate(data[i : i + batch_size]) for i in range(0, len(data), batch_size)]
        out = {"val_loss": self.evaluate_loss(batches)}
        chosen = data[: max(0, n_pdfs)]
        if chosen:
            pdfs = torch.cat([d.y.reshape(1, -1) for d in chosen]).float()
            metals = [int(d.metal.reshape(-1)[0]) for d in chosen]
            scfg = SampleConfig(guidance=guidance, steps=steps, n_samples=k, seed=self.cfg.seed + self.step)
            ranked = sample_and_score(self.ema, self.diffusion, pdfs, metals, scfg, self.cfg.pdf, device=self.device)
            out.update(best_of_k([cands[0].rwp for cands in ranked], prefix="val_"))
        return out

    # ------------------------------------------------------------------------------------------
    # data
    # ------------------------------------------------------------------------------------------
    @staticmethod
    def collate(data_list: Sequence):
        return collate(list(data_list))

    def train_loop(
        self,
        data: Sequence,
        sampler,
        *,
        epochs: int | None = None,
        max_steps: int | None = None,
        should_stop: Callable[[], bool] | None = None,
        resumed: bool = False,
        autocast: contextlib.AbstractContextManager | None = None,
        on_step: Callable[[dict[str, float], Any, Sequence[int]], None] | None = None,
        on_epoch_end: Callable[[dict[str, float]], None] | None = None,
    ) -> dict[str, float]:
        """The one training loop (`fit`, the Ray Train worker and the experiments all run it).

        Iterates epochs of `sampler` (a `BucketBatchSampler` or anything with `set_epoch`, `epoch`,
        `state_dict()["position"]` and `len`) until `epochs` are done, `max_steps` are taken or `should_stop()`
        says so. With `resumed` the sampler's restored position continues the current epoch mid-way, so a
        resumed run takes exactly the batches an uninterrupted one would. A stop that falls on an epoch's last
        step still closes the epoch (`on_epoch_end` runs). `on_step(metrics, batch, indices)` runs after every
        step (checkpoints, logging); returns the last step's metrics."""
        epochs = self.cfg.epochs if epochs is None else epochs
        out: dict[str, float] = {}

        def stop() -> bool:
            return (max_steps is not None and self.step >= max_steps) or (should_stop is not None and should_stop())

        while self.epoch < epochs and not stop():
            if not (resumed and sampler.epoch == self.epoch):
                sampler.set_epoch(self.epoch)
            resumed = False
            for indices in sampler:
                batch = self.collate([data[i] for i in indices])
                with autocast if autocast is not None else contextlib.nullcontext():
                    out = self.train_step(batch)
                if on_step is not None:
                    on_step(out, batch, indices)
                if stop() and sampler.state_dict()["position"] < len(sampler):
                    break  # mid-epoch stop; at an epoch's end the epoch is closed below
            else:
                self.epoch += 1
                if on_epoch_end is not None:
                    on_epoch_end(out)
                continue
            break
        self.sampler_state = sampler.state_dict()
        return out

    def fit(
        self,
        train_data: Sequence,
        val_data: Sequence | None = None,
        epochs: int | None = None,
        max_steps: int | None = None,
        callback: Callable[[Trainer, dict[str, float]], None] | None = None,
        progress: bool = True,
        log_every: int = 50,
        checkpoint_path: str | Path | None = None,
    ) -> list[dict[str, float]]:
        """`train_loop` for scripts and tests: size-bucketed batches, per-epoch validation, a checkpoint
        (with the sampler position) every `cfg.checkpoint_every_steps` steps and at the end. Resumes mid-epoch
        when the trainer was loaded from such a checkpoint.

        Returns the list of logged metric dicts (also kept in `.history`)."""
        from tqdm.auto import tqdm

        data = list(train_data)
        if not data:
            raise ValueError("fit: train_data is empty")
        epochs = epochs if epochs is not None else self.cfg.epochs
        max_steps = max_steps if max_steps is not None else self.cfg.max_steps
        sampler = BucketBatchSampler([int(d.num_nodes) for d in data], self.cfg.data.batch_size, shuffle=True,
                                     seed=self.cfg.seed)
        planned = epochs * len(sampler)
        if max_steps is not None:
            planned = min(planned, max_steps)
        if self.total_steps is None:
            self.total_steps = planned
        resumed = self.sampler_state is not None
        if resumed:
            sampler.load_state_dict(self.sampler_state)
        bar = tqdm(total=planned, initial=min(self.step, planned), desc="train", disable=not progress)
        running: list[float] = []

        def on_step(metrics: dict[str, float], batch, indices) -> None:
            running.append(metrics["loss"])
            bar.update(1)
            if checkpoint_path and self.cfg.checkpoint_every_steps and self.step % self.cfg.checkpoint_every_steps == 0:
                self.save_checkpoint(checkpoint_path, sampler_state=sampler.state_dict())
            if self.step % log_every == 0:
                bar.set_postfix(loss=f"{np.mean(running[-log_every:]):.4f}", lr=f"{metrics['lr']:.2e}")
                self.history.append(metrics)
                if callback:
                    callback(self, metrics)

        def on_epoch_end(_: dict[str, float]) -> None:
            running.clear()
            if val_data is not None and self.cfg.val_every_epochs and self.epoch % self.cfg.val_every_epochs == 0:
                val = {"epoch": self.epoch, "step": self.step, **self.validate(val_data)}
                self.history.append(val)
                if callback:
                    callback(self, val)

        self.train_loop(data, sampler, epochs=epochs, max_steps=max_steps, resumed=resumed, on_step=on_step,
                        on_epoch_end=on_epoch_end)
        bar.close()
        if checkpoint_path:
            self.save_checkpoint(checkpoint_path)
        return self.history

    # ------------------------------------------------------------------------------------------
    # state
    # ------------------------------------------------------------------------------------------
    def state_dict(self, sampler_state: dict | None = None) -> dict[str, Any]:
        """Everything needed to resume bit-exactly; tensors and plain Python only."""
        return {
            "format": CHECKPOINT_FORMAT,
            "config": to_dict(self.cfg),
            "model": {k: v.detach().clone() for k, v in self.module.state_dict().items()},
            "ema": {k: v.detach().clone() for k, v in self.ema.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "total_steps": self.total_steps,
            "step": self.step,
            "epoch": self.epoch,
            "rng": _rng_state(self.generator),
            "sampler": sampler_state if sampler_state is not None else self.sampler_state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> dict | None:
        """Restore a `state_dict()`; returns the caller's sampler state (also kept as `.sampler_state`)."""
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"checkpoint format {state.get('format')!r} is not supported (expected "
                             f"{CHECKPOINT_FORMAT})")
        self.module.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        self.total_steps = state["total_steps"]
        self.step = int(state["step"])
        self.epoch = int(state["epoch"])
        _set_rng_state(state["rng"], self.generator)
        self.sampler_state = state.get("sampler")
        return self.sampler_state

    def save_checkpoint(self, path: str | Path, sampler_state: dict | None = None, extra: dict | None = None) -> Path:
        """Atomically write the trainer state (+ optional plain-Python `extra`, e.g. bundle defaults)."""
        state = self.state_dict(sampler_state)
        if extra:
            state["extra"] = extra
        save_checkpoint(state, path)
        return Path(path)

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        device: str | torch.device = "cpu",
        wrap_model: Callable[[nn.Module], nn.Module] | None = None,
    ) -> Trainer:
        state = load_checkpoint(path)
        trainer = cls(from_dict(TrainConfig, state["config"]), device=device, wrap_model=wrap_model)
        trainer.load_state_dict(state)
        return trainer


def autocast_for(device: str | torch.device, bf16: bool = True) -> contextlib.AbstractContextManager:
    """bf16 autocast around a training step on CUDA (positions and the loss stay float32, see EGNN);
    a no-op on CPU or with `bf16=False`, so one training loop serves both."""
    if torch.device(device).type == "cuda" and bf16:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
