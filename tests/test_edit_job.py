"""End to end: the edit job on local Ray over the sample plus every kind of bad row."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest

from jobs import edit_videos
from pipeline import media

FAST = ["--set", "decode.max_frames=12", "--set", "encode.preset=ultrafast", "--set", "run.flush_rows=2"]


def _manifest(out: str) -> pd.DataFrame:
    frame = pd.read_parquet(os.path.join(out, "manifest"))
    return frame.set_index("video_id", drop=False)


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory, sample_dir):
    d = tmp_path_factory.mktemp("bad")
    good = pd.read_csv(os.path.join(sample_dir, "manifest.csv"))
    video = good.video_uri[0]
    data = open(video, "rb").read()
    (d / "empty.mp4").write_bytes(b"")
    (d / "text.mp4").write_text("definitely not a video\n" * 10)
    # truncated: an MP4 whose tail (with the moov index) is cut off
    (d / "truncated.mp4").write_bytes(data[: len(data) // 2])
    # zero decodable frames: a valid container whose coded frames are all zeroed out
    zero = bytearray(data)
    at = zero.find(b"mdat")
    size = int.from_bytes(zero[at - 4:at], "big")
    zero[at + 4:at - 4 + size] = bytes(size - 8)
    (d / "zero_frames.mp4").write_bytes(bytes(zero))
    big = np.zeros((4, 720, 1280, 3), dtype=np.uint8)
    media.encode(big, str(d / "too_big.mp4"), fps=10, preset="ultrafast")
    rows = [dict(r) for r in good.to_dict(orient="records")]
    rows += [
        {"video_uri": str(d / "missing.mp4"), "video_id": "missing"},
        {"video_uri": str(d / "empty.mp4"), "video_id": "empty"},
        {"video_uri": str(d / "truncated.mp4"), "video_id": "truncated"},
        {"video_uri": str(d / "text.mp4"), "video_id": "text"},
        {"video_uri": str(d / "zero_frames.mp4"), "video_id": "zero_frames"},
        {"video_uri": str(d / "too_big.mp4"), "video_id": "too_big"},
        {"video_uri": video, "video_id": "unknown_method", "method": "no_such_method"},
        {"video_uri": video, "video_id": "../../escape"},
        {"video_uri": video, "video_id": "bad_params", "params": "{not json"},
        {"video_uri": video, "video_id": "bad_override", "params": json.dumps({"decode.stride": 0})},
    ]
    for r in rows:
        r.setdefault("method", "reencode")
    path = d / "manifest.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return str(path), good


EXPECTED_ERRORS = {
    "missing": ("decode", "FileNotFoundError"),
    "empty": ("decode", "VideoDecodeError: empty file"),
    "truncated": ("decode", "VideoDecodeError: not a readable video container"),
    "text": ("decode", "VideoDecodeError: not a readable video container"),
    "zero_frames": ("decode", "VideoDecodeError: no decodable frames"),
    "too_big": ("decode", "VideoTooLargeError"),
    "unknown_method": ("validate", "UnknownMethodError: unknown method 'no_such_method'"),
    "bad_params": ("validate", "ParamsError: malformed params JSON"),
    "bad_override": ("validate", "ParamsError: bad per-row params"),
}


def test_every_bad_row_gets_its_own_error_and_good_rows_succeed(ray_local, bad_inputs, tmp_path):
    manifest_path, good = bad_inputs
    out = str(tmp_path / "out")
    code = edit_videos.main(["--manifest", manifest_path, "--output", out, *FAST,
                             "--set", "decode.max_pixels=400000", "--set", "run.max_failure_fraction=1.0"])
    assert code == 0
    frame = _manifest(out)
    assert len(frame) == len(pd.read_csv(manifest_path)) and frame.job_id.is_unique
    for vid, (stage, prefix) in EXPECTED_ERRORS.items():
        row = frame.loc[vid]
        assert (row.status, row.error_stage) == ("error", stage), (vid, row.error)
        assert row.error.startswith(prefix), (vid, row.error)
    ok = frame[frame.status == "ok"]
    escaped = [v for v in ok.video_id if v.startswith("escape-")]
    assert len(escaped) == 1 and sorted(ok.video_id) == sorted([*good.video_id, *escaped])
    for row in ok.itertuples():
        assert row.output_uri.startswith(out + "/videos/") and os.path.exists(row.output_uri)
        assert os.path.exists(row.preview_uri)
        frames, _, _ = media.decode(row.output_uri)
        assert len(frames) == 12 and (frames.shape[2], frames.shape[1]) == (row.width, row.height)
        assert json.loads(row.stage_seconds).keys() >= {"validate", "decode", "edit:reencode", "encode"}
    escape = ok[ok.video_id.str.startswith("escape")].iloc[0]
    assert "/" not in escape.video_id and os.path.realpath(escape.output_uri).startswith(os.path.realpath(out))
    # nothing was written outside the output location
    assert not os.path.exists(os.path.join(os.path.dirname(out), "escape"))
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert summary["counts"] == {"ok": len(ok), "error": len(EXPECTED_ERRORS), "skipped": 0}
    assert summary["failures_by_stage"] == {"decode": 6, "validate": 3}
    assert summary["videos_per_minute"] > 0
    page = open(os.path.join(out, "report.html")).read()
    assert "VideoTooLargeError" in page and page.count("<img") == len(ok)
    # the run's driver log is kept with the outputs and names failed rows by job id
    logs = sorted(os.listdir(os.path.join(out, "logs")))
    assert len(logs) == 2 and logs[0].endswith("-driver.log") and logs[1].endswith("-stages.log"), logs
    text = open(os.path.join(out, "logs", logs[0])).read()
    missing = frame.loc["missing"]
    assert f"row {missing.job_id} (missing) failed in decode: FileNotFoundError" in text and "summary:" in text
    # ... and the stage workers' log, every record stamped with its stage and row
    stages_text = open(os.path.join(out, "logs", logs[1])).read()
    assert f"[decode {missing.job_id}]" in stages_text and "FileNotFoundError" in stages_text
    assert f"[validate {frame.loc['bad_params'].job_id}]" in stages_text


def test_rerun_skips_ok_rows_and_retries_the_rest(ray_local, sample_dir, tmp_path):
    src = pd.read_csv(os.path.join(sample_dir, "manifest.csv"))
    flaky = tmp_path / "flaky.mp4"
    rows = src.to_dict(orient="records") + [{"video_uri": str(flaky), "video_id": "flaky", "method": "reencode"}]
    manifest_path = tmp_path / "m.csv"
    pd.DataFrame(rows).to_csv(manifest_path, index=False)
    out = str(tmp_path / "out")
    args = ["--manifest", str(manifest_path), "--output", out, *FAST]
    assert edit_videos.main(args) == 0
    first = _manifest(out)
    assert first.loc["flaky"].status == "error" and (first.status == "ok").sum() == len(src)
    shutil.copy(src.video_uri[0], flaky)  # the file turns up
    assert edit_videos.main(args) == 0
    second = _manifest(out)
    assert len(second) == len(rows) and second.job_id.is_unique and (second.status == "ok").all()
    assert second.loc["flaky"].attempt == 2
    for vid in src.video_id:  # ok rows were not redone
        assert second.loc[vid].run_id == first.loc[vid].run_id and second.loc[vid].attempt == 1
    assert len(os.listdir(os.path.join(out, "manifest"))) == 1  # compacted


def test_scheduled_glob_runs_only_new_files(ray_local, sample_dir, tmp_path):
    incoming = tmp_path / "incoming" / "day1"
    incoming.mkdir(parents=True)
    videos = pd.read_csv(os.path.join(sample_dir, "manifest.csv")).video_uri
    shutil.copy(videos[0], incoming / "a.mp4")
    out = str(tmp_path / "out")
    args = ["--manifest", str(tmp_path / "incoming" / "**" / "*.mp4"), "--method", "reencode", "--output", out, *FAST]
    assert edit_videos.main(args) == 0
    first = _manifest(out)
    assert list(first.video_id) == ["a"]
    (tmp_path / "incoming" / "day2").mkdir()
    shutil.copy(videos[1], tmp_path / "incoming" / "day2" / "b.mp4")
    assert edit_videos.main(args) == 0
    second = _manifest(out)
    assert sorted(second.video_id) == ["a", "b"] and (second.status == "ok").all()
    assert second.loc["a"].run_id == first.loc["a"].run_id != second.loc["b"].run_id


def test_preflight_failures_exit_2_before_any_work(ray_local, sample_dir, tmp_path):
    manifest_path = os.path.join(sample_dir, "manifest.csv")
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("decode:\n  max_frame: 3\n")
    out = str(tmp_path / "out")
    assert edit_videos.main(["--manifest", manifest_path, "--output", out, "--config", str(bad_yaml)]) == 2
    assert edit_videos.main(["--manifest", manifest_path, "--output", out, "--method", "nope"]) == 2
    assert edit_videos.main(["--manifest", manifest_path, "--output", out,
                             "--set", "decode.resources={num_gpus: 1}"]) == 2
    assert edit_videos.main(["--manifest", manifest_path, "--output", "nosuchproto://x/y"]) == 2
    assert edit_videos.main(["--manifest", str(tmp_path / "absent.csv"), "--output", out]) == 2
    assert not os.path.exists(os.path.join(out, "manifest"))


def test_dry_run_and_limit_process_nothing(ray_local, sample_dir, tmp_path):
    out = str(tmp_path / "out")
    manifest_path = os.path.join(sample_dir, "manifest.csv")
    assert edit_videos.main(["--manifest", manifest_path, "--output", out, "--dry-run"]) == 0
    assert not os.path.exists(os.path.join(out, "manifest"))
    assert edit_videos.main(["--manifest", manifest_path, "--output", out, "--limit", "1", *FAST]) == 0
    assert len(_manifest(out)) == 1


def test_too_many_failures_exit_1(ray_local, tmp_path):
    manifest_path = tmp_path / "m.csv"
    pd.DataFrame([{"video_uri": str(tmp_path / "gone.mp4")}]).to_csv(manifest_path, index=False)
    out = str(tmp_path / "out")
    assert edit_videos.main(["--manifest", str(manifest_path), "--output", out]) == 1
    assert _manifest(out).iloc[0].status == "error"


def test_demo_makes_the_sample_and_a_report(ray_local, tmp_path):
    out = str(tmp_path / "demo")
    # --method reencode keeps this test fast; the demo's own method (atlas_edit) is tested in test_atlas.py
    assert edit_videos.main(["--demo", "--output", out, "--method", "reencode", *FAST]) == 0
    sample = pd.read_csv(os.path.join(out, "sample", "manifest.csv"))
    assert len(sample) == 3 and set(sample.columns) >= {"video_uri", "overlay_uri", "mask_uri"}
    frame = _manifest(out)
    assert len(frame) == 3 and (frame.status == "ok").all() and (frame.method == "reencode").all()
    assert frame.width.max() <= 160  # the demo config's working resolution
    assert os.path.exists(os.path.join(out, "report.html"))


def test_jsonl_and_parquet_manifests_stream_like_csv(ray_local, sample_dir, tmp_path):
    src = pd.read_csv(os.path.join(sample_dir, "manifest.csv"))[["video_uri", "video_id"]].head(2)
    jsonl = tmp_path / "m.jsonl"
    with open(jsonl, "w") as handle:
        for i, row in enumerate(src.to_dict(orient="records")):
            # params as a JSON object (not a string), as JSONL writers produce
            handle.write(json.dumps({**row, "method": "reencode", "params": {"decode.stride": 1 + i}}) + "\n")
    out = str(tmp_path / "out")
    assert edit_videos.main(["--manifest", str(jsonl), "--output", out, *FAST]) == 0
    frame = _manifest(out)
    assert sorted(frame.video_id) == sorted(src.video_id) and (frame.status == "ok").all()
    assert json.loads(frame.loc[src.video_id[1]].params) == {"decode.stride": 2}
    parquet = tmp_path / "m.parquet"
    src.assign(method="reencode").to_parquet(parquet)
    # the same rows from Parquet have the same job ids: the rerun finds them done
    rerun = str(tmp_path / "out2")
    assert edit_videos.main(["--manifest", str(parquet), "--output", rerun, *FAST]) == 0
    assert edit_videos.main(["--manifest", str(parquet), "--output", rerun, *FAST]) == 0
    summary = json.load(open(os.path.join(rerun, "summary.json")))
    assert summary["already_done"] == 2 and summary["processed_this_run"] == 0


def test_a_malformed_csv_record_is_an_error_row_and_the_run_goes_on(ray_local, sample_dir, tmp_path):
    src = pd.read_csv(os.path.join(sample_dir, "manifest.csv"))[["video_uri", "video_id"]].head(2)
    path = tmp_path / "m.csv"
    rows = [f"{r.video_uri},{r.video_id},reencode" for r in src.itertuples()]
    path.write_text("video_uri,video_id,method\n" + "\n".join([rows[0], "x.mp4,too,many,fields,here", rows[1]]) + "\n")
    out = str(tmp_path / "out")
    assert edit_videos.main(["--manifest", str(path), "--output", out, *FAST,
                             "--set", "run.max_failure_fraction=1.0"]) == 0
    frame = pd.concat([pd.read_parquet(os.path.join(out, "manifest", p)) for p in os.listdir(out + "/manifest")])
    assert len(frame) == 3 and sorted(frame.status) == ["error", "ok", "ok"]
    bad = frame[frame.status == "error"].iloc[0]
    assert bad.error_stage == "input"
    assert bad.error.startswith("ManifestLineError: CSV record has 5 fields, the header 3 (record 'x.mp4,too,many")
    # the good rows keep the ids the same rows get from Parquet: the reader's extra columns do not count
    parquet = tmp_path / "m.parquet"
    src.assign(method="reencode").to_parquet(parquet)
    from pipeline.input_source import describe_input
    from pipeline.manifest import make_job_id
    from pipeline.prepare import rows_from_table

    assert describe_input(str(parquet)).rows == 2
    ids = {make_job_id(r) for r in rows_from_table(pd.read_parquet(parquet).pipe(pa_table))}
    assert ids == set(frame[frame.status == "ok"].job_id)


def pa_table(frame: pd.DataFrame):
    import pyarrow as pa

    return pa.Table.from_pandas(frame, preserve_index=False)
