"""pdfusion.training: the single-process `Trainer` (also the per-worker engine of the Ray Train job),
`ModelBundle`/`load_bundle` (a trained model ready to sample), MLflow helpers in `tracking`."""

from pdfusion.training.bundle import ModelBundle, load_bundle
from pdfusion.training.trainer import Trainer

__all__ = ["ModelBundle", "Trainer", "load_bundle"]
