"""bench/dreammotion.py cannot rot between GPU runs: its GPU-check part at tiny sizes on the CPU, in float16
so the GradScaler path runs, with and without block checkpointing and the gradient-norm calibration."""

from __future__ import annotations

from bench.dreammotion import gpu_part, main
from bench.gpu_check import PARTS


def test_gpu_part_smoke_reports_time_memory_and_calibration():
    reports = []
    out = gpu_part(True, {"budget_s": 120.0}, reports.append)
    assert PARTS["dreammotion"].target == "bench.dreammotion:gpu_part"
    assert reports and out["skipped"] == [] and [r["checkpointing"] for r in out["runs"]] == [False, True]
    for run in out["runs"]:
        assert run["seconds_per_iteration"] > 0 and run["peak_gib"] > 0 and run["keys_hooked"] == 2
        assert run["precision"] == "float16 autocast + GradScaler"
    norms = out["gradient_norms_iteration0"]
    assert set(norms) == {"vdds", "s_ssm", "t_ssm"} and all(v > 0 for v in norms.values())
    assert "ckpt" in out["headline"] and "s/it" in out["headline"]


def test_cli_calibrate_prints_the_gradient_norms(capsys):
    assert main(["--smoke", "--calibrate", "--budget", "60"]) == 0
    assert '"gradient_norms_iteration0"' in capsys.readouterr().out
