"""The fit figures: the difference panel is target − rank 1, and the solution figure shows each top candidate."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from pdfusion.evaluation import plots


@pytest.fixture
def captured(monkeypatch):
    figs = []
    real = plots._save

    def keep(fig, path):
        figs.append(fig)
        return real(fig, path)

    monkeypatch.setattr(plots, "_save", keep)
    return figs


def _cands():
    r = np.arange(0, 10, 0.05)
    g = np.random.default_rng(0)
    return r, np.sin(r), [SimpleNamespace(g_sim=np.sin(r) * s, rwp=1 - s, n_atoms=8, numbers=np.array([22, 8] * 4),
                                          positions=g.normal(size=(8, 3))) for s in (0.9, 0.7, 0.5, 0.3)]


@pytest.mark.parametrize("draw", ["candidate_overlay", "solution_figure"])
def test_difference_panel_is_target_minus_the_best(draw, captured, tmp_path):
    r, target, cands = _cands()
    path = getattr(plots, draw)(r, target, cands, "t", tmp_path / "f.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
    axes = captured[0].axes
    fit, diff = axes[0], axes[1]
    assert len(fit.lines) == 1 + 3  # target + the best 3
    np.testing.assert_allclose(diff.lines[0].get_ydata(), target - cands[0].g_sim)
    if draw == "solution_figure":
        assert len(axes) == 2 + 3 and [a.get_title() for a in axes[2:]][0].startswith("rank 1: R_wp 0.1000")
