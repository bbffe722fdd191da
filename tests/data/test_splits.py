"""Group-aware splits: deterministic, group-disjoint, covering, close to the requested fraction."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pdfusion.data.splits import group_keys, group_split


def test_deterministic_disjoint_and_covering():
    rng = np.random.default_rng(0)
    groups = [f"M{g}" for g in rng.integers(0, 30, size=600)]
    tr, va = group_split(groups, 0.2, seed=3)
    tr2, va2 = group_split(list(groups), 0.2, seed=3)
    np.testing.assert_array_equal(tr, tr2)
    np.testing.assert_array_equal(va, va2)
    assert tr.dtype == va.dtype == np.int64
    assert np.array_equal(np.sort(np.concatenate([tr, va])), np.arange(600))
    assert not {groups[i] for i in tr} & {groups[i] for i in va}
    assert abs(len(va) / 600 - 0.2) < 0.06
    other = group_split(groups, 0.2, seed=4)[1]
    assert not np.array_equal(other, va)  # the seed matters


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from("ABCDEFGHIJ"), min_size=2, max_size=80), st.floats(0.05, 0.95), st.integers(0, 10))
def test_properties(groups, frac, seed):
    if len(set(groups)) < 2:
        with pytest.raises(ValueError, match="at least 2 distinct groups"):
            group_split(groups, frac, seed)
        return
    tr, va = group_split(groups, frac, seed)
    assert len(tr) > 0 and len(va) > 0
    assert sorted(tr.tolist() + va.tolist()) == list(range(len(groups)))
    assert not {groups[i] for i in tr} & {groups[i] for i in va}


def test_group_keys():
    meta = {"metal": ["Ti", "Ti", "Zn"], "formula": ["TiO2", "TiO", "ZnO"],
            "structure_type": ["Rutile", "NaCl", "NaCl"]}
    assert group_keys(meta, "metal") == ["Ti", "Ti", "Zn"]
    assert group_keys(meta, "formula") == ["TiO2", "TiO", "ZnO"]
    assert group_keys(meta, "type") == ["Rutile", "NaCl", "NaCl"]
    assert len(set(group_keys(meta, "random"))) == 3
    with pytest.raises(ValueError, match="unknown 'element'"):
        group_keys(meta, "element")
    with pytest.raises(ValueError, match="has no 'metal'"):
        group_keys({"metal": ["Ti", None]}, "metal")


def test_bad_fraction():
    with pytest.raises(ValueError, match="val_fraction"):
        group_split(["a", "b"], 1.0, 0)
