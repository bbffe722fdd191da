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
import logging
import time
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle

from pdfusion.config import ConfigError, ServeConfig, from_dict, to_dict
from pdfusion.serving.api import RETRY_AFTER_S, ServiceUnavailable, create_api
from pdfusion.serving.service import SampleJob, SamplerService, batch_cost

SAMPLER_NAME = "PDFusionSampler"
INGRESS_NAME = "PDFusionIngress"
log = logging.getLogger("pdfusion.serving")
MODEL_LOAD_ATTEMPTS = 2  # sampler constructor tries before the deployment is DEPLOY_FAILED (Serve's default: 20)


class ModelLoadError(RuntimeError):
    """The sampler replica could not load the configured model file (missing, corrupt, not a checkpoint)."""


def _replica_lost_errors() -> tuple[type[BaseException], ...]:
    """Exceptions meaning "the replica that held this request is gone or cannot take it" (retry elsewhere)."""
    import ray.exceptions as rex

    errors: list[type[BaseException]] = [rex.RayActorError]  # ActorDiedError, a replica killed mid-request
    for name in ("ActorUnavailableError", "ActorDiedError", "WorkerCrashedError", "NodeDiedError"):
        if hasattr(rex, name):
            errors.append(getattr(rex, name))
    try:
        from ray.serve.exceptions import BackPressureError

        errors.append(BackPressureError)
    except ImportError:  # pragma: no cover - older Serve
        pass
    return tuple(errors)


def _job_cost(jobs: list[SampleJob]) -> int:
    return batch_cost(jobs, *jobs[0].batch_caps)  # type: ignore[attr-defined]


@serve.deployment(name=SAMPLER_NAME)
class Sampler:
    """One replica = one loaded model; GPU share via `ray_actor_options.num_gpus`."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = from_dict(ServeConfig, cfg)
        try:
            self.service = SamplerService(self.cfg)
        except Exception as exc:  # one line naming the file, not a torch traceback on every retry
            raise ModelLoadError(f"model: cannot load {self.cfg.model!r}: {type(exc).__name__}: {exc}") from None
        self.batched.set_max_batch_size(self.cfg.max_batch_size)
        self.batched.set_batch_wait_timeout_s(self.cfg.batch_wait_timeout_s)
        # Set while no batch is running. `serve.batch` closes a batch `batch_wait_timeout_s` after its
        # first request even while the previous batch still runs, so under load it queues many small
        # batches (docs/serving.md, "Benchmark"). Holding requests here until the sampler
        # is free lets everything that arrived meanwhile form the next batch together.
        self._free = asyncio.Event()
        self._free.set()
        model_max = int(self.service.bundle.config.model.max_atoms)
        self.caps = (self.cfg.max_batch_size, self.cfg.max_batch_candidates, self.cfg.max_batch_atoms, model_max)
        # this replica's speed, so the ingress admits only requests that fit request_timeout_s
        self.service.calibrate(min(self.cfg.limits.max_atoms, model_max))
        self._ongoing = 0

    def info(self) -> dict[str, Any]:
        return {**self.service.info(), "cost": self.service.cost}

    def pid(self) -> int:
        """The replica's process id (fault tests kill it)."""
        import os

        return os.getpid()

    def load(self) -> dict[str, Any]:
        """For /v1/health: requests in this replica (queued + sampling) and how many it takes."""
        return {"ongoing": self._ongoing, "capacity": self.cfg.max_ongoing_requests,
                "sampling": not self._free.is_set()}

    def stats(self) -> dict[str, int]:
        """Batches, jobs and sampler loops run by this replica (how well requests were batched)."""
        return dict(self.service.stats)

    async def sample(self, job: SampleJob) -> dict[str, Any]:
        job.batch_caps = self.caps  # type: ignore[attr-defined]
        self._ongoing += 1
        try:
            await self._free.wait()
            return await self.batched(job)
        except asyncio.CancelledError:
            # the request was cancelled (client gone, 504): the batch's sampler loop checks this between steps
            job.cancelled = True
            raise
        finally:
            self._ongoing -= 1

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
        info = await self.sampler.info.remote()
        lost = _replica_lost_errors()

        async def sample(job: SampleJob) -> dict[str, Any]:
            """Send the job to a sampler replica; if that replica dies (or cannot take it), retry on another
            or the restarted one, with backoff, until the request's deadline; then 503 + Retry-After."""
            delay = 0.5
            for attempt in range(1, 100):
                response = self.sampler.sample.remote(job)
                try:
                    return await response
                except asyncio.CancelledError:  # request timed out or client left: drop the queued work
                    response.cancel()
                    raise
                except lost as exc:
                    left = (job.deadline or time.time()) - time.time()
                    log.warning("sampler replica lost (%s), attempt %d; %.0f s left", type(exc).__name__, attempt, left)
                    if left < delay + 1.0:
                        raise ServiceUnavailable("the sampler replica handling this request stopped and no other "
                                                 "could take it in time; retry", RETRY_AFTER_S) from None
                    await asyncio.sleep(delay)
                    delay = min(2 * delay, 5.0)
            raise ServiceUnavailable("the sampler replica handling this request kept stopping; retry", RETRY_AFTER_S)

        async def probe() -> dict[str, Any]:
            response = self.sampler.load.remote()
            try:
                return await response
            except asyncio.CancelledError:
                response.cancel()
                raise

        return create_api(self.cfg, info, sample, probe)


def check_model_file(model: str) -> None:
    """Refuse a missing, unreadable or foreign local checkpoint before anything is deployed, naming the file
    (ConfigError 'model: ...'), instead of letting every sampler replica fail on it. Reads the checkpoint's
    structure only (mmap, weights_only; no tensor data). MLflow URIs are checked by the replica."""
    from pathlib import Path

    import torch

    if model.startswith(("models:/", "runs:/")) or "://" in model:
        return
    path = Path(model)
    if path.is_dir():
        return  # an MLflow model directory: the replica resolves it
    if not path.is_file():
        raise ConfigError(f"model: checkpoint {model} does not exist (relative paths resolve against {Path.cwd()}); "
                          "give an absolute path or an MLflow URI models:/name/version")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # noqa: BLE001 - any failure: the file is not a usable checkpoint
        raise ConfigError(f"model: checkpoint {model} cannot be read ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''}); "
                          "is it a complete pdfusion checkpoint?") from None
    if not isinstance(state, dict) or "config" not in state or "ema" not in state:
        raise ConfigError(f"model: {model} is not a pdfusion trainer checkpoint (missing 'config'/'ema')")


def build_app(cfg: ServeConfig, check_model: bool = True):
    """The Serve application (ingress bound to an autoscaled sampler) for one `ServeConfig`. The model file
    is checked first (`check_model_file`); a replica that still cannot load it fails its deployment after
    `MODEL_LOAD_ATTEMPTS` tries with a ModelLoadError naming the file (no endless restarts)."""
    if check_model:
        check_model_file(cfg.model)
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
        max_constructor_retry_count=MODEL_LOAD_ATTEMPTS,
        ray_actor_options={"num_cpus": cfg.num_cpus, "num_gpus": cfg.num_gpus},
    ).bind(to_dict(cfg))
    # The ingress mostly awaits the sampler: allow many requests in flight so they reach the batcher.
    return Ingress.options(
        logging_config=logging,
        max_ongoing_requests=max(256, 4 * cfg.max_ongoing_requests * cfg.max_replicas),
        ray_actor_options={"num_cpus": cfg.ingress_num_cpus},
    ).bind(sampler, to_dict(cfg))
