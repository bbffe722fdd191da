import pytest

from pdfusion.tuning import space as sp


def test_defaults_are_valid():
    sp.validate_space(sp.DEFAULT_SCHEDULE_SPACE, sp.SCHEDULE_KEYS)
    sp.validate_space(sp.DEFAULT_GUIDANCE_SPACE, sp.GUIDANCE_KEYS)


@pytest.mark.parametrize(
    "space, allowed, key",
    [
        ({"schedule": {"choice": ["linear", "quadratic"]}}, sp.SCHEDULE_KEYS, "schedule"),
        ({"guidance": {"uniform": [-1.0, 4.0]}}, sp.GUIDANCE_KEYS, "guidance"),
        ({"lr": {"choice": []}}, sp.SCHEDULE_KEYS, "lr"),
        ({"learning_rate": {"choice": [1e-3]}}, sp.SCHEDULE_KEYS, "learning_rate"),
        ({"guidance": {"uniform": [3.0, 1.0]}}, sp.GUIDANCE_KEYS, "guidance.uniform"),
        ({"lr": {"loguniform": [0.0, 1e-3]}}, sp.SCHEDULE_KEYS, "lr"),
        ({"steps": {"normal": [1, 2]}}, sp.GUIDANCE_KEYS, "steps"),
        ({"p_uncond": {"choice": [1.5]}}, sp.SCHEDULE_KEYS, "p_uncond"),
    ],
)
def test_bad_spaces_name_the_key(space, allowed, key):
    with pytest.raises(sp.SearchSpaceError, match=key):
        sp.validate_space(space, allowed)


def test_load_space_yaml_and_tune_conversion(tmp_path):
    f = tmp_path / "space.yaml"
    f.write_text("schedule: {choice: [linear, cosine]}\nlr: {loguniform: [1.0e-4, 1.0e-3]}\n")
    space = sp.validate_space(sp.load_space(f), sp.SCHEDULE_KEYS)
    tuned = sp.to_tune(space)
    assert set(tuned) == {"schedule", "lr"}
    assert sorted(tuned["schedule"].categories) == ["cosine", "linear"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("schedule: [linear\n")
    with pytest.raises(sp.SearchSpaceError, match="not valid YAML"):
        sp.load_space(bad)
