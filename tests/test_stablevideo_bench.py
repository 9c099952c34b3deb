"""The GPU check's ``stablevideo`` part at tiny sizes on the CPU: it runs the stage on a synthetic atlas
and reports time and memory (the same code the GPU runs at full size)."""

from __future__ import annotations

import numpy as np

from bench.gpu_check import PARTS, run_part
from bench.stablevideo import synthetic_fit


def test_stablevideo_part_smoke_runs_the_stage_and_reports(tmp_path):
    result = run_part(PARTS["stablevideo"], True, {}, PARTS["stablevideo"].smoke_budget_s)
    assert result["status"] == "ok", (result["error"], result["log_tail"][-5:])
    figures = result["figures"]
    assert [r["run"] for r in figures["runs"]] == ["cold", "warm", "warm_fg_only"]
    assert figures["seconds_per_video"] > 0 and figures["peak_gib"] > 0 and "background_s" in figures
    assert figures["clip"] == "8x64x48" and figures["headline"].startswith("8x64x48, 3 keyframes")


def test_synthetic_fit_is_a_loadable_atlas_with_a_moving_foreground(tmp_path):
    from stages.atlas.artifacts import load_fit

    frames = synthetic_fit(str(tmp_path / "fit"), 6, 40, 30, 64)
    fit = load_fit(str(tmp_path / "fit"))
    assert frames.shape == (6, 30, 40, 3) and fit.alpha.shape == (6, 30, 40) and fit.fg_atlas.shape == (64, 64, 3)
    core = [np.argwhere(a >= 0.99).mean(0) for a in fit.alpha]
    assert core[-1][1] - core[0][1] > 8  # the object moves right
