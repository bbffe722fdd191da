"""experiments/compare_runs.py: the paired per-PDF comparison behind "better on n of 12" in the A/B tables."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np

SCRIPT = Path(__file__).resolve().parents[2] / "experiments" / "compare_runs.py"


def _module():
    spec = importlib.util.spec_from_file_location("compare_runs", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run(folder: Path, best: list[float], title: str = "t") -> Path:
    folder.mkdir()
    rwp = np.sort(np.c_[best, np.asarray(best) + 0.5], axis=1)
    np.savez(folder / "rwp.npz", rwp=rwp, refined=np.asarray(best) - 0.01, library=np.zeros(len(best)),
             library_index=np.zeros(len(best)))
    (folder / "result.json").write_text(json.dumps({"title": title, "sample_seconds": 10.0}))
    return folder


def test_counts_wins_per_pdf(tmp_path, capsys):
    a = _run(tmp_path / "a", [0.2, 0.3, 0.4])
    b = _run(tmp_path / "b", [0.1, 0.35, 0.2])
    assert _module().main([str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "B better on 2 of 3, worse on 1" in out and "A 0.300, B 0.200" in out


def test_refuses_runs_of_different_pdfs(tmp_path, capsys):
    a = _run(tmp_path / "a", [0.2, 0.3, 0.4])
    b = _run(tmp_path / "b", [0.2, 0.3])
    assert _module().main([str(a), str(b)]) == 2 and "different PDFs" in capsys.readouterr().err
    assert _module().main([str(a), str(tmp_path / "none")]) == 2 and "no rwp.npz" in capsys.readouterr().err
