"""Ray Serve deployments: a FastAPI ingress and an autoscaled, batching sampler.

The ingress validates and interpolates (cheap, many concurrent requests); the sampler holds the model
and turns whatever requests arrive within `batch_wait_timeout_s` into one `SamplerService.run_batch`
call (`@serve.batch`, batching by atom count: closed early when the batch's candidates exceed
`max_batch_candidates` or its candidate atoms `max_batch_atoms`). Replicas of
the sampler scale between min and max on ongoing requests. The model comes from the server's
`ServeConfig` only; requests never name a file.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle

from pdfusion.config import ServeConfig, from_dict, to_dict
from pdfusion.serving.service import SampleJob, SamplerService, batch_cost

SAMPLER_NAME = "PDFusionSampler"
INGRESS_NAME = "PDFusionIngress"


def _job_cost(jobs: list[SampleJob]) -> int:
    return batch_cost(jobs, *jobs[0].batch_caps)  # type: ignore[attr-defined]


@serve.deployment(name=SAMPLER_NAME)
class Sampler:
    """One replica = one loaded model; GPU share via `ray_actor_options.num_gpus`."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = from_dict(ServeConfig, cfg)
        self.service = SamplerService(self.cfg)
        self.batched.set_max_batch_size(self.cfg.max_batch_size)
        self.batched.set_batch_wait_timeout_s(self.cfg.batch_wait_timeout_s)
        # Set while no batch is running. `serve.batch` closes a batch `batch_wait_timeout_s` after its
        # first request even while the previous batch still runs, so under load it queues many small
        # batches (measured: mean 1.4 requests at 16 clients). Holding requests here until the sampler
        # is free lets everything that arrived meanwhile form the next batch together.
        self._free = asyncio.Event()
        self._free.set()
        self.caps = (self.cfg.max_batch_size, self.cfg.max_batch_candidates, self.cfg.max_batch_atoms,
                     int(self.service.bundle.config.model.max_atoms))

    def info(self) -> dict[str, Any]:
        return self.service.info()

    def stats(self) -> dict[str, int]:
        """Batches, jobs and sampler loops run by this replica (how well requests were batched)."""
        return dict(self.service.stats)

    async def sample(self, job: SampleJob) -> dict[str, Any]:
        job.batch_caps = self.caps  # type: ignore[attr-defined]
        await self._free.wait()
        return await self.batched(job)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.05, batch_size_fn=_job_cost)
    async def batched(self, jobs: list[SampleJob]) -> list[dict[str, Any]]:
        # Sampling is CPU/GPU-bound: run it off the event loop so the replica keeps queueing requests
        # (they form the next batch) and answering health checks.
        self._free.clear()
        try:
            return await asyncio.to_thread(self.service.run_batch, jobs)
        finally:
            self._free.set()


@serve.deployment(name=INGRESS_NAME)
@serve.ingress()
class Ingress:
    """HTTP front door; its FastAPI app is built after the sampler reports the model's r grid."""

    def __init__(self, sampler: DeploymentHandle, cfg: dict[str, Any]) -> None:
        self.sampler = sampler
        self.cfg = from_dict(ServeConfig, cfg)

    async def __serve_build_asgi_app__(self):
        from pdfusion.serving.api import create_api

        info = await self.sampler.info.remote()

        async def sample(job: SampleJob) -> dict[str, Any]:
            response = self.sampler.sample.remote(job)
            try:
                return await response
            except asyncio.CancelledError:  # request timed out or client left: drop the queued work
                response.cancel()
                raise

        return create_api(self.cfg, info, sample)


def build_app(cfg: ServeConfig):
    """The Serve application (ingress bound to an autoscaled sampler) for one `ServeConfig`."""
    autoscaling = {
        "min_replicas": cfg.min_replicas,
        "max_replicas": cfg.max_replicas,
        "target_ongoing_requests": cfg.target_ongoing_requests,
        "upscale_delay_s": cfg.upscale_delay_s,
        "downscale_delay_s": cfg.downscale_delay_s,
        "look_back_period_s": cfg.look_back_period_s,
        # replicas report load at least twice per look-back window (Serve's default is every 10 s)
        "metrics_interval_s": min(10.0, cfg.look_back_period_s / 2),
    }
    if cfg.initial_replicas is not None:
        autoscaling["initial_replicas"] = cfg.initial_replicas
    # Serve's access log writes a formatted line per request per deployment: measurable CPU at high load.
    logging = {"enable_access_log": cfg.access_log}
    sampler = Sampler.options(
        autoscaling_config=autoscaling,
        logging_config=logging,
        max_ongoing_requests=cfg.max_ongoing_requests,
        ray_actor_options={"num_cpus": cfg.num_cpus, "num_gpus": cfg.num_gpus},
    ).bind(to_dict(cfg))
    # The ingress mostly awaits the sampler: allow many requests in flight so they reach the batcher.
    return Ingress.options(
        logging_config=logging,
        max_ongoing_requests=max(256, 4 * cfg.max_ongoing_requests * cfg.max_replicas),
        ray_actor_options={"num_cpus": cfg.ingress_num_cpus},
    ).bind(sampler, to_dict(cfg))
