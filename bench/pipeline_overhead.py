"""Ray Data overhead: the demo's stages over N videos through Ray Data vs a plain Python loop.

    python -m bench.pipeline_overhead [--videos 20] [--method reencode] [--num-cpus 2]

Both paths run the same stage objects (validate, decode, the method, encode) over the same
rows and write the same manifest and report; the Ray path is ``jobs.edit_videos.main`` itself.
Prints both wall times and their ratio (Ray / loop), with Ray's start-up reported separately.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time

from jobs import edit_videos
from jobs.make_sample import make_sample
from pipeline import report
from pipeline.config import load_config
from pipeline.manifest import ManifestStore, assign_job_ids, output_schema, read_input, to_output_record
from pipeline.run_stats import RunStats, small_record
from pipeline.stage import RunContext, run_stages_inline
from stages.validate import ValidateConfig, ValidateStage

log = logging.getLogger("bench.pipeline_overhead")


def plain_loop(manifest_url: str, out: str, overrides: list[str]) -> float:
    """The edit job's stages in one process, no Ray; returns wall seconds."""
    start = time.perf_counter()
    config = load_config(edit_videos.EditJobConfig, None, overrides)
    rows = assign_job_ids(read_input(manifest_url))
    ctx = RunContext(output_url=out, cache_url=os.path.join(out, "cache"), run_id="loop")
    methods = {r.get("method") or config.run.method for r in rows}
    specs = edit_videos.build_specs(config, methods, {})
    stages = [ValidateStage(ValidateConfig(default_method=config.run.method, decode=config.decode), ctx)]
    stages += [spec.build(ctx) for spec in specs]
    done = run_stages_inline(stages, rows)
    for row in done:
        row.setdefault("status", "ok")
        if row["status"] == "pending":
            row["status"] = "ok"
    passthrough = sorted({k for r in rows for k in r} - {"job_id", "status", "error"})
    store = ManifestStore(out, "loop", output_schema(passthrough), lambda r: to_output_record(r, passthrough))
    store.write_part(done)
    seconds = time.perf_counter() - start
    stats = RunStats()
    for row in done:
        stats.add(small_record(row))
    report.write_report(stats.summary(seconds), stats.examples, stats.sample, out)
    bad = [r for r in done if r["status"] != "ok"]
    if bad:
        raise RuntimeError(f"plain loop failed rows: {bad[0]['error']}")
    return seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=20)
    parser.add_argument("--method", default="reencode")
    parser.add_argument("--num-cpus", type=int, default=2)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    overrides = [f"run.method={args.method}", *args.overrides]
    with tempfile.TemporaryDirectory() as tmp:
        manifest_url = make_sample(os.path.join(tmp, "sample"), count=args.videos, seed=0, method=args.method)
        loop_s = plain_loop(manifest_url, os.path.join(tmp, "loop"), overrides)

        from pipeline.runner import init_ray

        t0 = time.perf_counter()
        init_ray(args.num_cpus)
        startup_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        sets = [x for o in overrides for x in ("--set", o)]
        code = edit_videos.main(["--manifest", manifest_url, "--output", os.path.join(tmp, "ray"), *sets])
        ray_s = time.perf_counter() - t1
        if code != 0:
            raise SystemExit(f"ray run exited {code}")
    log.info("%d videos, method %s, %d CPUs", args.videos, args.method, args.num_cpus)
    log.info("plain Python loop:        %.1f s", loop_s)
    log.info("Ray Data (cluster up):    %.1f s   ratio %.2f (target <= 1.3)", ray_s, ray_s / loop_s)
    log.info("Ray start-up:             %.1f s   ratio incl. start-up %.2f", startup_s,
             (ray_s + startup_s) / loop_s)


if __name__ == "__main__":
    main()
