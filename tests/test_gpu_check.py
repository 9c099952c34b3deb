"""bench/gpu_check.py cannot rot between GPU runs: ``--smoke`` runs every part at tiny sizes here.

Also the time-box: a part that hangs is stopped at its budget and keeps the figures it had
reported; a part that fails is an error row, and the parts after it still run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from bench.gpu_check import MAX_TOTAL_S, PARTS, Part, chosen_parts, part_budgets, run_part

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def hanging_part(smoke: bool, options: dict, report) -> dict:
    report({"first": 1})
    time.sleep(600)
    return {"never": True}


def failing_part(smoke: bool, options: dict, report) -> dict:
    report({"measured": 2.5})
    raise ValueError("the GPU caught fire")


def test_smoke_runs_every_part_and_writes_json_and_one_table(tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run([sys.executable, "-m", "bench.gpu_check", "--smoke", "--json", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    results = json.loads(out.read_text())
    assert results["smoke"] is True and set(results["parts"]) == set(PARTS)
    for name, part in results["parts"].items():
        assert part["status"] == "ok", (name, part["error"], part["log_tail"][-5:])
        assert part["figures"]["headline"] and name in proc.stdout
    tav = results["parts"]["tune_a_video"]["figures"]
    assert tav["seconds_per_tuning_step"] > 0 and tav["seconds_per_sampling_step"] > 0
    assert tav["precision"] == "float16 autocast + GradScaler"
    assert {"peak_gib_tuning", "peak_gib_inversion", "peak_gib_sampling", "seconds_vae_decode_clip"} <= set(tav)
    depth = results["parts"]["depth"]["figures"]["models"]["tiny"]
    assert depth["model_fps_b1"] > 0 and depth["predict_fps_b8"] > 0
    atlas = results["parts"]["atlas"]["figures"]
    for fit in atlas["fits"].values():
        assert fit["iterations"] > 0 and fit["curve"] and fit["projected_production_minutes"] > 0
    assert "speedup_lower_bound" in atlas["comparison"] and set(atlas["targets"]) == {">= 30 dB in <= 3 min (H100)"}
    assert "targets" in tav and "targets" not in results["parts"]["depth"]["figures"]  # hybrid only on the GPU
    assert results["parts"]["edit_job"]["figures"]["exit_code"] == 0
    clip = results["parts"]["atlas_clips"]["figures"]["clips"]["sample.mp4"]
    assert clip["segmentation"] == "motion" and clip["iterations_done"] == 40 and clip["psnr_mean_db"] > 15
    assert clip["iterations_per_s"] > 0 and clip["overlay_inside_fg_min"] > 0.5
    table = proc.stdout.strip().splitlines()
    assert table[0].startswith("vidflow gpu_check on cpu") and table[1].split()[:2] == ["part", "status"]
    assert len(table) == 2 + len(PARTS)


def test_the_real_clip_part_runs_only_with_clips_and_every_run_fits_one_call():
    assert "atlas_clips" not in chosen_parts(None, None, False)
    assert chosen_parts(None, ["a.mp4"], False) == list(PARTS) and chosen_parts(None, None, True) == list(PARTS)
    assert chosen_parts(["depth"], None, False) == ["depth"]
    nine = part_budgets(chosen_parts(None, None, False), False, 1.0, MAX_TOTAL_S)
    assert nine == {n: PARTS[n].budget_s for n in nine}  # 540 s: not scaled
    ten = part_budgets(chosen_parts(None, ["a.mp4"], False), False, 1.0, MAX_TOTAL_S)
    assert abs(sum(ten.values()) - MAX_TOTAL_S) < 1e-6 and ten["atlas"] < PARTS["atlas"].budget_s
    assert ten["atlas_clips"] / ten["atlas"] == PARTS["atlas_clips"].budget_s / PARTS["atlas"].budget_s
    alone = part_budgets(["atlas_clips"], False, 3.0, MAX_TOTAL_S)  # the real clips' own call
    assert alone == {"atlas_clips": MAX_TOTAL_S}
    assert part_budgets(list(PARTS), True, 1.0, MAX_TOTAL_S)["atlas"] == PARTS["atlas"].smoke_budget_s


def test_a_hanging_part_is_stopped_at_its_budget_and_keeps_its_figures():
    result = run_part(Part("hang", "tests.test_gpu_check:hanging_part", 10.0), True, {}, 10.0)
    assert result["status"] == "timeout" and result["figures"] == {"first": 1}


def test_a_failing_part_is_an_error_with_its_message():
    result = run_part(Part("fail", "tests.test_gpu_check:failing_part", 60.0), True, {}, 60.0)
    assert result["status"] == "error" and result["figures"] == {"measured": 2.5}
    assert result["error"] == "ValueError: the GPU caught fire"


def test_phase_peak_is_each_phases_own_memory_not_the_process_lifetime_peak():
    """What bench/tune_a_video.py reports per phase on the CPU: a phase that allocates shows it, and
    a later phase that does not is not charged for it (the lifetime peak RSS would be)."""
    import numpy as np
    import torch

    from bench.tune_a_video import PhasePeak, rss_bytes

    cpu = torch.device("cpu")
    base = rss_bytes()
    with PhasePeak(cpu) as big:
        block = np.ones(300 * 2**20, np.uint8)  # 300 MiB, touched, alive until the phase ends
    del block
    with PhasePeak(cpu) as small:
        pass
    assert big.bytes >= base + 250 * 2**20
    assert small.bytes < big.bytes - 200 * 2**20
