"""Ray Serve entry point (thin shell): `serve run serve/config.yaml` or
`serve run serve.app:app_builder model=path/to/checkpoint.pt`. All logic lives in `pdfusion.serving`."""

from pdfusion.serving.app import app_builder

__all__ = ["app_builder"]
