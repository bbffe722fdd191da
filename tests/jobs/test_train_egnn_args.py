"""`jobs/train_egnn.py`'s flags become the TrainConfig the workers get (paths absolute: Ray runs a copy)."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _job():
    spec = importlib.util.spec_from_file_location("train_egnn_job", ROOT / "jobs" / "train_egnn.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_extra_train_paths_are_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    job = _job()
    cfg = job.build_config(job.parser().parse_args(
        ["--preset", "tiny", "--data", "seed", "--extra-train", "gen_a", "gen_b", "--max-steps", "7"]))
    assert cfg.data.path == str(tmp_path / "seed")
    assert cfg.data.extra_train == (str(tmp_path / "gen_a"), str(tmp_path / "gen_b"))
    assert cfg.max_steps == 7
    plain = job.build_config(job.parser().parse_args(["--preset", "tiny", "--data", "seed"]))
    assert plain.data.extra_train == ()
