"""End to end: the trajectory preprocessing job on a tiny WebVid-style CSV, on a local Ray."""

from __future__ import annotations

import csv
import glob
import json
import os

import numpy as np
import pytest

from jobs.preprocess_trajectories import main
from jobs.trajectory_shards import ShardConfig, ShardStore, read_shard, shard_schema
from pipeline import media
from stages.motion_conditions import c_mot_from_record, gaussian_kernel, motion_conditions, selection_probabilities

pytestmark = pytest.mark.slow

SETTINGS = ["run.num_cpus=2", "window.num_frames=8", "window.width=128", "window.height=96",
            "trajectories.grid_size=8", "shards.max_rows=2", "trajectories.kernel_size=21", "trajectories.sigma=4"]


def _webvid_csv(tmp_path, sample_dir) -> tuple[str, dict]:
    with open(os.path.join(sample_dir, "manifest.csv")) as handle:
        sample = list(csv.DictReader(handle))
    rng = np.random.default_rng(0)
    short = media.encode(rng.integers(0, 255, (5, 96, 128, 3), dtype=np.uint8), str(tmp_path / "short.mp4"), 8.0)
    (tmp_path / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video")
    rows = [("1001", sample[0]["video_uri"], "an orange disc"), ("1002", sample[1]["video_uri"], "another disc"),
            ("1003", str(tmp_path / "missing.mp4"), "gone"), ("1004", str(tmp_path / "corrupt.mp4"), "broken"),
            ("1005", short, "too short")]
    path = tmp_path / "webvid.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["videoid", "contentUrl", "name", "duration", "page_dir"])
        for vid, url, name in rows:
            writer.writerow([vid, url, name, "PT00H00M03S", "023001_023050"])
    return str(path), {vid: name for vid, _, name in rows}


def _shard_rows(out: str) -> list[dict]:
    rows = []
    for url in sorted(glob.glob(os.path.join(out, "shards", "*.parquet"))):
        rows.extend(read_shard(url))
    return rows


def test_job_writes_shards_row_by_row_and_resumes(ray_local, sample_dir, tmp_path):
    manifest, captions = _webvid_csv(tmp_path, sample_dir)
    out = str(tmp_path / "out")
    args = ["--manifest", manifest, "--output", out, "--set", "run.max_failure_fraction=0.7"]
    args += [x for s in SETTINGS for x in ("--set", s)]
    assert main(args) == 0  # 3 of 5 rows fail: 0.6 <= 0.7

    rows = {r["videoid"]: r for r in _shard_rows(out)}
    assert sorted(rows) == ["1001", "1002", "1003", "1004", "1005"]  # one output row per input row
    assert len(glob.glob(os.path.join(out, "shards", "*.parquet"))) >= 2  # shards.max_rows=2 bounds them
    assert rows["1003"]["status"] == "error" and rows["1003"]["error_stage"] == "decode"
    assert rows["1003"]["error"].startswith("FileNotFoundError")
    assert rows["1004"]["status"] == "error" and rows["1004"]["error"].startswith("VideoDecodeError")
    assert rows["1005"]["status"] == "error" and rows["1005"]["error_stage"] == "trajectories"
    assert rows["1005"]["error"] == ("ClipTooShortError: clip has 5 frames after decoding, "
                                     "the trajectory window needs 8")
    for vid in ("1003", "1004", "1005"):
        assert rows[vid]["sampled_tracks"] is None and rows[vid]["c_mot"] is None
    kernel = gaussian_kernel(21, 4.0)
    for vid in ("1001", "1002"):
        r = rows[vid]
        assert r["status"] == "ok" and r["error"] is None and r["caption"] == captions[vid]
        assert (r["num_frames"], r["width"], r["height"], r["n_init"]) == (8, 128, 96, 64)
        assert r["fps"] == pytest.approx(12.0) and r["page_dir"] == "023001_023050"
        # the default shard is sparse: sampled tracks + parameters; c_mot is rebuilt by the library function
        assert r["tracks"] is None and r["c_mot"] is None and r["path_lengths"].shape == (64,)
        kept, _ = selection_probabilities(r["path_lengths"])
        assert r["n_kept"] == len(kept) and set(r["sampled_index"].tolist()) <= set(kept.tolist())
        assert 1 <= len(r["sampled_index"]) == r["n_sampled"] <= 10 and r["c_mot_channels"] == "dx,dy"
        k = r["n_sampled"]
        assert r["sampled_tracks"].shape == (8, k, 2) and r["sampled_tracks"].dtype == np.float32
        assert r["sampled_visibility"].shape == (8, k) and r["sampled_visibility"][0].all()
        c_mot = c_mot_from_record(r["sampled_tracks"], r["sampled_visibility"], 96, 128, json.loads(r["c_mot_params"]))
        assert c_mot.shape == (8, 2, 96, 128) and c_mot.dtype == np.float16
        expect = motion_conditions(r["sampled_tracks"], 96, 128, r["sampled_visibility"], kernel)
        assert np.allclose(c_mot.astype(np.float32), expect, atol=0.05, rtol=1e-2)
        assert np.abs(c_mot[1:]).max() > 0.1 and not c_mot[0].any()
        outputs = json.loads(r["outputs"])
        assert os.path.exists(outputs["tracks_overlay"]) and os.path.exists(outputs["c_mot_preview"])
    report = open(os.path.join(out, "report.html")).read()
    assert "tracks.webp" in report and "c_mot.webp" in report and "ClipTooShortError" in report
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert summary["counts"] == {"ok": 2, "error": 3, "skipped": 0}

    # resume: ok rows are left alone, the failed ones run again (and fail again: 3 of 3 > 0.7)
    first = {v: (r["run_id"], r["attempt"]) for v, r in rows.items()}
    assert main(args) == 1
    again = _shard_rows(out)
    assert sorted(r["videoid"] for r in again) == sorted(rows)  # superseded rows were removed
    again = {r["videoid"]: r for r in again}
    for vid in ("1001", "1002"):
        assert (again[vid]["run_id"], again[vid]["attempt"]) == first[vid]
        assert np.array_equal(again[vid]["sampled_index"], rows[vid]["sampled_index"])
    for vid in ("1003", "1004", "1005"):
        assert again[vid]["attempt"] == 2 and again[vid]["run_id"] != first[vid][0]


def test_shard_store_bounds_and_preflight(tmp_path):
    store = ShardStore(str(tmp_path), "r", shard_schema(), None, subdir="shards",
                       shard=ShardConfig(max_rows=10, max_bytes=1000))
    big = {"job_id": "a", "status": "ok", "c_mot": np.zeros((4, 2, 8, 8), np.float16)}  # 1024 bytes each
    store.write_part([big, {**big, "job_id": "b"}, {"job_id": "c", "status": "error", "error": "E: x"}])
    parts = store.part_urls()
    assert len(parts) == 2  # 1024 + 1024 > 1000: split; the error row has no arrays
    assert sorted(store.read()["job_id"]) == ["a", "b", "c"] and "c_mot" not in store.read().columns
    assert main(["--manifest", str(tmp_path / "none.csv"), "--output", str(tmp_path / "o")]) == 2
    assert main(["--manifest", "x.csv", "--output", str(tmp_path / "o"), "--set", "window.num_frames=1"]) == 2


def test_http_content_urls(ray_local, sample_dir, tmp_path):
    """WebVid's contentUrl is http(s): served here by a local http.server on 127.0.0.1."""
    import subprocess
    import sys

    from tests.servers import free_port, wait_http

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                               "--directory", sample_dir], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{port}/manifest.csv")
        name = sorted(d for d in os.listdir(sample_dir) if os.path.isdir(os.path.join(sample_dir, d)))[0]
        path = tmp_path / "webvid.csv"
        with open(path, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["videoid", "contentUrl", "name", "duration", "page_dir"])
            writer.writerow(["2001", f"http://127.0.0.1:{port}/{name}/video.mp4", "served", "PT3S", "d"])
            writer.writerow(["2002", f"http://127.0.0.1:{port}/{name}/absent.mp4", "absent", "PT3S", "d"])
        out = str(tmp_path / "out")
        args = ["--manifest", str(path), "--output", out, "--set", "run.max_failure_fraction=0.6"]
        assert main(args + [x for s in SETTINGS for x in ("--set", s)]) == 0
        rows = {r["videoid"]: r for r in _shard_rows(out)}
        assert rows["2001"]["status"] == "ok" and rows["2001"]["sampled_tracks"].shape[0] == 8
        assert rows["2002"]["status"] == "error" and rows["2002"]["error_stage"] == "decode"
    finally:
        server.terminate()
        server.wait(10)
