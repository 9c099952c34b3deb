"""Dataset scale: the driver's time and memory to plan a huge manifest, and to stream many rows.

    python -m bench.scale [--plan-rows 1000000] [--rows 200 2000] [--loop-rows 200] [--num-cpus 2]

Three measurements in one run, each job in its own child process whose resident memory (the
driver only; Ray's workers are other processes) is sampled every 20 ms:

1. planning: a WebVid-style CSV of ``--plan-rows`` rows through
   ``python -m jobs.preprocess_trajectories --dry-run`` (every row read, mapped, given a job id,
   de-duplicated and checked on Ray); wall time and driver peak RSS (targets: <= 30 s, <= 500 MB);
2. streaming: ``--rows`` rows pointing at one tiny clip (8 frames, 64x48) through the trajectory
   job as configured by default (previews for the rows the run picks, sparse shards); rows/s and
   driver RSS growth per 1,000 rows (target <= 20 MB);
3. the same stages over ``--loop-rows`` of those rows in a plain Python loop (the same preview
   sampling), for the ratio loop rows/s / Ray rows/s at the largest ``--rows`` (target <= 1.3).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

log = logging.getLogger("bench.scale")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_webvid_csv(path: str, rows: int, url: str) -> str:
    """A WebVid-style CSV (videoid, contentUrl, name, duration, page_dir); every row distinct."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["videoid", "contentUrl", "name", "duration", "page_dir"])
        for i in range(rows):
            writer.writerow([str(1_000_000 + i), f"{url}?v={i}" if "://" in url else url,
                             f"stock footage clip number {i} of a sunny beach", "PT00H00M12S", f"{i // 50:06d}"])
    return path


def run_measured(args: list[str]) -> tuple[int, float, float, float]:
    """Run ``python -m ...args`` (cwd = repo); returns (exit code, wall s, start RSS MB, peak RSS MB)."""
    import psutil

    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("RAY_ADDRESS", None)
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", *args], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    handle = psutil.Process(proc.pid)
    samples: list[float] = []

    def sample() -> None:
        while proc.poll() is None:
            try:
                samples.append(handle.memory_info().rss / 2**20)
            except psutil.Error:
                break
            time.sleep(0.02)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    code = proc.wait()
    thread.join()
    wall = time.perf_counter() - start
    return code, wall, (samples[min(len(samples) - 1, 50)] if samples else 0.0), max(samples, default=0.0)


def tiny_clip(path: str) -> str:
    from pipeline import media

    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (48 + 8, 64 + 8, 3), dtype=np.uint8)
    frames = np.stack([base[i % 8:i % 8 + 48, i % 8:i % 8 + 64] for i in range(8)])  # a panning texture
    return media.encode(frames, path, 8.0)


SMALL = ["window.num_frames=8", "window.width=64", "window.height=48", "trajectories.grid_size=8"]


def plain_loop(manifest: str, rows: int) -> float:
    """rows/s of decode + trajectories (default config, same preview sampling) in one process."""
    from jobs.preprocess_trajectories import TrajectoryJobConfig, build_specs, webvid_row
    from jobs.trajectory_shards import ShardStore, shard_schema
    from pipeline.config import load_config
    from pipeline.manifest import make_job_id, read_input
    from pipeline.prepare import PREVIEW_KEY, wants_previews
    from pipeline.stage import RunContext, run_stages_inline

    config = load_config(TrajectoryJobConfig, None, SMALL)
    with tempfile.TemporaryDirectory() as out:
        ctx = RunContext(output_url=out, cache_url=os.path.join(out, "cache"), run_id="loop")
        raw = read_input(manifest, required=())[:rows]
        start = time.perf_counter()
        prepared = []
        for i, row in enumerate(raw):
            row = webvid_row(row)
            prepared.append({**row, "job_id": make_job_id(row), "status": "pending", "video_id": row["videoid"],
                             PREVIEW_KEY: wants_previews(i, config.run.preview_first, config.run.preview_every)})
        done = run_stages_inline([s.build(ctx) for s in build_specs(config)], prepared)
        store = ShardStore(out, "loop", shard_schema(), None, subdir="shards", shard=config.shards)
        for row in done:
            row["status"] = "ok" if row["status"] == "pending" else row["status"]
        store.write_part(done)
        seconds = time.perf_counter() - start
    bad = [r for r in done if r["status"] != "ok"]
    if bad:
        raise RuntimeError(f"plain loop failed rows: {bad[0]['error']}")
    return len(done) / seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plan-rows", type=int, default=1_000_000)
    parser.add_argument("--rows", type=int, nargs="+", default=[200, 2000])
    parser.add_argument("--loop-rows", type=int, default=200)
    parser.add_argument("--num-cpus", type=int, default=2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with tempfile.TemporaryDirectory() as tmp:
        results = []
        if args.plan_rows:
            big = write_webvid_csv(os.path.join(tmp, "webvid_big.csv"), args.plan_rows, "s3://webvid/clip.mp4")
            code, wall, _, peak = run_measured(["jobs.preprocess_trajectories", "--manifest", big, "--output",
                                                os.path.join(tmp, "plan"), "--dry-run", "--set",
                                                f"run.num_cpus={args.num_cpus}"])
            log.info("plan %d rows (dry run, incl. Ray start): %.1f s, driver peak RSS %.0f MB, exit %d "
                     "(targets <= 30 s, <= 500 MB)", args.plan_rows, wall, peak, code)
        clip = tiny_clip(os.path.join(tmp, "tiny.mp4"))
        for n in args.rows:
            manifest = write_webvid_csv(os.path.join(tmp, f"webvid_{n}.csv"), n, clip)
            sets = [x for s in [*SMALL, f"run.num_cpus={args.num_cpus}"] for x in ("--set", s)]
            out = os.path.join(tmp, f"out{n}")
            code, wall, rss0, peak = run_measured(["jobs.preprocess_trajectories", "--manifest", manifest,
                                                   "--output", out, *sets])
            with open(os.path.join(out, "summary.json")) as handle:
                summary = json.load(handle)
            run_s = summary["wall_seconds"]  # the run itself: Ray's start-up excluded
            results.append((n, n / run_s, peak - rss0))
            log.info("stream %5d rows: %.1f rows/s (%.1f s run, %.1f s with Ray start), %s, driver RSS %.0f -> "
                     "%.0f MB, exit %d", n, n / run_s, run_s, wall, summary["counts"], rss0, peak, code)
        if len(results) >= 2:
            (n0, _, g0), (n1, _, g1) = results[0], results[-1]
            log.info("driver growth: %.1f MB per 1,000 rows (from %d to %d rows; target <= 20)",
                     max(0.0, g1 - g0) / (n1 - n0) * 1000, n0, n1)
        if args.loop_rows and results:
            manifest = os.path.join(tmp, f"webvid_{args.rows[-1]}.csv")
            loop = plain_loop(manifest, args.loop_rows)
            log.info("plain loop: %.1f rows/s; loop / Ray at %d rows = %.2f (target <= 1.3)", loop, results[-1][0],
                     loop / results[-1][1])


if __name__ == "__main__":
    main()
