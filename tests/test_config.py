"""`pdfusion.config.apply_set`: the one `--set key=value` parser the training and tuning jobs share."""

import pytest

from pdfusion.config import ConfigError, TrainConfig, apply_set, from_dict, preset, to_dict


def test_apply_set_parses_json_values_into_nested_fields():
    data = to_dict(preset("tiny"))
    apply_set(data, "model.hidden=32")
    apply_set(data, "data.split_by=metal")  # not JSON: kept as a string
    apply_set(data, "lr=0.002")
    cfg = from_dict(TrainConfig, data)
    assert cfg.model.hidden == 32 and cfg.data.split_by == "metal" and cfg.lr == 0.002


@pytest.mark.parametrize("item, message", [
    ("val_pdfs", "expected key=value"),
    ("model.widthh=3", "unknown field 'widthh'"),
    ("lr.x=3", "'lr' is not a config section"),
])
def test_apply_set_names_the_bad_key(item, message):
    with pytest.raises(ConfigError, match=message):
        apply_set(to_dict(preset("tiny")), item)


def test_apply_set_reads_python_none_as_null_and_wrong_types_are_named():
    data = to_dict(preset("cpu"))
    apply_set(data, "model.cutoff=None")
    assert from_dict(TrainConfig, data).model.cutoff is None
    apply_set(data, "model.cutoff=6")  # an int where a float is expected is fine
    assert from_dict(TrainConfig, data).model.cutoff == 6
    apply_set(data, "model.cutoff=abc")
    with pytest.raises(ConfigError, match=r"ModelConfig.cutoff: expected float \| None, got str 'abc'"):
        from_dict(TrainConfig, data)
    data = to_dict(preset("cpu"))
    apply_set(data, "model.hidden=32.5")
    with pytest.raises(ConfigError, match="ModelConfig.hidden: expected int, got float"):
        from_dict(TrainConfig, data)
