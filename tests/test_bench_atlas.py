"""The atlas benchmark's arithmetic: time to reach a PSNR, the speed-up at equal PSNR, eval spacing."""

from __future__ import annotations

import pytest

from bench.atlas import compare, eval_iterations, time_bracket, time_to_reach


def test_time_to_reach_interpolates_between_evaluations():
    curve = [(1.0, 10.0), (3.0, 20.0), (6.0, 25.0)]
    assert time_to_reach(curve, 15.0) == pytest.approx(2.0)
    assert time_to_reach(curve, 5.0) == pytest.approx(0.5)  # from (0 s, 0 dB): an estimate
    assert time_to_reach(curve, 25.0) == pytest.approx(6.0)
    assert time_to_reach(curve, 26.0) is None


def test_compare_gives_speedup_at_the_lower_final_psnr_and_a_ladder():
    hash_curve = [(1.0, 20.0), (2.0, 30.0)]
    pe_curve = [(10.0, 15.0), (40.0, 25.0)]
    out = compare({"hash": hash_curve, "pe": pe_curve})
    assert out["equal_psnr_db"] == 25.0
    assert out["hash_seconds"] == pytest.approx(1.5) and out["pe_seconds"] == pytest.approx(40.0)
    assert out["speedup"] == pytest.approx(40.0 / 1.5)
    # PE was below 25 dB at 10 s and the hash fit at or above it by 2 s: at least 5x whatever happened between
    assert out["speedup_lower_bound"] == pytest.approx(10.0 / 2.0)
    assert out["hash_before_first_eval"] is False
    assert out["ladder"] == [(15.0, 10.0, pytest.approx(0.75)), (25.0, 40.0, pytest.approx(1.5))]
    # the hash fit's first evaluation is already past PE's final PSNR: flagged, and the bound uses that evaluation
    early = compare({"hash": [(1.0, 30.0)], "pe": pe_curve})
    assert early["hash_before_first_eval"] is True and early["speedup_lower_bound"] == pytest.approx(10.0)
    # PE at the PSNR on its first evaluation: no bound can be given
    assert compare({"hash": hash_curve, "pe": [(10.0, 25.0)]})["speedup_lower_bound"] is None


def test_time_bracket_is_the_evaluations_around_the_crossing():
    curve = [(1.0, 10.0), (3.0, 20.0), (6.0, 25.0)]
    assert time_bracket(curve, 15.0) == (1.0, 3.0)
    assert time_bracket(curve, 5.0) == (0.0, 1.0)
    assert time_bracket(curve, 26.0) is None


def test_eval_iterations_are_geometric_and_end_at_the_total():
    its = sorted(eval_iterations(1000, 4))
    assert its[0] == 10 and its[-1] == 1000 and len(its) == 4
    gaps = [b - a for a, b in zip(its, its[1:])]
    assert gaps == sorted(gaps)  # denser early
    assert eval_iterations(5, 4) == {5}
