"""pdfusion.training: the one resumable training loop (`Trainer`), also the per-worker engine of the Ray
Train job in `ray_train`."""

from pdfusion.training.trainer import Trainer

__all__ = ["Trainer"]
