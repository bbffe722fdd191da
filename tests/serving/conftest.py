"""Serving fixtures: a tiny model trained for a few steps on rock-salt clusters the test builds itself
(PDFs from pdfusion's own simulator on the default 0–30 Å grid, so real .gr files interpolate onto it)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from serving_helpers import MAX_ATOMS, PDF, free_port, make_data, start_ray_serve, stop_ray_serve

from pdfusion.config import DataConfig, preset


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A `preset('tiny')` model (3000-point PDF grid, <= 40 atoms, T = 100) trained for 4 steps."""
    from pdfusion.training.trainer import Trainer

    torch.set_num_threads(1)
    base = preset("tiny")
    cfg = dataclasses.replace(base, model=dataclasses.replace(base.model, max_atoms=MAX_ATOMS),
                              data=DataConfig(batch_size=4), pdf=PDF)
    trainer = Trainer(cfg)
    trainer.fit(make_data(8), progress=False, max_steps=4)
    path = tmp_path_factory.mktemp("serve_model") / "tiny.pt"
    trainer.save_checkpoint(path, extra={"defaults": {"guidance": 1.0, "steps": 3}, "name": "tiny", "version": "7"})
    return path


@pytest.fixture(scope="package")
def serve_port():
    """One Ray + Serve session for the serving tests (Ray startup is the slow, fragile part on a shared
    machine); each test module deploys its own application on it and deletes it afterwards."""
    port = free_port()
    try:
        start_ray_serve(port)
        yield port
    finally:
        stop_ray_serve()
