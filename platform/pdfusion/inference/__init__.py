"""Inference on measured PDFs: "what is this particle?".

    from pdfusion.inference import solve
    result = solve(r, g, "Fe2O3")            # candidate library -> fast screen -> refine the best -> ranked
    result.candidates[0].structure_type, result.candidates[0].rw

Layering: structures -> pdf -> data -> diffusion -> inference -> evaluation. This package never imports
evaluation, training or serving; candidates from a trained model come in as plain Particles
(``solve(..., extra=[...])``, built by the CLI from ``pdfusion sample``'s sampling path).
"""

from pdfusion.inference.library import build_library, parse_composition
from pdfusion.inference.screen import ScreenConfig, prepare_target, screen
from pdfusion.inference.solve import SolveConfig, SolveResult, solve

__all__ = ["ScreenConfig", "SolveConfig", "SolveResult", "build_library", "parse_composition", "prepare_target",
           "screen", "solve"]
