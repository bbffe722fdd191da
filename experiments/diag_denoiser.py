"""Where does a trained denoiser fail? ε-loss and the error of its clean-structure estimate x̂0, by noise level.

For a structure the model was trained on (or any seed-oxides .h5 file), noise it to fixed t, predict ε with
the EMA model (conditioned on the structure's own PDF), and report ‖x̂0 − x0‖ per atom in Å next to the
noise's own size. A denoiser that can sample fitting structures must make x̂0 errors far below the ~0.1 Å
peak width of the seed PDFs at small t, and well below a bond length (~2 Å) at mid t.

    python experiments/diag_denoiser.py runs/exp_overfit_one_v2/checkpoint.pt \
        --file ../shared/data/seed-oxides/graphs_h5/graph_CdI2_SrO2_r5.h5
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: `experiments` is a package
from experiments.common import DEFAULT_FILE, load_one, print_table, x0_errors


def main() -> None:
    from pdfusion.training.trainer import Trainer

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--file", default=str(DEFAULT_FILE))
    ap.add_argument("--copies", type=int, default=32, help="noise draws per t")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--oracle", type=int, default=0,
                    help="also compute the ideal (memorising) denoiser's x̂0 error on this many noise draws per t")
    ap.add_argument("--uncond", action="store_true", help="drop the PDF condition (γ = 0) to see how much it helps")
    args = ap.parse_args()
    torch.set_num_threads(1)
    data, _ = load_one(Path(args.file))
    print_table(x0_errors(Trainer.from_checkpoint(args.checkpoint), data, copies=args.copies, seed=args.seed,
                          oracle=args.oracle, uncond=args.uncond))


if __name__ == "__main__":
    main()
