"""LaMD measured on the synthetic sample: a small MCD-VAE and DMG trained here for a fixed number of steps.

    python -m bench.lamd [--size 32 --frames 8 --vae-steps 600 --dmg-steps 600 ...] [--json FILE]
    python -m bench.lamd --smoke          # tiny sizes, a few steps (the tests)

One run, one process, everything seeded: train the MCD-VAE (L1 + beta KL) and then the DMG on
clips from ``jobs.sample_data.generate_sample`` (seeds >= 1000), then on held-out seeds 0..N-1:

- reconstruction PSNR (dB, 8-bit frames) of the posterior mean, next to the PSNR of the static
  clip (frame 0 repeated: what a model that ignores motion would score);
- swap test: the motion latent of clip A decoded with the content of clip B. The object is
  found in each frame by the sample's colour test (foreground pixels are warm: red > blue) and
  its centre compared (mean px error) with A's ground-truth centre trajectory and with B's; the
  foreground's mean colour is compared with A's and B's frame-0 foreground colour;
- DMG: PSNR of generated frame 0 against the input frame; speed (px/frame) and path length (px)
  of the object in generated clips vs the ground truth of training clips; diversity across
  seeds (mean pairwise L1 of frames 1..L, 8-bit units, and mean pairwise centre distance, px);
- sampling time of one clip with K steps: the DMG (2D UNet over h x w) vs a 3D-UNet latent video
  diffusion baseline (``UNet3DConditionModel`` of the same widths over [d, L, h, w]), random
  weights, the same K, one after the other in this process.

Prints one JSON object (and writes it with ``--json``). Coordinates are pixels of the training
size (pixel centres at integers).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import sys
import time

import cv2
import numpy as np
import torch

from jobs.sample_data import generate_sample
from stages.edit.lamd.data import MIN_RENDER, synthetic_batches
from stages.edit.lamd.dmg import MotionGenerator
from stages.edit.lamd.mcd_vae import MCDVAE
from stages.edit.lamd.sampler import sample_motion
from stages.edit.lamd.stage import to_frames
from stages.edit.lamd.training import DmgTrainer, VaeLossWeights, VaeTrainer

log = logging.getLogger("bench.lamd")


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 arrays of one shape."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def object_centres(frames: np.ndarray) -> np.ndarray:
    """Centre (x, y) px of the warm foreground (red > blue) per frame, float [L, 2]; NaN where none."""
    out = np.full((len(frames), 2), np.nan)
    for t, frame in enumerate(frames.astype(np.int16)):
        ys, xs = np.nonzero(frame[..., 0] > frame[..., 2])
        if len(xs):
            out[t] = xs.mean(), ys.mean()
    return out


def foreground_colour(frame: np.ndarray) -> np.ndarray:
    """Mean RGB of the warm foreground of one frame uint8 [H, W, 3] (NaN when there is none)."""
    f = frame.astype(np.int16)
    mask = f[..., 0] > f[..., 2]
    return frame[mask].mean(0) if mask.any() else np.full(3, np.nan)


def path_stats(centres: np.ndarray) -> tuple[float, float]:
    """Mean speed (px/frame) and path length (px) of a centre trajectory [L, 2] (NaN steps skipped)."""
    steps = np.linalg.norm(np.diff(centres, axis=0), axis=1)
    steps = steps[np.isfinite(steps)]
    return (float(steps.mean()), float(steps.sum())) if len(steps) else (float("nan"), float("nan"))


class HeldOut:
    """A held-out clip at the training size with its ground-truth object centres in those pixels."""

    def __init__(self, seed: int, size: int, frames: int):
        render = max(size, MIN_RENDER)
        clip = generate_sample(render, render, frames, seed=seed)
        interp = cv2.INTER_AREA if render > size else cv2.INTER_CUBIC
        self.frames = np.stack([cv2.resize(f, (size, size), interpolation=interp) for f in clip.frames])
        scale = size / render
        self.centres = (clip.fg_center + 0.5) * scale - 0.5
        self.tensor = torch.from_numpy(self.frames).permute(3, 0, 1, 2)[None].float() / 127.5 - 1


def train(args, generator_seed: int = 0) -> tuple[MCDVAE, MotionGenerator, dict]:
    torch.manual_seed(generator_seed)
    vae = MCDVAE(sample_size=args.size, num_frames=args.frames, latent_channels=args.d, content_channels=args.dc,
                 block_out_channels=tuple(args.vae_widths), norm_num_groups=8)
    batches = synthetic_batches(1000, 0, 1, args.batch, args.size, args.frames)
    vae_trainer = VaeTrainer(vae, VaeLossWeights(beta=args.beta), args.lr, seed=1)
    start, losses = time.perf_counter(), []
    for step in range(args.vae_steps):
        losses.append(vae_trainer.step(next(batches))["l1"])
        if step % 100 == 0:
            log.info("vae step %d: l1 %.4f", step, losses[-1])
    vae_seconds = time.perf_counter() - start
    vae.eval()
    h, _ = vae.latent_size(args.size, args.size)
    dmg = MotionGenerator(latent_channels=args.d, content_channels=args.dc, sample_size=h,
                          block_out_channels=tuple(args.dmg_widths),
                          down_block_types=("CrossAttnDownBlock2D",) * (len(args.dmg_widths) - 1) + ("DownBlock2D",),
                          up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (len(args.dmg_widths) - 1),
                          layers_per_block=1, cross_attention_dim=args.cross, attention_head_dim=4,
                          norm_num_groups=8)
    dmg_trainer = DmgTrainer(dmg, vae, args.lr, seed=2)
    start, dmg_losses = time.perf_counter(), []
    for step in range(args.dmg_steps):
        dmg_losses.append(dmg_trainer.step(next(batches))["loss"])
        if step % 100 == 0:
            log.info("dmg step %d: loss %.4f", step, dmg_losses[-1])
    dmg_seconds = time.perf_counter() - start
    dmg.eval()
    tail = max(1, len(losses) // 10)
    return vae, dmg, {
        "vae_steps": args.vae_steps, "vae_seconds": round(vae_seconds, 1),
        "vae_l1_first_last": [round(float(np.mean(losses[:tail])), 4), round(float(np.mean(losses[-tail:])), 4)],
        "dmg_steps": args.dmg_steps, "dmg_seconds": round(dmg_seconds, 1),
        "dmg_loss_first_last": [round(float(np.mean(dmg_losses[:tail])), 4),
                                round(float(np.mean(dmg_losses[-tail:])), 4)],
    }


@torch.no_grad()
def reconstruction(vae: MCDVAE, clips: list[HeldOut]) -> dict:
    rec, static = [], []
    for c in clips:
        out = to_frames(vae(c.tensor, sample_posterior=False).sample[0])
        rec.append(psnr(out, c.frames))
        static.append(psnr(np.repeat(c.frames[:1], len(c.frames), 0), c.frames))
    return {"recon_psnr_db": round(float(np.mean(rec)), 2), "static_clip_psnr_db": round(float(np.mean(static)), 2)}


@torch.no_grad()
def swap_test(vae: MCDVAE, clips: list[HeldOut]) -> dict:
    to_a, to_b, own, colour_b, colour_a = [], [], [], [], []
    for a, b in itertools.permutations(clips[:6], 2):
        z_a = vae.normalise(vae.encode_motion(a.tensor).mode())
        out = to_frames(vae.decode(z_a, vae.encode_content(b.tensor[:, :, 0]))[0])
        centres = object_centres(out)
        to_a.append(np.nanmean(np.linalg.norm(centres - a.centres, axis=1)))
        to_b.append(np.nanmean(np.linalg.norm(centres - b.centres, axis=1)))
        colour = np.nanmean([foreground_colour(f) for f in out], 0)
        colour_b.append(np.linalg.norm(colour - foreground_colour(b.frames[0])))
        colour_a.append(np.linalg.norm(colour - foreground_colour(a.frames[0])))
    for c in clips:
        out = to_frames(vae(c.tensor, sample_posterior=False).sample[0])
        own.append(np.nanmean(np.linalg.norm(object_centres(out) - c.centres, axis=1)))
    return {"swap_centre_error_to_A_px": round(float(np.nanmean(to_a)), 2),
            "swap_centre_error_to_B_px": round(float(np.nanmean(to_b)), 2),
            "recon_centre_error_px": round(float(np.nanmean(own)), 2),
            "swap_fg_colour_distance_to_B": round(float(np.nanmean(colour_b)), 1),
            "swap_fg_colour_distance_to_A": round(float(np.nanmean(colour_a)), 1),
            "swap_pairs": len(to_a)}


@torch.no_grad()
def generation(vae: MCDVAE, dmg: MotionGenerator, clips: list[HeldOut], args) -> dict:
    first, speeds, lengths, pixel_div, path_div = [], [], [], [], []
    for c in clips[:args.gen_clips]:
        content = vae.encode_content(c.tensor[:, :, 0])
        tokens = dmg.conditioning(content.latent)
        samples = []
        for s in range(args.samples):
            z = sample_motion(dmg, tokens, args.steps, torch.Generator().manual_seed(s), 1.0)
            samples.append(to_frames(vae.decode(z, content)[0]))
        first += [psnr(x[0], c.frames[0]) for x in samples]
        tracks = [object_centres(x) for x in samples]
        for track in tracks:
            speed, length = path_stats(track)
            speeds.append(speed)
            lengths.append(length)
        for i, j in itertools.combinations(range(len(samples)), 2):
            pixel_div.append(np.abs(samples[i][1:].astype(np.float64) - samples[j][1:]).mean())
            path_div.append(np.nanmean(np.linalg.norm(tracks[i] - tracks[j], axis=1)))
    train_speed, train_length = zip(*[path_stats(HeldOut(1000 + i, args.size, args.frames).centres)
                                      for i in range(args.stat_clips)])
    return {"gen_frame0_psnr_db": round(float(np.mean(first)), 2),
            "gen_speed_px_per_frame": [round(float(np.nanmean(speeds)), 3), round(float(np.nanstd(speeds)), 3)],
            "train_speed_px_per_frame": [round(float(np.mean(train_speed)), 3), round(float(np.std(train_speed)), 3)],
            "gen_path_length_px": [round(float(np.nanmean(lengths)), 2), round(float(np.nanstd(lengths)), 2)],
            "train_path_length_px": [round(float(np.mean(train_length)), 2), round(float(np.std(train_length)), 2)],
            "diversity_pixel_l1": round(float(np.mean(pixel_div)), 2),
            "diversity_centre_px": round(float(np.nanmean(path_div)), 2),
            "gen_clips": min(len(clips), args.gen_clips), "samples_per_clip": args.samples,
            "sampling_steps": args.steps}


def video_baseline(dmg: MotionGenerator, frames: int):
    """A 3D-UNet latent video diffusion model of the DMG's widths over [d, L, h, w] (random weights)."""
    from diffusers import UNet3DConditionModel

    cfg = dmg.config
    levels = len(cfg.block_out_channels)
    torch.manual_seed(0)
    return UNet3DConditionModel(
        sample_size=cfg.sample_size, in_channels=cfg.latent_channels, out_channels=cfg.latent_channels,
        block_out_channels=tuple(cfg.block_out_channels),
        down_block_types=("CrossAttnDownBlock3D",) * (levels - 1) + ("DownBlock3D",),
        up_block_types=("UpBlock3D",) + ("CrossAttnUpBlock3D",) * (levels - 1),
        layers_per_block=cfg.layers_per_block, cross_attention_dim=cfg.cross_attention_dim,
        attention_head_dim=cfg.attention_head_dim, norm_num_groups=cfg.norm_num_groups).eval()


@torch.no_grad()
def sampling_time(dmg: MotionGenerator, frames: int, steps: int, device: torch.device) -> dict:
    """Seconds for one clip's K-step sampling: the DMG vs the 3D baseline (same scheduler, same K)."""
    dmg = dmg.to(device)
    tokens = dmg.conditioning(torch.randn(1, dmg.config.content_channels, dmg.config.sample_size,
                                          dmg.config.sample_size, device=device))
    baseline = video_baseline(dmg, frames).to(device)
    h = dmg.config.sample_size
    scheduler = dmg.sampling_scheduler()
    scheduler.set_timesteps(steps)

    def timed(fn) -> float:
        """The faster of two runs after a warm-up run."""
        fn()
        best = float("inf")
        for _ in range(2):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - start)
        return best

    def dmg_run() -> None:
        sample_motion(dmg, tokens, steps, torch.Generator().manual_seed(0), 1.0)

    def video_run() -> None:
        z = torch.randn(1, dmg.config.latent_channels, frames, h, h, device=device)
        for t in scheduler.timesteps:
            eps = baseline(z, t, encoder_hidden_states=tokens).sample
            z = scheduler.step(eps, t, z, eta=1.0).prev_sample

    dmg_s, video_s = timed(dmg_run), timed(video_run)
    return {"sampling_steps": steps, "dmg_seconds": round(dmg_s, 3), "video_3d_seconds": round(video_s, 3),
            "speed_up": round(video_s / dmg_s, 2),
            "dmg_params_m": round(sum(p.numel() for p in dmg.parameters()) / 1e6, 2),
            "video_3d_params_m": round(sum(p.numel() for p in baseline.parameters()) / 1e6, 2)}


def training_step_seconds(trainer, video: torch.Tensor, device: torch.device, repeats: int = 3) -> float:
    """Median seconds of one optimiser step of ``trainer`` on ``video`` (after one warm-up step)."""
    trainer.step(video)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        trainer.step(video)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def gpu_part(smoke: bool, options: dict, report) -> dict:
    """``bench/gpu_check.py``'s part: the production-size models (train_lamd.yaml: 64 x 64, L = 16, d = 4,
    d' = 64) in float32 on the GPU: seconds per training step of each phase at batch 16, peak memory, and
    the DMG's K = 200-step sampling time against the 3D-UNet baseline. ``smoke``: tiny sizes on the CPU."""
    from stages.edit.lamd.train_config import DmgArgs, McdVaeArgs

    device = torch.device("cuda" if torch.cuda.is_available() and not smoke else "cpu")
    size, frames, batch, steps = (16, 4, 2, 2) if smoke else (64, 16, 16, 200)
    vae_args, dmg_args = McdVaeArgs(), DmgArgs()
    vae_widths = (8, 16, 16) if smoke else vae_args.block_out_channels
    dmg_widths = (8, 16, 16) if smoke else dmg_args.block_out_channels
    torch.manual_seed(0)
    vae = MCDVAE(sample_size=size, num_frames=frames, latent_channels=vae_args.latent_channels,
                 content_channels=vae_args.content_channels, block_out_channels=vae_widths).to(device)
    video = torch.rand(batch, 3, frames, size, size, device=device) * 2 - 1
    out: dict = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "size": size,
                 "frames": frames, "batch": batch,
                 "vae_params_m": round(sum(p.numel() for p in vae.parameters()) / 1e6, 2)}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    out["vae_step_s"] = round(training_step_seconds(VaeTrainer(vae, VaeLossWeights(), 1e-4), video, device), 4)
    if device.type == "cuda":
        out["vae_peak_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    report(dict(out))
    h, _ = vae.latent_size(size, size)
    dmg = MotionGenerator(latent_channels=vae_args.latent_channels, content_channels=vae_args.content_channels,
                          sample_size=h, block_out_channels=dmg_widths, layers_per_block=dmg_args.layers_per_block,
                          cross_attention_dim=dmg_args.cross_attention_dim,
                          attention_head_dim=dmg_args.attention_head_dim,
                          norm_num_groups=8 if smoke else dmg_args.norm_num_groups).to(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    out["dmg_step_s"] = round(training_step_seconds(DmgTrainer(dmg, vae.eval(), 1e-4), video, device), 4)
    if device.type == "cuda":
        out["dmg_peak_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    report(dict(out))
    out["sampling"] = sampling_time(dmg.eval(), frames, steps, device)
    sampling = out["sampling"]
    out["headline"] = (f"vae {out['vae_step_s']:.3f} s/step, dmg {out['dmg_step_s']:.3f} s/step (batch {batch}); "
                       f"K={steps} sampling: dmg {sampling['dmg_seconds']:.2f} s vs 3D "
                       f"{sampling['video_3d_seconds']:.2f} s")
    report(dict(out))
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.lamd", description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--d", type=int, default=4, help="motion latent width d")
    p.add_argument("--dc", type=int, default=32, help="content latent width d'")
    p.add_argument("--vae-widths", type=int, nargs="+", default=[16, 32, 64])
    p.add_argument("--dmg-widths", type=int, nargs="+", default=[32, 64])
    p.add_argument("--cross", type=int, default=64, help="DMG cross-attention width")
    p.add_argument("--beta", type=float, default=1e-4)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--vae-steps", type=int, default=600)
    p.add_argument("--dmg-steps", type=int, default=600)
    p.add_argument("--held-out", type=int, default=12, help="held-out seeds 0..N-1")
    p.add_argument("--gen-clips", type=int, default=4)
    p.add_argument("--samples", type=int, default=3, help="DMG samples per held-out clip")
    p.add_argument("--steps", type=int, default=200, help="K sampling steps")
    p.add_argument("--stat-clips", type=int, default=32, help="training clips for the motion statistics")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--smoke", action="store_true", help="tiny sizes and a few steps")
    p.add_argument("--json", help="also write the figures here")
    args = p.parse_args(argv)
    if args.smoke:
        args.size, args.frames, args.vae_widths, args.dmg_widths, args.dc, args.cross = 16, 4, [8, 16, 16], [8, 16], \
            8, 16
        args.vae_steps = args.dmg_steps = 2
        args.batch, args.held_out, args.gen_clips, args.samples, args.steps, args.stat_clips = 2, 3, 1, 2, 2, 2
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    vae, dmg, figures = train(args)
    clips = [HeldOut(seed, args.size, args.frames) for seed in range(args.held_out)]
    figures |= reconstruction(vae, clips) | swap_test(vae, clips)
    figures |= {"generation": generation(vae, dmg, clips, args)}
    figures |= {"sampling_time_cpu": sampling_time(dmg, args.frames, args.steps, torch.device("cpu"))}
    figures |= {"settings": {k: v for k, v in vars(args).items() if k not in ("json",)}}
    text = json.dumps(figures, indent=1)
    print(text)
    if args.json:
        with open(args.json, "w") as handle:
            handle.write(text)
    return figures


if __name__ == "__main__":
    main(sys.argv[1:])
