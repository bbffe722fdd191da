"""Shared fixtures. Tests that need ../shared/data/seed-oxides skip cleanly when it is absent;
everything else runs on data the project generates itself."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PDFUSION_SHARED", ROOT.parent / "shared"))
SEED_DIR = SHARED / "data" / "seed-oxides"
MEASURED_GR = SHARED / "data" / "measured-examples" / "Pt_S1.gr"

os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("TQDM_DISABLE", "1")
# A loaded CI machine starts a Serve proxy actor in more than Serve's 5 s ready check, and the controller then kills
# it ("ProxyActor ... killed by ray.kill, never ran"): give start-up and health checks room. Ray start heads and
# in-process sessions both inherit these.
os.environ.setdefault("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "60")
os.environ.setdefault("RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S", "30")
# Every test session starts Ray explicitly. Without this, a Serve router's background metrics thread left
# over from tests/serving calls ray.wait after Ray was shut down, which silently ray.init()s a fresh local
# instance; the next module's ray.init then fails with "called ray.init twice" (seen in a CI run).
# Read by ray at import time, so it must be set before anything imports ray.
os.environ.setdefault("RAY_ENABLE_AUTO_CONNECT", "0")


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"reference data not present: {path}")
    return path


@pytest.fixture(scope="session")
def seed_h5_dir() -> Path:
    """../shared/data/seed-oxides/graphs_h5 (1,536 variable-size particles)."""
    return _need(SEED_DIR / "graphs_h5")


@pytest.fixture(scope="session")
def seed_135_dir() -> Path:
    """../shared/data/seed-oxides/graphs_fixed_num_135 (384 particles of 135 atoms)."""
    return _need(SEED_DIR / "graphs_fixed_num_135")


@pytest.fixture(scope="session")
def measured_gr() -> Path:
    """A real measured xPDFsuite .gr file."""
    return _need(MEASURED_GR)


@pytest.fixture(autouse=True, scope="module")
def _no_ray_across_modules(request):
    """Each test module starts its own Ray session; never let one leak into the next module.
    (tests/serving shares one Ray + Serve session across its modules and stops it itself.)"""
    yield
    import sys

    if "serving" in request.node.path.parts:
        return

    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()


@pytest.fixture(scope="session")
def synthetic_store(tmp_path_factory):
    """(store root, PDFConfig): 16 rock-salt particles of 4 metals, PDFs on a short 0–10 Å grid."""
    from pdfusion_testdata import build_synthetic_store

    return build_synthetic_store(tmp_path_factory.mktemp("synthetic_store"))
