"""Experiment (d): the seed-135 experiment on graphs_h5 (23-511 atoms), split by metal (unseen metals in
validation), atom count predicted from the PDF. Same outputs and bar as experiments/exp_seed135.py.

    nice -n 10 python experiments/exp_seed_variable.py --minutes 30 --val-pdfs 24 --out runs/exp_seed_variable
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: `experiments` is a package
from experiments.common import SHARED
from experiments.exp_seed135 import run


def variable_config(seed: int = 0, name: str = "cpu"):
    """A preset with room for the largest particles (511 atoms), size-bucketed; the `cpu` one in batches of 4."""
    from pdfusion.config import preset

    base = preset(name)
    data = dataclasses.replace(base.data, batch_size=4) if name == "cpu" else base.data
    return dataclasses.replace(base, seed=seed, data=data, warmup_steps=50, ema_decay=0.995)


if __name__ == "__main__":
    run(SHARED / "graphs_h5", "metal", "seed-oxides graphs_h5 (variable size), split by metal",
        "runs/exp_seed_variable", config_fn=variable_config)
