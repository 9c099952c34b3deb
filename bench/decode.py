"""Decoder throughput: the pipeline's PyAV decoder vs the ffmpeg CLI decoding to raw frames.

    python -m bench.decode [--video PATH] [--threads N] [--repeats R]

Both decode the same file to RGB24 at source resolution with the same thread count; the ffmpeg
CLI writes raw frames to a pipe that is read and discarded. Prints frames/s of each and the ratio
(pipeline / ffmpeg) measured in one run. Uses the clip given with ``--video``, else a synthetic
clip made by the project's sample generator (upscaled to 854x480).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import tempfile
import time

import numpy as np

from pipeline import media

log = logging.getLogger("bench.decode")
def _default_video(tmp: str) -> str:
    import cv2

    from jobs.sample_data import generate_sample

    clip = generate_sample(width=256, height=256, num_frames=48, seed=0)
    big = np.stack([cv2.resize(f, (854, 480)) for f in clip.frames])
    return media.encode(big, os.path.join(tmp, "synthetic.mp4"), 24.0)


def pipeline_fps(path: str, threads: int) -> tuple[float, int]:
    start = time.perf_counter()
    frames, _, _ = media.decode(path, media.DecodeOptions(threads=threads))
    return len(frames) / (time.perf_counter() - start), len(frames)


def ffmpeg_fps(path: str, threads: int, expected: int) -> float:
    exe = shutil.which("ffmpeg")
    if exe is None:
        raise SystemExit("ffmpeg CLI not found: apt-get install ffmpeg")
    cmd = [exe, "-v", "error", "-threads", str(threads), "-i", path, "-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE)
    total = 0
    while chunk := proc.stdout.read(1 << 20):
        total += len(chunk)
    proc.wait()
    seconds = time.perf_counter() - start
    info = media.probe(path)
    frames = total // (info.width * info.height * 3)
    if frames != expected:
        log.warning("ffmpeg produced %d frames, pipeline %d", frames, expected)
    return frames / seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--video")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with tempfile.TemporaryDirectory() as tmp:
        path = args.video or _default_video(tmp)
        info = media.probe(path)
        ours, theirs = [], []
        for _ in range(args.repeats):  # interleaved so load changes hit both alike
            fps, n = pipeline_fps(path, args.threads)
            ours.append(fps)
            theirs.append(ffmpeg_fps(path, args.threads, n))
        a, b = float(np.median(ours)), float(np.median(theirs))
        log.info("video %s: %dx%d, %d frames, threads=%d, median of %d runs",
                 os.path.basename(path), info.width, info.height, n, args.threads, args.repeats)
        log.info("pipeline (PyAV) decode: %.1f frames/s", a)
        log.info("ffmpeg CLI rawvideo:    %.1f frames/s", b)
        log.info("ratio pipeline/ffmpeg:  %.2f (target >= 0.9)", a / b)


if __name__ == "__main__":
    main()
