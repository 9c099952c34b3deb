"""Tiny Stable Video Diffusion + ReVideo stacks built from config with fixed seeds, saved in diffusers layout.

The SVD UNet has blocks (32, 64) and 4 frames; the control module is built from it (stems
(8, 8, 16): 4x, the tiny temporal VAE's factor); the CLIP image encoder is 2 layers of width 32.
Tests load the saved folders through the same ``from_pretrained`` code as production::

    svd, ckpt = save_tiny_svd(tmp_path / "svd"), save_tiny_revideo(tmp_path / "revideo")
    config = ReVideoConfig(model=svd, checkpoint=ckpt, **TINY_REVIDEO)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

# 4 frames of 32 x 32 pixels -> 8 x 8 latents; 2 Euler steps
TINY_REVIDEO = {"width": 32, "height": 32, "num_frames": 4, "num_inference_steps": 2, "size_multiple": 8,
                "min_box_size": 8, "vae_batch": 2, "kernel_size": 7, "kernel_sigma": 2.0}
TINY_UNET = dict(
    sample_size=8, in_channels=8, out_channels=4, block_out_channels=(32, 64),
    down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
    up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"), layers_per_block=2,
    cross_attention_dim=32, num_attention_heads=(2, 4), num_frames=4, addition_time_embed_dim=8,
    projection_class_embeddings_input_dim=24)
STEMS = (8, 8, 16)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models: one torch thread is fastest, and two stall badly on a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_svd_unet():
    from diffusers import UNetSpatioTemporalConditionModel

    torch.manual_seed(0)
    return UNetSpatioTemporalConditionModel(**TINY_UNET).eval()


def tiny_control(unet=None, randomise: bool = False):
    """The control module of ``unet`` (encoder copied, zero convs zero); ``randomise`` fills every
    zero-initialised weight with small seeded noise (a 'trained' module)."""
    from stages.edit.revideo.control import ReVideoControlModel

    torch.manual_seed(1)
    model = ReVideoControlModel.from_unet(unet if unet is not None else tiny_svd_unet(), STEMS).eval()
    if randomise:
        g = torch.Generator().manual_seed(2)
        with torch.no_grad():
            for p in model.parameters():
                if not p.any():
                    p.copy_(0.05 * torch.randn(p.shape, generator=g))
    return model


def tiny_temporal_vae():
    from diffusers import AutoencoderKLTemporalDecoder

    torch.manual_seed(0)
    return AutoencoderKLTemporalDecoder(block_out_channels=(32, 32, 32), layers_per_block=1,
                                        down_block_types=("DownEncoderBlock2D",) * 3, latent_channels=4,
                                        sample_size=32).eval()


def tiny_image_encoder():
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    config = CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                              image_size=32, patch_size=8, projection_dim=32)
    return CLIPVisionModelWithProjection(config).eval()


def tiny_feature_extractor():
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(crop_size={"height": 32, "width": 32}, size={"shortest_edge": 32})


def save_tiny_svd(folder: str | os.PathLike) -> str:
    """The SVD side (vae/, image_encoder/, feature_extractor/) in diffusers layout; returns the folder."""
    import diffusers

    folder = Path(folder)
    tiny_temporal_vae().save_pretrained(folder / "vae")
    tiny_image_encoder().save_pretrained(folder / "image_encoder")
    tiny_feature_extractor().save_pretrained(folder / "feature_extractor")
    index = {"_class_name": "StableVideoDiffusionPipeline", "_diffusers_version": diffusers.__version__,
             "vae": ["diffusers", "AutoencoderKLTemporalDecoder"],
             "image_encoder": ["transformers", "CLIPVisionModelWithProjection"],
             "feature_extractor": ["transformers", "CLIPImageProcessor"]}
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    return str(folder)


def save_tiny_revideo(folder: str | os.PathLike, randomise: bool = True) -> str:
    """A converted ReVideo folder (unet/, controlnet/) as the converter writes it; returns the folder."""
    folder = Path(folder)
    unet = tiny_svd_unet()
    unet.save_pretrained(folder / "unet")
    tiny_control(unet, randomise).save_pretrained(folder / "controlnet")
    return str(folder)
