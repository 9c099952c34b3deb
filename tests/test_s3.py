"""The edit job with its input and output on S3, served by moto_server in its own process."""

from __future__ import annotations

import json
import os

import pandas as pd
import pytest

from tests.servers import start_moto

pytest.importorskip("s3fs")


@pytest.fixture(scope="module")
def s3():
    proc, endpoint = start_moto()
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
           "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    s3fs.S3FileSystem().mkdir("vidflow-test")
    yield endpoint
    proc.terminate()
    proc.wait(10)
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def test_edit_job_reads_and_writes_s3(ray_local, s3):
    import s3fs

    from jobs import edit_videos
    from jobs.make_sample import make_sample

    manifest_url = make_sample("s3://vidflow-test/sample", count=2, seed=3)
    rows = pd.read_csv(s3fs.S3FileSystem().open(manifest_url))
    assert all(u.startswith("s3://vidflow-test/sample/") for u in rows.video_uri)
    out = "s3://vidflow-test/runs/r1"
    # Ray workers started before this test do not see the AWS_* variables: the endpoint and
    # credentials travel in the job's storage config, as they would on a cluster.
    creds = ["--set", f"storage.endpoint_url={s3}", "--set", "storage.key=test", "--set", "storage.secret=test",
             "--set", "storage.region=us-east-1", "--set", "decode.max_frames=8", "--set", "encode.preset=ultrafast"]
    assert edit_videos.main(["--manifest", manifest_url, "--output", out, *creds]) == 0
    fs = s3fs.S3FileSystem()
    fs.invalidate_cache()
    parts = fs.glob("vidflow-test/runs/r1/manifest/*.parquet")
    assert len(parts) == 1
    frame = pd.read_parquet(fs.open(parts[0]))
    assert len(frame) == 2 and (frame.status == "ok").all()
    for uri in frame.output_uri:
        assert uri.startswith("s3://vidflow-test/runs/r1/videos/") and fs.size(uri) > 1000
    summary = json.loads(fs.cat_file("vidflow-test/runs/r1/summary.json"))
    assert summary["counts"]["ok"] == 2
    assert fs.exists("vidflow-test/runs/r1/report.html")
    # a rerun finds everything done
    assert edit_videos.main(["--manifest", manifest_url, "--output", out, *creds]) == 0
    fs.invalidate_cache()
    frame2 = pd.read_parquet(fs.open(fs.glob("vidflow-test/runs/r1/manifest/*.parquet")[0]))
    assert sorted(frame2.run_id) == sorted(frame.run_id)
