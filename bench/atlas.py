"""Atlas fitting benchmark: reconstruction PSNR against wall time, hash grid vs positional encoding.

    python -m bench.atlas [--video PATH] [--size 480] [--frames 16] [--hash-iterations 3000]
                          [--pe-iterations 3000] [--evals 12] [--pe-evals N] [--eval-pixels P]
                          [--batch 10000] [--device auto]
                          [--hash-set key=value ...] [--pe-set key=value ...] [--json OUT]

Fits the same clip twice on the same device, once with each encoding, evaluating the mean
full-frame reconstruction PSNR ``--evals`` times along the way (evaluation time excluded from
the wall time; spaced geometrically, so the early curve is resolved). Prints both curves, each
encoding's final PSNR, the speed-up at equal PSNR (the time PE needs to reach its own final PSNR,
or the hash fit's if lower, divided by the time the hash fit needs to reach the same PSNR), and
that ratio at every PE evaluation the hash fit also reached (does the lead hold as the quality
asked for rises?). Times between evaluations are linear interpolations, so the speed-up is an
*estimate*; a guaranteed *lower bound* is printed beside it (PE's last evaluation still below
the PSNR over the hash fit's first evaluation at or above it). The clip is ``--video`` when
given, else the project's synthetic sample; masks come from motion segmentation (or ``--mask``).
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
from pipeline.devices import cuda_available, resolve_device
from stages.atlas.config import AtlasConfig
from stages.atlas.fit import FitData, fit_atlas
from stages.atlas.flow import dense_flow
from stages.atlas.masks import layer_motions, row_masks
from stages.atlas.render import evaluate, frame_psnr

log = logging.getLogger("bench.atlas")


def load_clip(path: str | None, size: int, frames: int) -> tuple[np.ndarray, str]:
    """uint8 [T, H, W, 3] frames of the clip (fit inside size x size) and its name."""
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


def time_bracket(curve: list[tuple[float, float]], target: float) -> tuple[float, float] | None:
    """(lo, hi) seconds between which a (seconds, psnr) curve first reached ``target``.

    ``hi`` is the first evaluation at or above ``target``; ``lo`` the evaluation before it (0 s
    when the first evaluation is already there). None when the curve never reaches it.
    """
    lo = 0.0
    for sec, psnr in curve:
        if psnr >= target:
            return lo, sec
        lo = sec
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


def sampled_psnr(model, frames: np.ndarray, pixels: np.ndarray | None, device, amp: bool, chunk: int) -> float:
    """Mean per-frame reconstruction PSNR (dB) of frames uint8 [T, H, W, 3].

    ``pixels``: flat pixel indices [P] evaluated in every frame (the same for every curve
    point and both encodings, so curves stay comparable), or None for every pixel.
    """
    rgb = evaluate(model, frames.shape[:3], device, chunk, amp, pixels)["rgb"]
    target = frames if pixels is None else frames.reshape(len(frames), -1, 3)[:, pixels]
    return float(np.mean(frame_psnr(rgb, target)))


def run(config: AtlasConfig, data: FitData, frames: np.ndarray, evals: int, device,
        pixels: np.ndarray | None) -> tuple[list[tuple[float, float]], float]:
    """The (fit seconds, PSNR) curve of one fit and its final full-frame mean PSNR."""
    curve: list[tuple[float, float]] = []
    at = eval_iterations(config.total_iterations, evals)
    final: list[float] = []

    def callback(it: int, seconds: float, model) -> None:
        if it not in at:
            return
        if device.type == "cuda":
            import torch

            torch.cuda.synchronize()
        psnr = sampled_psnr(model, frames, pixels, device, config.amp, config.eval_chunk)
        curve.append((seconds, psnr))
        log.info("%s it %d: %.1f s, %.2f dB", config.encoding, it, seconds, psnr)
        if it == config.total_iterations:
            final.append(sampled_psnr(model, frames, None, device, config.amp, config.eval_chunk))
            log.info("%s final, every pixel: %.2f dB", config.encoding, final[0])

    fit_atlas(data, config, device, callback=callback, callback_every=1)
    return curve, final[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.atlas", description=__doc__.splitlines()[0])
    parser.add_argument("--video")
    parser.add_argument("--mask", help="first-frame mask image (default: motion segmentation)")
    parser.add_argument("--size", type=int, default=480)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--hash-iterations", type=int, default=3000)
    parser.add_argument("--pe-iterations", type=int, default=3000, help="0: fit the hash encoding only")
    parser.add_argument("--batch", type=int, default=10000)
    parser.add_argument("--evals", type=int, default=12)
    parser.add_argument("--pe-evals", type=int, help="evaluations of the PE fit (default: --evals)")
    parser.add_argument("--eval-pixels", type=int, default=0,
                        help="pixels per frame for the curve points (a fixed random subset; 0: all); "
                             "the final PSNR always uses every pixel")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--hash-set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--pe-set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--json", help="write the curves and figures here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)

    frames, name = load_clip(args.video, args.size, args.frames)
    t, h, w = frames.shape[:3]
    base = {"batch_pixels": args.batch, "device": args.device}
    configs = {"hash": from_dict(AtlasConfig, apply_overrides(
        {**base, "encoding": "hash", "iterations": args.hash_iterations}, args.hash_set), "--hash-set")}
    if args.pe_iterations > 0:  # 0: the hash fit alone (a quality run, no comparison)
        configs["pe"] = from_dict(AtlasConfig, apply_overrides(
            {**base, "encoding": "pe", "iterations": args.pe_iterations}, args.pe_set), "--pe-set")
    device = resolve_device(args.device, num_gpus=float(cuda_available()), stage="bench.atlas")  # owns the machine
    start = time.perf_counter()
    fit_cfg = configs["hash"]
    tracker = fit_cfg.tracker if fit_cfg.tracker.enabled else None
    flow = dense_flow(frames, fit_cfg.flow, fit_cfg.flow_consistency_px, tracker)
    row = {"mask_uri": os.path.abspath(args.mask)} if args.mask else {}
    masks, source = row_masks(row, flow, (t, h, w), "auto", fit_cfg.motion_threshold_px, None,
                              fit_cfg.segmentation, frames, tracker)
    log.info("%s: %dx%dx%d, flow + masks (%s) %.1f s", name, w, h, t, source, time.perf_counter() - start)
    data = FitData.build(frames, masks, flow, device,
                         np.stack(layer_motions(flow, masks, fit_cfg.motion_model, fit_cfg.fg_motion_model)))
    evals = {"hash": args.evals, "pe": args.pe_evals or args.evals}
    pixels = None
    if args.eval_pixels and args.eval_pixels < h * w:
        pixels = np.sort(np.random.default_rng(0).choice(h * w, args.eval_pixels, replace=False))
    results = {k: run(cfg, data, frames, evals[k], device, pixels) for k, cfg in configs.items()}
    curves = {k: r[0] for k, r in results.items()}
    full = {k: r[1] for k, r in results.items()}

    print(f"clip: {name} {w}x{h}, {t} frames, device {device.type}, batch {args.batch}")
    for k, c in curves.items():
        print(f"{k:>4}: " + "  ".join(f"{s:.1f}s:{p:.2f}dB" for s, p in c))
    sampled = "" if pixels is None else f" ({len(pixels)} pixels per frame)"
    print("final PSNR: " + ", ".join(f"{k} {c[-1][1]:.2f} dB in {c[-1][0]:.0f} s" for k, c in curves.items())
          + sampled)
    print("final PSNR over every pixel of every frame: " + ", ".join(f"{k} {v:.2f} dB" for k, v in full.items()))
    summary = compare(curves) if "pe" in curves else {}
    if summary:
        print_comparison(summary)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"clip": name, "shape": [t, h, w], "device": device.type, "batch": args.batch,
                       "curves": curves, "final_all_pixels": full, **summary}, handle, indent=1)
    return 0


def compare(curves: dict[str, list[tuple[float, float]]]) -> dict:
    """Speed-up of hash over PE at equal PSNR: at the lower final PSNR, and at every PE evaluation.

    ``speedup`` is an estimate (both times interpolated between evaluations);
    ``speedup_lower_bound`` = PE's last time below the PSNR / the hash fit's first time at or above
    it, which no interpolation can overstate (None when PE was already there at its first one).
    """
    target = min(c[-1][1] for c in curves.values())
    t_hash, t_pe = time_to_reach(curves["hash"], target), time_to_reach(curves["pe"], target)
    hash_br, pe_br = time_bracket(curves["hash"], target), time_bracket(curves["pe"], target)
    bound = pe_br[0] / hash_br[1] if hash_br and pe_br and pe_br[0] > 0 else None
    return {"equal_psnr_db": target, "hash_seconds": t_hash, "pe_seconds": t_pe,
            "speedup": (t_pe / t_hash) if t_hash and t_pe else None, "speedup_lower_bound": bound,
            "hash_seconds_bracket": hash_br, "pe_seconds_bracket": pe_br,
            "hash_before_first_eval": curves["hash"][0][1] >= target,  # its time is interpolated from (0 s, 0 dB)
            "ladder": speedup_ladder(curves["hash"], curves["pe"])}


def print_comparison(summary: dict) -> None:
    target, ratio = summary["equal_psnr_db"], summary["speedup"]
    if ratio is None:
        print(f"equal PSNR {target:.2f} dB: not reached by both")
    else:
        early = " (hash passed it before its first evaluation: its time is interpolated from 0 dB at 0 s)" \
            if summary["hash_before_first_eval"] else ""
        bound = summary["speedup_lower_bound"]
        bound_text = f", at least {bound:.1f}x" if bound else ""
        print(f"equal PSNR {target:.2f} dB: hash {summary['hash_seconds']:.1f} s, pe {summary['pe_seconds']:.0f} s"
              f" -> speed-up estimate {ratio:.1f}x{bound_text}{early}")
    if summary["ladder"]:
        print("speed-up estimate at each PE evaluation (PSNR: pe s / hash s = ratio): " + "  ".join(
            f"{p:.1f}dB: {tp:.0f}/{th:.1f}={tp / th:.0f}x" for p, tp, th in summary["ladder"]))


if __name__ == "__main__":
    sys.exit(main())
