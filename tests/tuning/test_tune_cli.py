"""jobs/tune_schedules.py rejects bad input before any Ray or trial starts, naming the flag or key."""

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tune_schedules():
    spec = importlib.util.spec_from_file_location("tune_schedules_job", ROOT / "jobs" / "tune_schedules.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("extra, message", [
    (["--set", "val_pdfs"], "expected key=value"),
    (["--set", "model.widthh=3"], "unknown field 'widthh'"),
    (["--set", "lr=-1"], "lr"),
    (["--evaluate-first", "{bad"], "--evaluate-first"),
])
def test_bad_flags_fail_before_any_trial(tune_schedules, tmp_path, capsys, extra, message):
    assert tune_schedules.main(["--data", str(tmp_path)] + extra) == 2
    assert message in capsys.readouterr().err
    assert "ray" not in sys.modules or not sys.modules["ray"].is_initialized()


def test_bad_space_file_and_missing_data(tune_schedules, tmp_path, capsys):
    space = tmp_path / "space.yaml"
    space.write_text("schedule: {choice: [linear, quadratic]}\n")
    assert tune_schedules.main(["--data", str(tmp_path), "--space", str(space)]) == 2
    assert "schedule" in capsys.readouterr().err
    assert tune_schedules.main(["--data", str(tmp_path / "nope")]) == 2
    assert "--data" in capsys.readouterr().err


def test_set_reaches_the_base_config(tune_schedules):
    from pdfusion.config import preset

    cfg = tune_schedules.with_sets(preset("tiny"), ["val_pdfs=7", "model.hidden=24", "diffusion.schedule.name=cosine"])
    assert (cfg.val_pdfs, cfg.model.hidden, cfg.diffusion.schedule.name) == (7, 24, "cosine")
