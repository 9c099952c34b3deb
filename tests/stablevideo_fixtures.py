"""Tiny StableVideo models built from config with fixed seeds, saved where ``from_pretrained`` loads them.

The SD stack is :func:`tests.diffusion_fixtures.save_tiny_sd` (VAE factor 4); the ControlNets are
built from its UNet with a 4x hint embedding (``conditioning_embedding_out_channels`` of 3
entries: 2 stride-2 convs, the VAE's factor) and, unlike a fresh ControlNet, small random
zero-convolutions so the hint changes the result; the DPT is the depth tests' tiny ViT DPT::

    models = save_tiny_stablevideo(tmp_path)       # {"model", "controlnet_canny", "controlnet_depth", "depth_model"}
    config = StableVideoConfig(**models, **TINY_STABLEVIDEO)
"""

from __future__ import annotations

from pathlib import Path

import torch

from tests.diffusion_fixtures import save_tiny_sd, tiny_unet
from tests.test_depth import save_tiny_dpt

ZERO_CONVS = ("controlnet_down_blocks", "controlnet_mid_block", "controlnet_cond_embedding.conv_out")
HINT_CHANNELS = (8, 16, 16)  # 2 downsamplings: 4x, the tiny VAE's factor
# 2 DDIM steps on a 32-pixel canvas (8 x 8 latents); crops small enough for 64 x 64 frames
TINY_STABLEVIDEO = {"num_inference_steps": 2, "image_resolution": 32, "size_multiple": 32, "crop_border": 4,
                    "crop_min_size": 16, "net_iterations": 20, "vae_batch": 1}


def tiny_controlnet(seed: int = 1, zero_init: bool = False):
    """A ControlNet from the tiny UNet; with ``zero_init`` exactly as ``from_unet`` makes it (its
    residuals are 0), else its zero-convolutions get small random weights (a control that acts)."""
    from diffusers import ControlNetModel

    net = ControlNetModel.from_unet(tiny_unet(), conditioning_embedding_out_channels=HINT_CHANNELS)
    if not zero_init:
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in net.named_parameters():
                if name.startswith(ZERO_CONVS):
                    p.copy_(0.05 * torch.randn(p.shape, generator=g))
    return net.eval()


def save_tiny_stablevideo(folder: str | Path) -> dict[str, str]:
    """Write the tiny SD stack, two ControlNets and a DPT under ``folder``; returns the config fields."""
    folder = Path(folder)
    sd = save_tiny_sd(folder / "sd")
    tiny_controlnet(1).save_pretrained(folder / "controlnet-canny")
    tiny_controlnet(2).save_pretrained(folder / "controlnet-depth")
    depth = save_tiny_dpt(folder / "dpt")
    return {"model": str(sd), "controlnet_canny": str(folder / "controlnet-canny"),
            "controlnet_depth": str(folder / "controlnet-depth"), "depth_model": depth}
