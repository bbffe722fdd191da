"""pdfusion.diffusion — the diffusion engine: schedules, Gaussian diffusion in the zero-CoM subspace,
the masked EGNN denoiser with a PDF/metal condition, and guided samplers.

Usage (CPU, a tiny model)::

    import torch
    from pdfusion.config import DiffusionConfig, ModelConfig, SampleConfig, ScheduleConfig
    from pdfusion.data.batching import collate
    from pdfusion.diffusion import GaussianDiffusion, PDFusionDenoiser, build_schedule, sample

    mcfg = ModelConfig(hidden=32, layers=3, pdf_embed=32)            # pdf_points = len(G(r)) = 3000
    dcfg = DiffusionConfig(schedule=ScheduleConfig(name="polynomial", timesteps=500), p_uncond=0.1)
    model = PDFusionDenoiser(mcfg)
    diffusion = GaussianDiffusion(build_schedule(dcfg.schedule), mcfg, dcfg)
    batch = collate(data_list)                                        # PyG Data: pos, z, y (1,n_r), metal (1,)
    loss, metrics = diffusion.training_loss(model, batch, count_loss_weight=0.1)   # loss includes the count term
    loss.backward()
    n = predict_n_atoms(model, batch.pdf, batch.metal)                # or fix it
    out = sample(model, diffusion, batch.pdf, batch.metal, n, SampleConfig(guidance=1.5, steps=100))
    out.positions  # (B, Nmax, 3) Å, zero CoM;  out.types (0 metal, 1 O);  out.mask;  out.numbers(batch.metal)

Unconditional models (toy data): DenseBatch with pdf=None and metal=None trains the null embedding only;
sample with pdf=None, metal=None.
"""

from pdfusion.diffusion.egnn import EGNN, build_edges
from pdfusion.diffusion.gaussian import GaussianDiffusion, atom_types
from pdfusion.diffusion.geometry import remove_mean
from pdfusion.diffusion.guards import NonFiniteError, check_finite
from pdfusion.diffusion.model import PDFusionDenoiser
from pdfusion.diffusion.samplers import (
    SampleResult,
    guided_epsilon,
    predict_n_atoms,
    sample,
    strided_timesteps,
)
from pdfusion.diffusion.schedules import NoiseSchedule, build_schedule

__all__ = [
    "EGNN", "GaussianDiffusion", "NoiseSchedule", "NonFiniteError", "PDFusionDenoiser", "SampleResult",
    "atom_types", "build_edges", "build_schedule", "check_finite", "guided_epsilon", "predict_n_atoms",
    "remove_mean", "sample", "strided_timesteps",
]
