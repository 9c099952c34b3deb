"""Atlas fitting benchmark: reconstruction PSNR against wall time, hash grid vs positional encoding.

    python -m bench.atlas [--video PATH] [--size 480] [--frames 16] [--hash-iterations 3000]
                          [--pe-iterations 3000] [--evals 12] [--pe-evals N] [--batch 10000] [--device auto]
                          [--hash-set key=value ...] [--pe-set key=value ...] [--json OUT]

Fits the same clip twice on the same device, once with each encoding, evaluating the mean
full-frame reconstruction PSNR ``--evals`` times along the way (evaluation time excluded from
the wall time; spaced geometrically, so the early curve is resolved). Prints both curves, each
encoding's final PSNR, the speed-up at equal PSNR (the time PE needs to reach its own final PSNR,
or the hash fit's if lower, divided by the time the hash fit needs to reach the same PSNR), and
that ratio at every PE evaluation the hash fit also reached (does the lead hold as the quality
asked for rises?). The clip is ``../shared/data/videos/car-turn.mp4`` when present, else the
synthetic sample; masks come from motion segmentation (or ``--mask``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

import numpy as np

from pipeline import media
from pipeline.config import apply_overrides, from_dict
from stages.atlas.config import AtlasConfig
from stages.atlas.fit import FitData, fit_atlas, pick_device
from stages.atlas.flow import dense_flow
from stages.atlas.masks import layer_motions, row_masks
from stages.atlas.render import evaluate, frame_psnr

log = logging.getLogger("bench.atlas")
SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "videos", "car-turn.mp4")


def load_clip(path: str | None, size: int, frames: int) -> tuple[np.ndarray, str]:
    """uint8 [T, H, W, 3] frames of the clip (fit inside size x size) and its name."""
    path = path or (SHARED if os.path.exists(SHARED) else None)
    if path is None:
        from jobs.sample_data import generate_sample

        clip = generate_sample(size, size, frames, 12.0, 0)
        return clip.frames, f"synthetic {size}x{size}"
    out, _, _ = media.decode(path, media.DecodeOptions(max_frames=frames, width=size, height=size, resize="fit"))
    return out, os.path.basename(path)


def time_to_reach(curve: list[tuple[float, float]], target: float) -> float | None:
    """Seconds at which a (seconds, psnr) curve first reaches ``target`` (linear interpolation)."""
    prev = (0.0, 0.0)
    for sec, psnr in curve:
        if psnr >= target:
            s0, p0 = prev
            return sec if psnr == p0 else s0 + (sec - s0) * (target - p0) / (psnr - p0)
        prev = (sec, psnr)
    return None


def speedup_ladder(hash_curve: list[tuple[float, float]], pe_curve: list[tuple[float, float]]
                   ) -> list[tuple[float, float, float]]:
    """(psnr, pe seconds, hash seconds) at each PE evaluation the hash fit also reached.

    Shows whether the speed-up holds, grows or shrinks as the quality asked for rises.
    """
    out = []
    for seconds, psnr in pe_curve:
        reached = time_to_reach(hash_curve, psnr)
        if reached:
            out.append((psnr, seconds, reached))
    return out


def eval_iterations(total: int, evals: int, first: int = 10) -> set[int]:
    """``evals`` iterations from ``first`` to ``total``, spaced geometrically (and ``total`` itself).

    Early evaluations matter most for the time to reach a PSNR, so they are dense at the start.
    """
    if total <= first or evals <= 1:
        return {total}
    points = np.geomspace(first, total, evals)
    return {int(round(p)) for p in points} | {total}


def run(config: AtlasConfig, data: FitData, frames: np.ndarray, evals: int, device) -> list[tuple[float, float]]:
    curve: list[tuple[float, float]] = []
    shape = frames.shape[:3]
    at = eval_iterations(config.total_iterations, evals)

    def callback(it: int, seconds: float, model) -> None:
        if it not in at:
            return
        if device.type == "cuda":
            import torch

            torch.cuda.synchronize()
        ev = evaluate(model, shape, device, config.eval_chunk, config.amp)
        psnr = float(np.mean(frame_psnr(ev["rgb"], frames)))
        curve.append((seconds, psnr))
        log.info("%s it %d: %.1f s, %.2f dB", config.encoding, it, seconds, psnr)

    fit_atlas(data, config, device, callback=callback, callback_every=1)
    return curve


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.atlas", description=__doc__.splitlines()[0])
    parser.add_argument("--video")
    parser.add_argument("--mask", help="first-frame mask image (default: motion segmentation)")
    parser.add_argument("--size", type=int, default=480)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--hash-iterations", type=int, default=3000)
    parser.add_argument("--pe-iterations", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=10000)
    parser.add_argument("--evals", type=int, default=12)
    parser.add_argument("--pe-evals", type=int, help="evaluations of the PE fit (default: --evals)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--hash-set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--pe-set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--json", help="write the curves and figures here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)

    frames, name = load_clip(args.video, args.size, args.frames)
    t, h, w = frames.shape[:3]
    base = {"batch_pixels": args.batch, "device": args.device}
    configs = {
        "hash": from_dict(AtlasConfig, apply_overrides(
            {**base, "encoding": "hash", "iterations": args.hash_iterations}, args.hash_set), "--hash-set"),
        "pe": from_dict(AtlasConfig, apply_overrides(
            {**base, "encoding": "pe", "iterations": args.pe_iterations}, args.pe_set), "--pe-set"),
    }
    device = pick_device(args.device)
    start = time.perf_counter()
    flow = dense_flow(frames)
    row = {"mask_uri": os.path.abspath(args.mask)} if args.mask else {}
    masks, source = row_masks(row, flow, (t, h, w), "auto", configs["hash"].motion_threshold_px)
    log.info("%s: %dx%dx%d, flow + masks (%s) %.1f s", name, w, h, t, source, time.perf_counter() - start)
    data = FitData.build(frames, masks, flow, device, np.stack(layer_motions(flow, masks)))
    evals = {"hash": args.evals, "pe": args.pe_evals or args.evals}
    curves = {k: run(cfg, data, frames, evals[k], device) for k, cfg in configs.items()}

    final = {k: c[-1][1] for k, c in curves.items()}
    target = min(final.values())
    t_hash, t_pe = time_to_reach(curves["hash"], target), time_to_reach(curves["pe"], target)
    ratio = (t_pe / t_hash) if t_hash and t_pe else None
    print(f"clip: {name} {w}x{h}, {t} frames, device {device.type}, batch {args.batch}")
    for k, c in curves.items():
        print(f"{k:>4}: " + "  ".join(f"{s:.0f}s:{p:.2f}dB" for s, p in c))
    print(f"final PSNR: hash {final['hash']:.2f} dB in {curves['hash'][-1][0]:.0f} s, "
          f"pe {final['pe']:.2f} dB in {curves['pe'][-1][0]:.0f} s")
    early = curves["hash"][0][1] >= target  # reached before the first evaluation: a bound only
    bound = " (hash passed it before its first evaluation, interpolated from 0 dB at 0 s: a lower bound)" \
        if early else ""
    print(f"equal PSNR {target:.2f} dB: hash {t_hash:.0f} s, pe {t_pe:.0f} s -> speed-up "
          f"{ratio:.1f}x{bound}" if ratio else f"equal PSNR {target:.2f} dB: not reached by both")
    ladder = speedup_ladder(curves["hash"], curves["pe"])
    if ladder:
        print("speed-up at each PE evaluation (PSNR: pe s / hash s = ratio): " + "  ".join(
            f"{p:.1f}dB: {tp:.0f}/{th:.1f}={tp / th:.0f}x" for p, tp, th in ladder))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"clip": name, "shape": [t, h, w], "device": device.type, "curves": curves, "final": final,
                       "equal_psnr_db": target, "speedup": ratio,
                       "ladder": ladder}, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
