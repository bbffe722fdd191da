"""Cross-request batching in the sampler service, in-process (no Ray): one sampler loop serves requests
of different atom counts and sizes; a request alone gets exactly what `generate_candidates` gives;
a seeded request's answer does not depend on its batch-mates; scores match an independent
re-simulation; the Serve batch key closes batches by candidate atoms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from serving_helpers import rocksalt_cluster, serve_cfg, simulate

from pdfusion.config import SampleConfig
from pdfusion.serving.service import SampleJob, SamplerService, batch_cost


@pytest.fixture(scope="module")
def service(tiny_checkpoint) -> SamplerService:
    torch.set_num_threads(1)
    return SamplerService(serve_cfg(tiny_checkpoint))


@pytest.fixture(scope="module")
def pdfs() -> list[np.ndarray]:
    return [simulate(*rocksalt_cluster(radius, metal)).astype(np.float32) for radius, metal in ((3.0, 22), (2.7, 30))]


def _job(pdf, metal=22, n_samples=2, n_atoms=None, seed=None, steps=3) -> SampleJob:
    return SampleJob(pdf=pdf, metal_z=metal, n_samples=n_samples, guidance=1.0, steps=steps, n_atoms=n_atoms, seed=seed)


def test_single_request_matches_generate_candidates(service, pdfs):
    from pdfusion.inference.candidates import generate_candidates, sample_mixed

    for n_atoms in (9, None):
        cfg = SampleConfig(guidance=1.0, steps=3, n_samples=3, n_atoms=n_atoms, seed=123)
        (ref,) = generate_candidates(service.bundle, pdfs[0][None], [22], cfg)
        (got,) = sample_mixed(service.bundle, pdfs[0][None], [22], [3], [n_atoms], cfg)
        assert [c.n_atoms for c in got] == [c.n_atoms for c in ref]
        for a, b in zip(got, ref, strict=True):
            np.testing.assert_allclose(a.positions, b.positions, atol=1e-6)
            assert a.rwp == pytest.approx(b.rwp, abs=1e-7)


def test_one_loop_serves_mixed_sizes_with_correct_scores(service, pdfs):
    jobs = [_job(pdfs[0], 22, 3, 8), _job(pdfs[1], 30, 1, 15), _job(pdfs[0], 22, 2, None), _job(pdfs[1], 30, 2, 5)]
    before = dict(service.stats)
    out = service.run_batch(jobs)
    assert service.stats["loops"] - before["loops"] == 1  # all unseeded, same steps/guidance: one loop
    assert service.stats["jobs"] - before["jobs"] == 4
    max_atoms = service.bundle.config.model.max_atoms
    for job, res in zip(jobs, out, strict=True):
        cands = res["candidates"]
        assert len(cands) == job.n_samples
        rwps = [c["rwp"] for c in cands]
        assert rwps == sorted(rwps)
        for c in cands:
            assert (c["n_atoms"] == job.n_atoms) if job.n_atoms else (2 <= c["n_atoms"] <= max_atoms)
            # independent check: re-simulate the returned XYZ and score it against this job's own PDF
            lines = c["xyz"].strip().splitlines()[2:]
            symbols = [ln.split()[0] for ln in lines]
            pos = np.array([[float(v) for v in ln.split()[1:4]] for ln in lines])
            metal = {22: "Ti", 30: "Zn"}[job.metal_z]
            assert set(symbols) <= {metal, "O"}
            numbers = np.array([job.metal_z if s == metal else 8 for s in symbols])
            g = simulate(numbers, pos)
            expected = np.sqrt(((g - job.pdf) ** 2).sum() / (job.pdf.astype(np.float64) ** 2).sum())
            assert c["rwp"] == pytest.approx(expected, rel=1e-3, abs=1e-5)


def test_seeded_answer_independent_of_batch_mates(service, pdfs):
    seeded = _job(pdfs[1], 30, 2, 10, seed=77)
    alone = service.run_batch([seeded])[0]
    mixed = service.run_batch([_job(pdfs[0], 22, 3, 12), seeded, _job(pdfs[1], 30, 1, None), seeded])
    assert mixed[1] == alone and mixed[3] == alone
    other = service.run_batch([_job(pdfs[1], 30, 2, 10, seed=78)])[0]
    assert other["candidates"][0]["xyz"] != alone["candidates"][0]["xyz"]


def test_batch_cost_closes_on_candidate_atoms(pdfs):
    small, free = _job(pdfs[0], n_samples=2, n_atoms=10), _job(pdfs[0], n_samples=2, n_atoms=None)
    # caps: 16 requests, 256 candidates, 100 candidate atoms; a free n_atoms counts as the model max (40)
    assert batch_cost([small] * 5, 16, 256, 100, 40) == 5
    assert batch_cost([small] * 6, 16, 256, 100, 40) == 17
    assert batch_cost([free], 16, 256, 100, 40) == 1
    assert batch_cost([free, free], 16, 256, 100, 40) == 17
    assert batch_cost([small] * 20, 16, 30, None, 40) == 17  # candidate cap alone
