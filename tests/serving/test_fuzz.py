"""Property-based fuzzing of the live Serve app from its own OpenAPI document (schemathesis +
hypothesis): schema-valid and schema-violating requests for every operation and media type, plus
schema-generated sampling options on a valid PDF (so real sampling is fuzzed too).
Property: never a 5xx, every error has the documented body, and the service keeps serving."""

from __future__ import annotations

import warnings

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serving_helpers import deploy, serve_cfg

pytestmark = pytest.mark.ray

N_REQUESTS = 520
VALID_R = (np.arange(1600) * 0.02).round(4)  # 0–31.98 Å: covers the model's 0–29.99 Å grid
VALID_G = np.sin(2.0 * VALID_R) * np.exp(-VALID_R / 8.0)


@pytest.fixture(scope="module")
def url(tiny_checkpoint, serve_port):
    from ray import serve

    yield deploy(serve_cfg(tiny_checkpoint, max_batch_size=4, max_ongoing_requests=8), serve_port, "fuzz")
    serve.delete("fuzz")


METALS = st.sampled_from(["Ti", "Zn", "Pt", "Co", "Mn", "Fe", "Ce", "W"])


def _with_valid_pdf(case_metal):
    case, metal = case_metal
    if isinstance(case.body, dict):
        case.body = {**case.body, "r": VALID_R.tolist(), "g": VALID_G.tolist(), "metal": metal}
    return case


def test_no_5xx_from_openapi_fuzzing(url):
    import schemathesis
    from schemathesis import GenerationMode

    warnings.simplefilter("ignore")
    schema = schemathesis.openapi.from_url(url + "/openapi.json")
    sample = schema["/v1/sample"]["POST"]
    strategies = [
        schema["/v1/health"]["GET"].as_strategy(),
        schema["/v1/model"]["GET"].as_strategy(),
        sample.as_strategy(media_type="application/json"),
        sample.as_strategy(generation_mode=GenerationMode.NEGATIVE, media_type="application/json"),
        sample.as_strategy(media_type="multipart/form-data"),
        sample.as_strategy(generation_mode=GenerationMode.NEGATIVE, media_type="multipart/form-data"),
        # schema-generated options (metal, n_atoms, steps, guidance, seed, refine, ...) on a valid PDF
        st.tuples(sample.as_strategy(media_type="application/json"), METALS).map(_with_valid_pdf),
        st.tuples(sample.as_strategy(media_type="application/json"), METALS).map(_with_valid_pdf),
    ]
    seen: list[tuple[str, int]] = []

    @settings(max_examples=N_REQUESTS, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(case=st.one_of(strategies))
    def run(case):
        response = case.call(base_url=url, timeout=60)
        seen.append((f"{case.method} {case.path}", response.status_code))
        assert response.status_code < 500, (case.method, case.path, case.body, response.text[:500])
        if response.status_code >= 400:
            err = response.json()["error"]
            assert isinstance(err["field"], str) and err["message"]

    run()
    codes = [c for _, c in seen]
    assert len(seen) >= 500, f"only {len(seen)} requests were generated"
    summary = {op: sorted({c for o, c in seen if o == op}) for op, _ in seen}
    assert codes.count(200) >= 50 and sum(400 <= c < 500 for c in codes) >= 50, (codes.count(200), summary)
    assert httpx.get(url + "/v1/health").status_code == 200
