import numpy as np
import pytest

from pipeline.stage import (
    RunContext,
    Stage,
    format_error,
    pack_row,
    run_stage,
    run_stages_inline,
    unpack_row,
)

CTX = RunContext(output_url="/tmp/out", cache_url="/tmp/cache")


class Double(Stage):
    name = "double"
    reads = ("x",)
    writes = ("y",)

    def process(self, row):
        if row["x"] < 0:
            raise ValueError("x must be >= 0")
        row["y"] = row["x"] * 2
        return row


class Later(Stage):
    name = "later"
    reads = ("y",)

    def process(self, row):
        raise RuntimeError("should not run on failed rows")


def test_ok_row_gets_output_and_timing():
    row = run_stage(Double(None, CTX), {"job_id": "1", "x": 2})
    assert row["y"] == 4 and "status" not in row and row["stage_seconds"]["double"] >= 0


def test_missing_key_names_stage_and_key():
    row = run_stage(Double(None, CTX), {"job_id": "1"})
    assert row["status"] == "error" and row["error_stage"] == "double"
    assert row["error"] == "MissingKeyError: stage 'double' needs row key 'x', which is missing"


def test_error_is_recorded_never_overwritten_and_later_stages_skip():
    rows = run_stages_inline([Double(None, CTX), Later(None, CTX)], [{"job_id": "1", "x": -1, "big": np.ones(3)}])
    (row,) = rows
    assert row["status"] == "error" and row["error_stage"] == "double"
    assert row["error"] == "ValueError: x must be >= 0"
    assert "big" not in row  # arrays of failed rows are dropped
    assert "later" not in row["stage_seconds"]


def test_format_error_first_line_only():
    assert format_error(ValueError("a\nb")) == "ValueError: a"
    assert format_error(KeyError()) == "KeyError"


def test_transport_round_trip_keeps_arrays_exactly():
    row = {"job_id": "j", "n": np.int64(3), "f": 0.5, "d": {"a": 1}, "none": None,
           "frames": np.arange(24, dtype=np.uint8).reshape(2, 2, 2, 3), "c": np.ones((2, 2), np.float16)}
    text, blob = pack_row(row)
    back = unpack_row(text, blob)
    assert back["n"] == 3 and back["d"] == {"a": 1} and back["none"] is None
    np.testing.assert_array_equal(back["frames"], row["frames"])
    assert back["c"].dtype == np.float16
    assert unpack_row(*pack_row({"a": 1})) == {"a": 1}


def test_transport_refuses_unknown_objects():
    with pytest.raises(TypeError):
        pack_row({"x": object()})
