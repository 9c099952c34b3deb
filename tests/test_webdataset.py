"""WebDataset tar shards in (one row per sample, resume by key) and `vidflow export` out."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile

import numpy as np
import pandas as pd
import pytest
import webdataset as wds

from jobs import edit_videos, export
from pipeline import media, storage, webdataset_input
from pipeline.prepare import BAD_INPUT_KEY

FAST = ["--set", "run.num_cpus=2", "--set", "decode.max_frames=6", "--set", "run.progress_seconds=5"]


def write_shard(path, samples: list[tuple[str, dict[str, bytes]]]) -> str:
    """A tar in video2dataset's layout: for each (key, {ext: bytes}) one member per extension."""
    with tarfile.open(path, "w") as tar:
        for key, members in samples:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return str(path)


def test_brace_ranges_keys_and_member_urls():
    assert webdataset_input.expand_braces("s3://b/{008..011}.tar") == [f"s3://b/{i:03d}.tar" for i in range(8, 12)]
    assert webdataset_input.expand_braces("d/{0..1}-{2..3}.tar") == ["d/0-2.tar", "d/0-3.tar", "d/1-2.tar", "d/1-3.tar"]
    assert webdataset_input.split_key("a/00001.mp4") == ("a/00001", "mp4")
    assert webdataset_input.split_key("x.seg.JSON") == ("x", "seg.json")
    url = webdataset_input.member_url("s3://b/s.tar", "k/1.mp4", 1536, 99)
    assert webdataset_input.parse_member_url(url) == ("s3://b/s.tar", "k/1.mp4", 1536, 99)
    with pytest.raises(ValueError, match="malformed"):
        webdataset_input.parse_member_url("tar-member://x:1/a::s.tar")
    assert webdataset_input.is_webdataset_url("s3://b/{0..9}.tar") and not webdataset_input.is_webdataset_url("m.csv")


def test_index_reads_headers_locates_videos_and_turns_bad_samples_into_error_rows(tmp_path):
    video = os.urandom(3000)
    shard = write_shard(tmp_path / "s.tar", [
        ("clip1", {"mp4": video, "txt": b" a dog runs \n", "json": json.dumps({"prompt": "a cat runs"}).encode()}),
        ("nojson", {"mp4": b"x" * 10}),
        ("novideo", {"json": b"{}", "txt": b"caption only"}),
    ])
    rows = webdataset_input.index_shard(shard)
    assert [r["sample_key"] for r in rows] == ["clip1", "nojson", "novideo"]
    first = rows[0]
    assert (first["caption"], first["source_prompt"], first["prompt"]) == ("a dog runs", "a dog runs", "a cat runs")
    assert b"".join(webdataset_input.read_member(first["video_uri"])) == video
    with webdataset_input.member_local_copy(first["video_uri"]) as (path, _):
        assert open(path, "rb").read() == video and path.endswith(".mp4")
    with storage.local_copy(first["video_uri"]) as (path, digest):  # any reader of video URLs gets it too
        assert open(path, "rb").read() == video and digest == hashlib.sha256(video).hexdigest()
    assert rows[2][BAD_INPUT_KEY].startswith("WebDatasetSampleError: sample 'novideo'") and BAD_INPUT_KEY not in first
    # a truncated shard keeps the samples before the damage and adds one error row for the shard
    data = open(shard, "rb").read()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[:512 + 3000 - 1000])
    rows = webdataset_input.index_shard(str(cut))
    assert rows[-1][BAD_INPUT_KEY].startswith("WebDatasetShardError:")
    assert webdataset_input.index_shard(str(tmp_path / "gone.tar"))[0][BAD_INPUT_KEY].startswith(
        "WebDatasetShardError:")


@pytest.mark.slow
def test_webdataset_in_resume_by_key_and_export_out(ray_local, sample_dir, tmp_path):
    clips = sorted(pd.read_csv(os.path.join(sample_dir, "manifest.csv")).video_uri)[:2]
    good = [(f"{i:05d}", {"mp4": open(c, "rb").read(), "txt": f"clip {i}".encode(),
                          "json": json.dumps({"url": f"http://dead.example/{i}.mp4"}).encode()})
            for i, c in enumerate(clips)]
    bad = [("corrupt", {"mp4": b"\x00" * 4096, "txt": b"noise"}), ("missing", {"json": b"{}"}),
           ("../../evil", {"mp4": open(clips[0], "rb").read()})]
    write_shard(tmp_path / "shards-0.tar", [good[0], bad[0]])
    write_shard(tmp_path / "shards-1.tar", [bad[1], good[1], bad[2]])
    out = str(tmp_path / "out")
    args = ["--output", out, "--method", "reencode", *FAST, "--set", "run.max_failure_fraction=1.0"]
    assert edit_videos.main(["--manifest", str(tmp_path / "shards-{0..1}.tar"), *args]) == 0
    frame = pd.concat([pd.read_parquet(os.path.join(out, "manifest", p)) for p in os.listdir(out + "/manifest")])
    by_key = frame.set_index("sample_key")
    assert len(frame) == 5 and frame.job_id.is_unique
    assert (by_key.loc[["00000", "00001", "../../evil"], "status"] == "ok").all()
    assert (by_key.loc["00001", "caption"], by_key.loc["00001", "source_prompt"]) == ("clip 1", "clip 1")
    assert json.loads(by_key.loc["00001", "sample_json"]) == {"url": "http://dead.example/1.mp4"}
    corrupt, missing = by_key.loc["corrupt"], by_key.loc["missing"]
    assert (corrupt.status, corrupt.error_stage) == ("error", "decode")
    assert corrupt.error.startswith("VideoDecodeError")
    assert (missing.status, missing.error_stage) == ("error", "input")
    assert missing.error.startswith("WebDatasetSampleError: sample 'missing'")
    evil = by_key.loc["../../evil"]
    assert "/" not in evil.video_id and os.path.realpath(evil.output_uri).startswith(os.path.realpath(out))
    frames, _, _ = media.decode(by_key.loc["00000", "output_uri"])
    assert len(frames) == 6

    # the same samples re-sharded into one tar in another order: finished samples are known by key
    write_shard(tmp_path / "all.tar", [good[1], bad[2], good[0]])
    assert edit_videos.main(["--manifest", str(tmp_path / "all.tar"), *args]) == 0
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert summary["already_done"] == 3 and summary["counts"]["ok"] == 3

    # export: bounded WebDataset shards the webdataset package reads back
    sizes = sorted(int(by_key.loc[k, "output_uri"] and os.path.getsize(by_key.loc[k, "output_uri"]))
                   for k in ("00000", "00001", "../../evil"))
    limit = sizes[-1] + 20_000  # room for one sample per shard, not two
    index = export.export_run(out, str(tmp_path / "wds"), limits=export.ExportLimits(max_bytes=limit))
    assert index["samples"] == 3 and len(index["shards"]) == 3 and index["skipped"]["not_ok"] == 2
    for shard in index["shards"]:
        assert os.path.getsize(shard["url"]) == shard["bytes"] <= limit
    got = {s["__key__"]: s for s in wds.WebDataset([s["url"] for s in index["shards"]], shardshuffle=False)}
    assert len(got) == 3 and all(set(s) >= {"mp4", "txt", "json"} for s in got.values())
    ok = by_key.loc["00000"]
    sample = got[export.sample_key(ok.video_id, ok.job_id)]
    meta = json.loads(sample["json"])
    assert (meta["job_id"], meta["sample_key"], meta["method"]) == (ok.job_id, "00000", "reencode")
    assert sample["mp4"] == open(ok.output_uri, "rb").read() and sample["txt"] == b""
    # the same run as Parquet: one binary column per member
    pindex = export.export_run(out, str(tmp_path / "pq"), fmt="parquet")
    table = pd.concat([pd.read_parquet(s["url"]) for s in pindex["shards"]])
    assert sorted(table.key) == sorted(got) and set(table.columns) == {"key", "mp4", "txt", "json"}


def test_export_of_a_trajectory_run_holds_the_arrays_and_counts_unreadable_videos(tmp_path):
    from jobs.trajectory_shards import ShardStore, shard_schema

    out = str(tmp_path / "traj")
    store = ShardStore(out, "r1", shard_schema(), None, subdir="shards")
    rng = np.random.default_rng(0)
    t, n, k = 4, 6, 2
    rows = []
    for i in range(3):
        rows.append({"job_id": f"j{i}", "video_id": f"v.{i}", "video_uri": str(tmp_path / f"v{i}.mp4"),
                     "caption": f"cap {i}", "status": "ok" if i < 2 else "error", "num_frames": t, "n_init": n,
                     "n_sampled": k, "height": 8, "width": 8, "attempt": 1,
                     "tracks": rng.random((t, n, 2), dtype=np.float32), "visibility": np.ones((t, n), bool),
                     "path_lengths": rng.random(n, dtype=np.float32), "sampled_index": np.array([1, 4], np.int32),
                     "sampled_tracks": rng.random((t, k, 2), dtype=np.float32),
                     "sampled_visibility": np.ones((t, k), bool), "c_mot_params": json.dumps({"sigma": 10})})
    store.write_part(rows)
    (tmp_path / "v0.mp4").write_bytes(b"video-0")  # v1's video is gone
    index = export.export_run(out, str(tmp_path / "wds"), with_video=True)
    assert index["kind"] == "trajectories" and index["samples"] == 1
    assert index["skipped"] == {"not_ok": 1, "superseded": 0, "unreadable": 1}
    assert index["unreadable_examples"][0].startswith("j1: FileNotFoundError")
    (sample,) = list(wds.WebDataset([index["shards"][0]["url"]], shardshuffle=False))
    assert sample["__key__"] == "v_0-j0" and sample["mp4"] == b"video-0" and sample["txt"] == b"cap 0"
    arrays = np.load(io.BytesIO(sample["npz"]))
    np.testing.assert_array_equal(arrays["sampled_tracks"], rows[0]["sampled_tracks"])
    assert arrays["tracks"].shape == (t, n, 2) and json.loads(sample["json"])["c_mot_params"] == {"sigma": 10}
    # byte-identical on a second export
    again = export.export_run(out, str(tmp_path / "wds2"), with_video=True)
    assert open(again["shards"][0]["url"], "rb").read() == open(index["shards"][0]["url"], "rb").read()
