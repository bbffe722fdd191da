"""Release what a Tune trial's Ray Train run holds when Tune ends the trial abruptly.

Why this exists: when ASHA (or any Tune stop) ends a trial, Tune terminates the trial's actor while
its `TorchTrainer.fit()` is still running. The Train controller, owned by that actor, dies with it,
but the worker group's placement group does not: a placement group created by a non-detached actor
lives until the whole *job* ends. Ray Train V2 guards against this with a detached
`PlacementGroupCleaner` that polls the controller through the Ray State API, which is served by the
dashboard; with `include_dashboard=False` every poll fails ("State API may be temporarily
unavailable"), the group is never removed and the next trial's worker group waits forever for its
CPUs (WorkerGroupStartupTimeoutError). Measured on 2 CPUs: after trial 1 a `{'CPU': 1.0}` group
stayed CREATED and trial 2's group stayed PENDING.

`PlacementGroupReaper` is the same idea without the State API: the Train run registers (controller
handle, placement group) from a worker-group callback, and the reaper pings the controller handle;
once the controller is dead it removes the group (a no-op when Train already removed it).
"""

from __future__ import annotations

import threading
import time
import warnings
from typing import Any

import ray
from ray.train.v2._internal.execution.callback import WorkerGroupCallback

REAPER_NAME = "pdfusion-placement-group-reaper"


class _Reaper:
    """Watches (controller, placement group) pairs; removes the group once its controller is dead."""

    def __init__(self, interval_s: float = 0.5):
        self._interval = interval_s
        self._lock = threading.Lock()
        self._watched: dict[str, tuple[Any, Any]] = {}
        self._reaped: list[str] = []
        self._registered: list[str] = []
        threading.Thread(target=self._loop, daemon=True, name="pg-reaper").start()

    def watch(self, controller, placement_group) -> None:
        with self._lock:
            self._watched[placement_group.id.hex()] = (controller, placement_group)
            self._registered.append(placement_group.id.hex())

    def watched(self) -> list[str]:
        with self._lock:
            return sorted(self._watched)

    def registered(self) -> list[str]:
        """Ids of every group ever handed to this reaper, in order (watched now or done)."""
        with self._lock:
            return list(self._registered)

    def reaped(self) -> list[str]:
        """Ids of the groups this reaper removed (Train had not)."""
        with self._lock:
            return list(self._reaped)

    @staticmethod
    def _alive(controller) -> bool:
        try:
            ray.get(controller.__ray_ready__.remote(), timeout=30)
            return True
        except ray.exceptions.GetTimeoutError:
            return True  # busy, not dead
        except ray.exceptions.RayActorError:
            return False

    def _loop(self) -> None:
        from ray.util import placement_group_table, remove_placement_group

        while True:
            time.sleep(self._interval)
            with self._lock:
                items = list(self._watched.items())
            for pg_id, (controller, pg) in items:
                state = placement_group_table(pg).get("state")
                if state == "REMOVED":  # Train shut its worker group down itself
                    done = True
                elif not self._alive(controller):
                    remove_placement_group(pg)
                    with self._lock:
                        self._reaped.append(pg_id)
                    done = True
                else:
                    done = False
                if done:
                    with self._lock:
                        self._watched.pop(pg_id, None)


PlacementGroupReaper = ray.remote(num_cpus=0, max_concurrency=4)(_Reaper)


def start_reaper(name: str = REAPER_NAME):
    """The reaper of this Ray namespace (created on first use). Keep the returned handle: a named,
    non-detached actor is destroyed once no handle to it is left."""
    return PlacementGroupReaper.options(name=name, get_if_exists=True).remote()


class RegisterWithReaper(WorkerGroupCallback):
    """Ray Train callback (runs in the Train controller): hand each new worker group's placement group
    and the controller's own handle to the named reaper of this job's namespace (the sweep driver,
    the Tune trial actors and the Train controllers all share it)."""

    def __init__(self, reaper_name: str = REAPER_NAME):
        self.reaper_name = reaper_name

    def after_worker_group_start(self, worker_group) -> None:
        pg = worker_group.get_worker_group_state().placement_group_handle.placement_group
        controller = ray.get_runtime_context().current_actor
        try:
            reaper = ray.get_actor(self.reaper_name)
        except ValueError:
            warnings.warn(f"no actor {self.reaper_name!r} in this Ray namespace: placement group {pg.id.hex()} "
                          "is not released if Tune stops this trial (call start_reaper() in the driver)",
                          stacklevel=1)
            return
        ray.get(reaper.watch.remote(controller, pg))
