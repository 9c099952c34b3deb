"""End to end: the edit job with stages.depth on local Ray over the synthetic sample, then a cache hit."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
from test_depth import save_tiny_dpt

from jobs import edit_videos
from stages.depth import load_depth

pytestmark = pytest.mark.slow

# small pools so decode + depth + reencode + encode fit the 2 CPUs of ray_local
FAST = ["--set", "decode.max_frames=8", "--set", "encode.preset=ultrafast",
        "--set", "decode.resources.num_cpus=0.5", "--set", "encode.resources.num_cpus=0.5"]


def _depth_args(model: str, cache: str) -> list[str]:
    return [*FAST, "--set", "stages.depth.enabled=true", "--set", f"stages.depth.model={model}",
            "--set", "stages.depth.resources.num_cpus=0.5", "--set", "stages.depth.batch_size=4",
            "--set", f"run.cache_url={cache}", "--set", "run.method=reencode"]


def _rows(out: str) -> pd.DataFrame:
    return pd.read_parquet(os.path.join(out, "manifest"))


def test_edit_job_with_depth_writes_artifacts_previews_and_reuses_the_cache(ray_local, sample_dir, tmp_path):
    model = save_tiny_dpt(tmp_path / "dpt")
    cache = str(tmp_path / "cache")
    manifest = os.path.join(sample_dir, "manifest.csv")
    first = str(tmp_path / "run1")
    assert edit_videos.main(["--manifest", manifest, "--output", first, *_depth_args(model, cache)]) == 0

    rows = _rows(first)
    assert len(rows) == 3 and (rows.status == "ok").all(), rows[["video_id", "error"]].to_string()
    stamps = {}
    report = open(os.path.join(first, "report.html"), encoding="utf-8").read()
    for _, row in rows.iterrows():
        outputs = json.loads(row.outputs)
        depth = load_depth(outputs["depth"])
        assert depth.shape == (row.num_frames, row.height, row.width) and depth.dtype == np.float16
        assert 0.0 <= float(depth.min()) and float(depth.max()) <= 1.0
        stats = json.loads(open(outputs["depth_stats"]).read())
        assert stats["shape"] == list(depth.shape) and stats["model"] == model
        assert outputs["depth"].startswith(cache + "/depth/")
        assert os.path.getsize(outputs["depth_preview"]) > 100
        assert os.path.relpath(outputs["depth_preview"], first) in report  # linked from report.html
        assert "depth" in json.loads(row.stage_seconds)
        stamps[outputs["depth"]] = (os.stat(outputs["depth"]).st_ino, os.stat(outputs["depth"]).st_mtime_ns)

    # another run (new output, same cache): every row ok, every depth artifact reused, not rewritten
    second = str(tmp_path / "run2")
    assert edit_videos.main(["--manifest", manifest, "--output", second, *_depth_args(model, cache)]) == 0
    rows2 = _rows(second)
    assert (rows2.status == "ok").all()
    urls = {json.loads(o)["depth"] for o in rows2.outputs}
    assert urls == set(stamps)
    assert {u: (os.stat(u).st_ino, os.stat(u).st_mtime_ns) for u in urls} == stamps
    for outputs in rows2.outputs:
        preview = json.loads(outputs)["depth_preview"]
        assert preview.startswith(second) and os.path.exists(preview)
