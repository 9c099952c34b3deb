"""A tiny ZeroScope-layout text-to-video stack (UNet3D + SD VAE + CLIP), built from config with fixed
seeds and saved in diffusers layout, for DreamMotion's tests::

    path = save_tiny_zeroscope(tmp_path / "t2v")
    config = DreamMotionConfig(model=str(path), **TINY_DREAMMOTION)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from tests.diffusion_fixtures import tiny_scheduler, tiny_text_encoder, tiny_vae, write_tiny_tokenizer

# 3 frames of 32x32 pixels -> 8x8 latents (VAE factor 4); keys of the tiny UNet's full-resolution up block
TINY_DREAMMOTION = {"width": 32, "height": 32, "num_frames": 3, "frame_stride": 1, "vae_batch": 2,
                    "iterations": 2, "key_layers": ["up_blocks.1.attentions"]}


def tiny_unet3d():
    from diffusers import UNet3DConditionModel

    torch.manual_seed(0)
    return UNet3DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"), up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
        cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8).eval()


def save_tiny_zeroscope(folder: str | os.PathLike, prediction_type: str = "epsilon") -> Path:
    """Write the tiny text-to-video stack under ``folder`` (model_index.json, unet/, vae/, ...); returns it."""
    import diffusers
    from transformers import CLIPTokenizer

    folder = Path(folder)
    tokenizer = CLIPTokenizer.from_pretrained(str(write_tiny_tokenizer(folder / "tokenizer")))
    tiny_text_encoder(len(tokenizer)).save_pretrained(folder / "text_encoder")
    tiny_unet3d().save_pretrained(folder / "unet")
    tiny_vae().save_pretrained(folder / "vae")
    scheduler = tiny_scheduler()
    scheduler.register_to_config(prediction_type=prediction_type)
    scheduler.save_pretrained(folder / "scheduler")
    index = {"_class_name": "TextToVideoSDPipeline", "_diffusers_version": diffusers.__version__,
             "unet": ["diffusers", "UNet3DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
             "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
             "scheduler": ["diffusers", "DDIMScheduler"]}
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    return folder
