"""Dataset scale on a real local Ray: the driver stays small while planning and streaming."""

from __future__ import annotations

import csv
import glob
import os
import threading
import time

import psutil
import pyarrow.parquet as pq
import pytest

from bench.scale import tiny_clip, write_webvid_csv
from jobs import common, edit_videos, preprocess_trajectories

pytestmark = pytest.mark.slow
MB = 2**20


class PeakRSS:
    """Peak resident memory of this process above its level at entry, sampled every 10 ms."""

    def __enter__(self):
        self.process = psutil.Process()
        self.start = self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    @property
    def growth_mb(self) -> float:
        return (self.peak - self.start) / MB


def test_planning_200k_rows_keeps_the_driver_small(ray_local, tmp_path):
    rows = 200_000
    edit_csv = tmp_path / "edit.csv"
    with open(edit_csv, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["video_uri", "prompt", "params"])
        for i in range(rows):
            writer.writerow([f"s3://bucket/videos/{i:07d}.mp4", f"a watercolour painting, take {i}", ""])
        writer.writerow(["s3://bucket/videos/0000000.mp4", "a watercolour painting, take 0", ""])  # a repeat
    webvid = write_webvid_csv(str(tmp_path / "webvid.csv"), rows, "s3://webvid/clip.mp4")
    counts = []
    original = common.runner.count_prepared

    def counting(plan):
        counts.append(original(plan))
        return counts[-1]

    common.runner.count_prepared = counting
    try:
        with PeakRSS() as edit_peak:
            assert edit_videos.main(["--manifest", str(edit_csv), "--output", str(tmp_path / "e"), "--dry-run"]) == 0
        with PeakRSS() as traj_peak:
            assert preprocess_trajectories.main(["--manifest", webvid, "--output", str(tmp_path / "t"),
                                                 "--dry-run"]) == 0
    finally:
        common.runner.count_prepared = original
    assert counts[0] == {"to_process": rows, "error": 0, "skipped": 1, "already_done": 0}
    assert counts[1]["to_process"] == rows
    # the design's bound for planning: the rows never reach the driver (a list of 200k dicts would be ~400 MB)
    assert edit_peak.growth_mb < 300 and traj_peak.growth_mb < 300, (edit_peak.growth_mb, traj_peak.growth_mb)
    assert not os.path.exists(tmp_path / "e" / "manifest") and not os.path.exists(tmp_path / "t" / "shards")


def test_streaming_1000_rows_every_row_once_and_flat_driver_memory(ray_local, tmp_path, monkeypatch):
    rows = 1000
    clip = tiny_clip(str(tmp_path / "tiny.mp4"))
    manifest = write_webvid_csv(str(tmp_path / "webvid.csv"), rows, clip)
    rss: dict[int, int] = {}
    original = common._progress

    def progress(stats, every):
        inner = original(stats, every)

        def on_record(rec):
            inner(rec)
            if stats.processed in (100, rows):
                rss[stats.processed] = psutil.Process().memory_info().rss
        return on_record

    monkeypatch.setattr(common, "_progress", progress)
    out = str(tmp_path / "out")
    sets = ["window.num_frames=8", "window.width=64", "window.height=48", "trajectories.grid_size=8"]
    start = time.monotonic()
    assert preprocess_trajectories.main(["--manifest", manifest, "--output", out,
                                         *[x for s in sets for x in ("--set", s)]]) == 0
    ids = []
    for path in glob.glob(os.path.join(out, "shards", "*.parquet")):
        ids.extend(pq.read_table(path, columns=["videoid", "status"]).column("videoid").to_pylist())
    assert len(ids) == rows and len(set(ids)) == rows  # every row exactly once
    growth = (rss[rows] - rss[100]) / MB
    assert growth < 40, f"driver grew {growth:.1f} MB from the 100th to the 1000th row"
    assert time.monotonic() - start < 600
