"""Tune-A-Video cost: seconds per tuning step, per inversion step and per sampling step, and peak memory.

    python -m bench.tune_a_video --unet sd15 --frames 24 --size 512 --dtype float16 --device cuda
    python -m bench.tune_a_video --unet tiny --frames 3 --size 32              # CPU smoke figures

The UNet is built from its config with random weights (``sd15``: Stable Diffusion 1.5's UNet,
860M parameters; ``tiny``: the tests' UNet), inflated exactly as the stage does, so it has the
real model's cost without any download. A tuning step is forward + backward + AdamW on the
trainable parameters (attn1.to_q, attn2.to_q, attn_temp) under autocast, with gradient
checkpointing as configured; an inversion step is one forward pass of the video; a sampling
step is one forward pass of the video twice (classifier-free guidance batch). VAE and text
encoder are left out (one pass each per video, seconds). Prints one JSON object; the projected
time per video is ``train_steps`` tuning + ``steps`` inversion + ``steps`` sampling steps.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import sys
import time

import torch

log = logging.getLogger("bench.tune_a_video")

SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32)
TEXT_DIM = {"sd15": 768, "tiny": 32}
VAE_FACTOR = 8  # SD's VAE: pixels / 8 = latents (the tiny VAE's is 4; the bench only sizes latents)


def build_unet(kind: str):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    if kind == "sd15":
        return UNet2DConditionModel(**SD15_UNET)
    from tests.diffusion_fixtures import tiny_unet

    return tiny_unet()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _peak_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # process peak RSS (Linux: KiB)


def _timed(fn, repeats: int, device: torch.device) -> float:
    fn()  # warm-up (kernel selection, allocator)
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / repeats


def run(args: argparse.Namespace) -> dict:
    from stages.edit.diffusion.base import resolve_device, resolve_dtype
    from stages.edit.diffusion.inflate import inflate_unet, trainable_parameters, video_unet_forward

    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    unet = build_unet(args.unet)
    inflate_unet(unet, attention=args.attention, attention_slice=args.attention_slice)
    unet.requires_grad_(False)
    unet.to(device, dtype)
    params = trainable_parameters(unet)
    for p in params.values():
        p.data = p.data.float()
        p.requires_grad_(True)
    if args.checkpointing:
        unet.enable_gradient_checkpointing()
    latent = args.size // VAE_FACTOR if args.unet == "sd15" else args.size // 4
    shape = (1, 4, args.frames, latent, latent)
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(shape, generator=g).to(device, dtype)
    text = torch.randn(1, 77, TEXT_DIM[args.unet], generator=g).to(device, dtype)
    optimizer = torch.optim.AdamW(list(params.values()), lr=3e-5, weight_decay=1e-2)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def train_step() -> None:
        unet.train()
        with autocast:
            pred = video_unet_forward(unet, latents, torch.tensor([500], device=device), text)
        loss = torch.nn.functional.mse_loss(pred.float(), latents.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(params.values()), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    train_s = _timed(train_step, args.repeats, device)
    train_peak = _peak_bytes(device)
    unet.eval()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    @torch.no_grad()
    def invert_step() -> None:
        with autocast:
            video_unet_forward(unet, latents, 500, text)

    @torch.no_grad()
    def sample_step() -> None:
        with autocast:
            video_unet_forward(unet, torch.cat([latents, latents]), 500, torch.cat([text, text]))

    invert_s = _timed(invert_step, args.repeats, device)
    sample_s = _timed(sample_step, args.repeats, device)
    sample_peak = _peak_bytes(device)
    projected = args.train_steps * train_s + args.steps * (invert_s + sample_s)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{torch.get_num_threads()}"
    return {
        "unet": args.unet, "device": name, "dtype": str(dtype).replace("torch.", ""), "attention": args.attention,
        "gradient_checkpointing": args.checkpointing, "frames": args.frames, "size": args.size,
        "latents": list(shape), "trainable_params_m": round(sum(p.numel() for p in params.values()) / 1e6, 2),
        "unet_params_m": round(sum(p.numel() for p in unet.parameters()) / 1e6, 1),
        "seconds_per_tuning_step": round(train_s, 4), "seconds_per_inversion_step": round(invert_s, 4),
        "seconds_per_sampling_step": round(sample_s, 4),
        "sampling_over_tuning_step": round(sample_s / train_s, 3),
        "projected_seconds_per_video": round(projected, 1),
        "projected_for": f"{args.train_steps} tuning + {args.steps} inversion + {args.steps} sampling steps",
        "peak_memory_gib_tuning": round(train_peak / 2**30, 2),
        "peak_memory_gib_sampling": round(sample_peak / 2**30, 2),
        "peak_memory_kind": "torch.cuda.max_memory_allocated" if device.type == "cuda" else "process peak RSS",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tune_a_video", description=__doc__.splitlines()[0])
    parser.add_argument("--unet", choices=("sd15", "tiny"), default="sd15")
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--size", type=int, default=512, help="pixels per side")
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "float16", "bfloat16"))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--attention", default="sdpa", choices=("sdpa", "eager"))
    parser.add_argument("--attention-slice", type=int, default=None)
    parser.add_argument("--no-checkpointing", dest="checkpointing", action="store_false")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats after one warm-up")
    parser.add_argument("--train-steps", type=int, default=500)
    parser.add_argument("--steps", type=int, default=50, help="DDIM inversion and sampling steps")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    print(json.dumps(run(args), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
