"""Throughput of the trajectory preprocessing, per CPU core.

    python -m bench.trajectories [--repeats 3] [--videos DIR_OF_MP4S] [--synthetic 2]

One process, one thread for OpenCV, FFmpeg and torch (so clips/s is per core). For each clip,
alternately: decode only (fetch + hash + decode a 14-frame window at 512x320, as DecodeStage does),
and decode + track (LK, 32x32 grid) + sample (TrajectoryStage as a job configures it by default:
sparse shards, previews for the rows the run picks: the first 20, then one in 50). Prints both
rates and their ratio, measured in the same run; for reference,
video2dataset reports 14.4 videos/s/core for download + resize on WebVid.
"""

from __future__ import annotations

import argparse
import glob
import logging
import os
import sys
import tempfile
import time

import cv2
import numpy as np

from jobs.common import RunConfig
from pipeline.prepare import PREVIEW_KEY, wants_previews
from pipeline.stage import RunContext, run_stage
from stages.decode import DecodeConfig, DecodeStage
from stages.trajectories import TrajectoryConfig, TrajectoryStage


def _synthetic_videos(count: int, out_dir: str) -> list[str]:
    from jobs.sample_data import generate_sample
    from pipeline import media

    paths = []
    for i in range(count):
        clip = generate_sample(640, 360, 24, seed=i)
        paths.append(media.encode(clip.frames, os.path.join(out_dir, f"synthetic{i}.mp4"), clip.fps))
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.trajectories", description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--videos", default=None, help="a folder of .mp4 clips to add (default: synthetic only)")
    parser.add_argument("--synthetic", type=int, default=2, help="also synthetic 640x360 clips")
    parser.add_argument("--frames", type=int, default=14)
    parser.add_argument("--size", default="512x320")
    parser.add_argument("--grid", type=int, default=32)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    cv2.setNumThreads(1)
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    w, h = (int(v) for v in args.size.lower().split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        given = sorted(glob.glob(os.path.join(args.videos, "*.mp4"))) if args.videos else []
        videos = given + _synthetic_videos(args.synthetic, tmp)
        ctx = RunContext(output_url=os.path.join(tmp, "out"), cache_url=os.path.join(tmp, "cache"))
        decode = DecodeStage(DecodeConfig(max_frames=args.frames, width=w, height=h, resize="crop", threads=1), ctx)
        traj = TrajectoryStage(TrajectoryConfig(num_frames=args.frames, grid_size=args.grid, keep_frames=False), ctx)
        run = RunConfig()
        traj.setup()
        seconds = {"decode": 0.0, "full": 0.0, "track": 0.0}
        clips = 0
        for rep in range(args.repeats + 1):  # the first round warms caches and is not counted
            for i, path in enumerate(videos):
                seq = rep * len(videos) + i
                row = {"job_id": f"j{seq}", "video_id": f"v{i}", "video_uri": path, "status": "pending",
                       PREVIEW_KEY: wants_previews(seq, run.preview_first, run.preview_every)}
                t0 = time.perf_counter()
                decoded = run_stage(decode, dict(row))
                t1 = time.perf_counter()
                decoded2 = run_stage(decode, dict(row))
                t2 = time.perf_counter()
                done = run_stage(traj, decoded2)
                t3 = time.perf_counter()
                assert decoded["status"] == "pending" and done["status"] == "pending", done.get("error")
                assert done["sampled_tracks"].shape[0] == args.frames
                if rep:
                    seconds["decode"] += t1 - t0
                    seconds["full"] += t3 - t1
                    seconds["track"] += t3 - t2
                    clips += 1
    dec, full = clips / seconds["decode"], clips / seconds["full"]
    print(f"{len(videos)} clips x {args.repeats} repeats, window {args.frames}x{w}x{h}, grid {args.grid}x{args.grid}, "
          f"1 thread")
    print(f"decode only:                          {dec:7.2f} clips/s/core ({1000 / dec:6.1f} ms/clip)")
    print(f"decode + track + sample + rasterise:  {full:7.2f} clips/s/core ({1000 / full:6.1f} ms/clip; "
          f"track+sample+rasterise {1000 * seconds['track'] / clips:.1f} ms)")
    print(f"ratio (full / decode-only throughput): {full / dec:.3f}   [target >= 0.5]")
    print("reference: video2dataset, download + resize on WebVid: 14.4 videos/s/core")
    return 0 if np.isfinite(full) else 1


if __name__ == "__main__":
    sys.exit(main())
