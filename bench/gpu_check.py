"""One command for the whole GPU picture: every GPU path of vidflow, each part time-boxed.

    python -m bench.gpu_check [--json bench/results/gpu_check.json] [--video CLIP.mp4] [--parts tune_a_video ...]
                              [--clips car-turn.mp4 bear.mp4 man-skiing.mp4]
    python -m bench.gpu_check --smoke          # every part at tiny sizes on the CPU (run by the tests)

Built for one 10-minute call on one GPU: each part runs in its own process with a wall-time
budget (the budgets sum to 9 minutes for the nine parts that need no input, 13 with ``--clips``;
when the chosen parts' budgets exceed ``--max-total`` seconds, 570 by default, all of them are
scaled down to fit it, so the run stays one 10-minute call; a part also gets ``options["budget_s"]``,
85 % of its budget, to plan its own measurements; ``--budget-scale`` stretches them for a run of a
few parts), so a slow or hanging part is stopped and the others still run; a stopped part keeps the
figures it reported before the limit, and its GPU memory is freed with its process. Results go
to a JSON file and one table on stdout. Parts (bench/gpu_parts.py):

* ``tune_a_video`` — SD 1.5 UNet/VAE/text encoder with random weights at 24 x 512 x 512: seconds
  per tuning / inversion / sampling step, each phase's peak GPU memory, VAE and text encoder.
* ``depth`` — DPT-Hybrid and DPT-Large (random weights) at 384 px in fp16: frames/s at batch 1,
  8, 16 and of the whole ``predict`` on 768 x 432 frames.
* ``atlas`` — hash-grid and PE fits of a 70 x 768 x 432 clip (``--video``, else the synthetic
  sample) for fixed wall times: iterations/s, PSNR at wall-time checkpoints, projected time to
  the production schedule, speed-up at equal PSNR.
* ``atlas_clips`` — the real clips given with ``--clips`` at 768 x 432, 70 frames, as
  bench/atlas_quality.py fits them on the CPU (default segmentation, 3,000 iterations of the
  ``budget`` preset, stopped at each clip's share of the budget): PSNR, iterations reached and
  iterations/s, how the default overlay follows the object. Runs only with ``--clips`` (or ``--smoke``);
  the whole measurement is its own call: ``--parts atlas_clips --clips A B C --budget-scale 3``
  (capped to ``--max-total``: about 2.7 minutes a clip, decoding, flow and segmentation included).
* ``edit_job`` — the edit job end to end over the sample with the atlas and edit actors on the
  GPU: rows ok, wall time, GPU utilisation sampled during the run.
* ``revideo`` — the SVD UNet + ReVideo control module (random weights) in fp16: seconds per
  denoising step and peak memory at the release's shapes (bench/revideo.py).
* ``dreammotion`` — the ZeroScope UNet3D (random weights, fp16 frozen, fp32 latents) at 16 x 576 x 320:
  seconds per optimisation iteration and peak memory with and without block checkpointing, each
  term's gradient norm at iteration 0 (bench/dreammotion.py; ``--calibrate`` there alone).
* ``stablevideo`` — SD 1.5 + ControlNet canny and depth + DPT-Hybrid (random weights) in fp16: wall
  time of one 70 x 768 x 432 video's edit (3 keyframes, background, render; atlas fit excluded)
  and peak memory (bench/stablevideo.py).
* ``train_revideo`` — ReVideo training at 14 x 512 x 320, batch 1, bf16 autocast, random weights:
  seconds per optimizer step and peak memory of stages 1, 3 and 2 (bench/train_revideo.py).
* ``lamd`` — LaMD's MCD-VAE and DMG at the training config's sizes (64 x 64, L = 16): seconds per
  training step of each phase at batch 16, peak memory, and K = 200-step sampling time of the DMG
  against a 3D-UNet latent video baseline of equal widths (bench/lamd.py).

An editing method added later registers its own part: a function in bench/gpu_parts.py (or its
own bench module) and one line in :data:`PARTS`.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

log = logging.getLogger("bench.gpu_check")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass(frozen=True)
class Part:
    name: str
    target: str  # "module:function", called as fn(smoke, options, report) -> dict
    budget_s: float  # wall-time limit of the part's process on the GPU
    smoke_budget_s: float = 60.0  # generous: the tests run on 2 shared cores


PARTS: dict[str, Part] = {p.name: p for p in (
    Part("tune_a_video", "bench.gpu_parts:tune_a_video", 70.0),
    Part("depth", "bench.gpu_parts:depth", 35.0),
    Part("atlas", "bench.gpu_parts:atlas", 90.0),
    Part("atlas_clips", "bench.gpu_parts:atlas_clips", 240.0),
    Part("edit_job", "bench.gpu_parts:edit_job", 55.0, smoke_budget_s=90.0),
    Part("revideo", "bench.revideo:gpu_part", 60.0),
    Part("dreammotion", "bench.dreammotion:gpu_part", 65.0),
    Part("stablevideo", "bench.stablevideo:gpu_part", 70.0),
    Part("train_revideo", "bench.train_revideo:gpu_part", 60.0),
    Part("lamd", "bench.lamd:gpu_part", 35.0),
)}


def write_json(path: str, data: dict) -> None:
    """Atomically replace ``path`` with ``data`` as JSON (a reader never sees half a file)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as handle:
        json.dump(data, handle, indent=1, default=str)
    os.replace(tmp, path)


def run_part_here(target: str, smoke: bool, options: dict, out_path: str) -> int:
    """The child side: run one part (``module:function``), writing its figures to ``out_path`` as it goes."""
    module, func = target.split(":")
    fn = getattr(importlib.import_module(module), func)
    figures: dict = {}

    def report(partial: dict) -> None:
        figures.update(partial)
        write_json(out_path, {"figures": figures, "done": False})

    try:
        figures.update(fn(smoke, options, report))
    except Exception as exc:  # noqa: BLE001 - recorded for the table; the parent goes on
        log.exception("part %s failed", target)
        write_json(out_path, {"figures": figures, "done": False, "error": f"{type(exc).__name__}: {exc}"})
        return 1
    write_json(out_path, {"figures": figures, "done": True})
    return 0


def run_part(part: Part, smoke: bool, options: dict, budget_s: float) -> dict:
    """The parent side: run ``part`` in its own process group, stopped after ``budget_s`` seconds."""
    fd, out_path = tempfile.mkstemp(suffix=".json", prefix=f"gpu-check-{part.name}-")
    os.close(fd)
    cmd = [sys.executable, "-m", "bench.gpu_check", "--run-part", part.target, "--part-out", out_path,
           "--part-budget", str(round(0.85 * budget_s, 1))]
    cmd += ["--smoke"] if smoke else []
    cmd += ["--video", options["video"]] if options.get("video") else []
    cmd += ["--clips", *options["clips"]] if options.get("clips") else []
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=budget_s)
        status = "ok" if proc.returncode == 0 else "error"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        status = "timeout"
    seconds = time.perf_counter() - start
    try:
        with open(out_path) as handle:
            result = json.load(handle)
    except (OSError, ValueError):
        result = {"figures": {}}
    finally:
        os.unlink(out_path)
    error = result.get("error") or (None if status == "ok" else (output or "").strip().splitlines()[-1:])
    return {"status": status, "seconds": round(seconds, 1), "budget_s": budget_s, "error": error,
            "figures": result.get("figures", {}), "log_tail": (output or "").strip().splitlines()[-20:]}


def device_summary() -> dict:
    import torch

    cuda = torch.cuda.is_available()
    return {"device": torch.cuda.get_device_name(0) if cuda else "cpu", "torch": torch.__version__,
            "cuda": torch.version.cuda, "bf16": bool(cuda and torch.cuda.is_bf16_supported()),
            "memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1) if cuda else None}


def table(results: dict) -> str:
    """One plain-text table: part, status, seconds of its budget, headline figures."""
    rows = [("part", "status", "s / budget", "figures")]
    for name, r in results["parts"].items():
        figures = r["figures"].get("headline") or (str(r["error"]) if r["error"] else "")
        status = r["status"] + (" (partial)" if r["status"] != "ok" and r["figures"] else "")
        rows.append((name, status, f"{r['seconds']:.0f} / {r['budget_s']:.0f}", figures))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:>{widths[2]}}  {row[3]}" for row in rows]
    head = results["machine"]
    title = f"vidflow gpu_check on {head['device']} (torch {head['torch']}, smoke={results['smoke']})"
    return "\n".join([title, *lines])


NEEDS_CLIPS = ("atlas_clips",)  # parts with nothing to measure unless --clips is given (smoke: a synthetic clip)
MAX_TOTAL_S = 570.0  # one 10-minute call: the parts' budgets, the process starts and the table


def chosen_parts(parts: list[str] | None, clips: list[str] | None, smoke: bool) -> list[str]:
    """The parts to run: those asked for, else every part (those needing ``--clips`` only with clips or smoke)."""
    return list(parts) if parts else [n for n in PARTS if n not in NEEDS_CLIPS or clips or smoke]


def part_budgets(names: list[str], smoke: bool, scale: float, max_total: float) -> dict[str, float]:
    """Each chosen part's wall-time budget (s): its own times ``scale``, all scaled down to ``max_total`` in sum.

    Smoke runs (CPU, tiny sizes) keep their generous budgets: they are limits, not plans.
    """
    budgets = {n: (PARTS[n].smoke_budget_s if smoke else PARTS[n].budget_s) * scale for n in names}
    total = sum(budgets.values())
    if smoke or total <= max_total:
        return budgets
    log.info("the parts' budgets sum to %.0f s; scaled by %.2f to fit --max-total %.0f s", total,
             max_total / total, max_total)
    return {n: b * max_total / total for n, b in budgets.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="every part at tiny sizes (CPU; the tests run this)")
    parser.add_argument("--parts", nargs="+", choices=sorted(PARTS),
                        help="default: every part (atlas_clips only with --clips or --smoke)")
    parser.add_argument("--video", help="the atlas part's clip (default: the synthetic sample)")
    parser.add_argument("--clips", nargs="+", help="the atlas_clips part's real clips (fitted at 768 x 432)")
    parser.add_argument("--max-total", type=float, default=MAX_TOTAL_S,
                        help="seconds: the chosen parts' budgets are scaled down to fit this sum")
    parser.add_argument("--json", default=os.path.join(ROOT, "bench", "results", "gpu_check.json"),
                        help="where to write the results (default: bench/results/, git-ignored)")
    parser.add_argument("--budget-scale", type=float, default=1.0, help="multiply every part's time budget")
    parser.add_argument("--run-part", help=argparse.SUPPRESS)
    parser.add_argument("--part-out", help=argparse.SUPPRESS)
    parser.add_argument("--part-budget", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    options = {"video": os.path.abspath(args.video) if args.video else None,
               "clips": [os.path.abspath(c) for c in args.clips or []]}
    if args.run_part:
        options["budget_s"] = args.part_budget if args.part_budget is not None else float("inf")
        return run_part_here(args.run_part, args.smoke, options, args.part_out)
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    results = {"machine": device_summary(), "smoke": args.smoke, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                           time.gmtime()),
               "parts": {}}
    names = chosen_parts(args.parts, args.clips, args.smoke)
    budgets = part_budgets(names, args.smoke, args.budget_scale, args.max_total)
    results["budgets_s"] = {n: round(b, 1) for n, b in budgets.items()}
    for name in names:
        part, budget = PARTS[name], budgets[name]
        log.info("part %s (budget %.0f s)", name, budget)
        results["parts"][name] = run_part(part, args.smoke, options, budget)
        write_json(args.json, results)
    print(table(results))
    return 0 if all(r["status"] == "ok" for r in results["parts"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
