"""Tune-A-Video cost: seconds per tuning / inversion / sampling step, and each phase's own peak memory.

    python -m bench.tune_a_video --unet sd15 --frames 24 --size 512 --device cuda          # GPU figures
    python -m bench.tune_a_video --unet tiny --frames 3 --size 32                          # CPU smoke figures

The UNet (and with ``--vae`` the VAE and text encoder) is built from Stable Diffusion 1.5's
config with random weights (``sd15``: 860M-parameter UNet; ``tiny``: the tests' stack),
inflated exactly as the stage does, so it has the real model's cost without any download.
Precision is the stage's (``stages/edit/diffusion/precision.py``): ``--dtype auto`` is bfloat16
on GPUs that support it, else float16 with a GradScaler; trainable weights float32. A tuning step
is forward + backward + AdamW on the trainable parameters with gradient checkpointing as
configured; an inversion step is one forward pass of the video; a sampling step one forward
pass of the video twice (the classifier-free guidance batch). Each phase's peak memory is its
own: on CUDA ``max_memory_allocated`` since the phase began; on the CPU the process RSS sampled
every 5 ms during the phase (it includes the model and what the allocator kept from earlier
phases, so it is an upper bound on the phase's need). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time

import torch

log = logging.getLogger("bench.tune_a_video")

SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32)
SD15_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
                layers_per_block=2, down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32, sample_size=512)
SD15_TEXT = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                 num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768)
TEXT_DIM = {"sd15": 768, "tiny": 32}
TOKENS = {"sd15": 77, "tiny": 16}
VAE_FACTOR = {"sd15": 8, "tiny": 4}  # pixels per latent pixel


def build_unet(kind: str):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    if kind == "sd15":
        return UNet2DConditionModel(**SD15_UNET)
    from tests.diffusion_fixtures import tiny_unet

    return tiny_unet()


def build_vae_and_text(kind: str):
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    if kind == "sd15":
        return AutoencoderKL(**SD15_VAE), CLIPTextModel(CLIPTextConfig(**SD15_TEXT))
    from tests.diffusion_fixtures import tiny_text_encoder, tiny_vae

    return tiny_vae(), tiny_text_encoder(64)


def rss_bytes() -> int:
    """Resident set size of this process now (Linux ``/proc/self/statm``), bytes."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PhasePeak:
    """Peak memory (bytes) of the code inside the ``with``: CUDA allocator peak, or sampled RSS on the CPU."""

    def __init__(self, device: torch.device, interval_s: float = 0.005):
        self.device, self.interval_s = device, interval_s
        self.bytes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.bytes = max(self.bytes, rss_bytes())
            self._stop.wait(self.interval_s)

    def __enter__(self) -> PhasePeak:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self.bytes = rss_bytes()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.bytes = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._thread.join()
            self.bytes = max(self.bytes, rss_bytes())

    @property
    def gib(self) -> float:
        return round(self.bytes / 2**30, 3)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, repeats: int, device: torch.device) -> tuple[float, float]:
    """(seconds per call over ``repeats`` timed calls after one warm-up, peak GiB of the phase)."""
    with PhasePeak(device) as peak:
        fn()  # warm-up (kernel selection, allocator)
        _sync(device)
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        _sync(device)
        seconds = (time.perf_counter() - start) / max(repeats, 1)
    return seconds, peak.gib


def measure(unet_kind: str = "sd15", frames: int = 24, size: int = 512, device_name: str = "auto",
            dtype_name: str = "auto", attention: str = "sdpa", attention_slice: int | None = None,
            checkpointing: bool = True, repeats: int = 3, vae: bool = False, vae_batch: int = 8,
            train_steps: int = 500, steps: int = 50, report=None) -> dict:
    """The figures of one configuration; ``report(partial_dict)`` is called after each phase."""
    from pipeline.devices import cuda_available, resolve_device, resolve_dtype
    from stages.edit.diffusion.inflate import inflate_unet, trainable_parameters, video_unet_forward
    from stages.edit.diffusion.precision import keep_float32, optimizer_step, precision_for

    device = resolve_device(device_name, float(cuda_available()), "bench.tune_a_video")  # the bench owns the machine
    dtype = resolve_dtype(dtype_name, device, prefer_bf16=True)
    precision = precision_for(device, dtype)
    out: dict = {"unet": unet_kind, "device": torch.cuda.get_device_name(device) if device.type == "cuda"
                 else f"cpu x{torch.get_num_threads()}", "precision": precision.describe(),
                 "attention": attention, "attention_slice": attention_slice, "gradient_checkpointing": checkpointing,
                 "frames": frames, "size": size, "repeats": repeats,
                 "peak_memory_kind": "torch.cuda.max_memory_allocated per phase" if device.type == "cuda"
                 else "process RSS sampled during each phase"}
    unet = build_unet(unet_kind)
    inflate_unet(unet, attention=attention, attention_slice=attention_slice)
    unet.requires_grad_(False)
    unet.to(device, dtype)
    params = list(keep_float32(trainable_parameters(unet).values()))
    if checkpointing:
        unet.enable_gradient_checkpointing()
    latent = size // VAE_FACTOR[unet_kind]
    shape = (1, 4, frames, latent, latent)
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(shape, generator=g).to(device, dtype)
    text = torch.randn(1, TOKENS[unet_kind], TEXT_DIM[unet_kind], generator=g).to(device, dtype)
    noise = torch.randn(shape, generator=g).to(device)
    optimizer = torch.optim.AdamW(params, lr=3e-5, weight_decay=1e-2)
    scaler = precision.scaler()
    out.update(latents=list(shape), trainable_params_m=round(sum(p.numel() for p in params) / 1e6, 2),
               unet_params_m=round(sum(p.numel() for p in unet.parameters()) / 1e6, 1))

    def train_step() -> None:
        unet.train()
        with precision.autocast():
            pred = video_unet_forward(unet, latents, torch.tensor([500], device=device), text)
        optimizer_step(torch.nn.functional.mse_loss(pred.float(), noise.float()), params, optimizer, scaler, 1.0)

    out["seconds_per_tuning_step"], out["peak_gib_tuning"] = timed(train_step, repeats, device)
    if report:
        report(out)
    unet.eval()

    @torch.no_grad()
    def invert_step() -> None:
        with precision.autocast():
            video_unet_forward(unet, latents, 500, text)

    @torch.no_grad()
    def sample_step() -> None:
        with precision.autocast():
            video_unet_forward(unet, torch.cat([latents, latents]), 500, torch.cat([text, text]))

    out["seconds_per_inversion_step"], out["peak_gib_inversion"] = timed(invert_step, repeats, device)
    out["seconds_per_sampling_step"], out["peak_gib_sampling"] = timed(sample_step, repeats, device)
    out["projected_seconds_per_video"] = round(train_steps * out["seconds_per_tuning_step"] + steps * (
        out["seconds_per_inversion_step"] + out["seconds_per_sampling_step"]), 1)
    out["projected_for"] = f"{train_steps} tuning + {steps} inversion + {steps} sampling steps"
    if report:
        report(out)
    if vae:
        out.update(vae_and_text(unet_kind, frames, size, device, dtype, vae_batch))
    for key, value in list(out.items()):
        if key.startswith("seconds_"):
            out[key] = round(value, 4)
    return out


@torch.no_grad()
def vae_and_text(kind: str, frames: int, size: int, device: torch.device, dtype: torch.dtype,
                 vae_batch: int) -> dict:
    """Seconds and peak GiB of one VAE encode and one decode of the clip (``vae_batch`` frames a call)
    and of the text encoder on a CFG pair of prompts."""
    vae, text = build_vae_and_text(kind)
    vae.to(device, dtype).eval()
    text.to(device, dtype).eval()
    pixels = torch.rand(frames, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device, dtype) * 2 - 1
    ids = torch.zeros(2, TOKENS[kind], dtype=torch.long, device=device)
    out = {}
    with PhasePeak(device) as peak:
        _sync(device)
        start = time.perf_counter()
        z = torch.cat([vae.encode(pixels[i:i + vae_batch]).latent_dist.mode() for i in range(0, frames, vae_batch)])
        _sync(device)
    out["seconds_vae_encode_clip"], out["peak_gib_vae_encode"] = time.perf_counter() - start, peak.gib
    with PhasePeak(device) as peak:
        start = time.perf_counter()
        for i in range(0, frames, vae_batch):
            vae.decode(z[i:i + vae_batch]).sample.float().cpu()
        _sync(device)
    out["seconds_vae_decode_clip"], out["peak_gib_vae_decode"] = time.perf_counter() - start, peak.gib
    with PhasePeak(device) as peak:
        start = time.perf_counter()
        text(ids)
        _sync(device)
    out["seconds_text_encoder"], out["peak_gib_text_encoder"] = time.perf_counter() - start, peak.gib
    out["vae_batch"] = vae_batch
    return out


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
    parser.add_argument("--vae", action="store_true", help="also time the VAE and the text encoder")
    parser.add_argument("--vae-batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats after one warm-up")
    parser.add_argument("--train-steps", type=int, default=500)
    parser.add_argument("--steps", type=int, default=50, help="DDIM inversion and sampling steps")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    result = measure(args.unet, args.frames, args.size, args.device, args.dtype, args.attention,
                     args.attention_slice, args.checkpointing, args.repeats, args.vae, args.vae_batch,
                     args.train_steps, args.steps)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
