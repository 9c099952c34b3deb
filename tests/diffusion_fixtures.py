"""Tiny Stable-Diffusion-1.x stacks built from config with fixed seeds, saved in diffusers layout.

Nothing is downloaded: the CLIP tokenizer is written from a small vocab/merges, the text
encoder is a 2-layer CLIPTextModel, the UNet and VAE are a few channels wide. Methods' tests
load the saved folder through the same ``from_pretrained`` code as production::

    path = save_tiny_sd(tmp_path / "sd")            # model_index.json, unet/, vae/, ...
    config = TuneAVideoConfig(model=str(path), **TINY_CLIP)
"""

from __future__ import annotations

import json
import os
import string
from pathlib import Path

import torch

# a clip the tiny stack edits in a few seconds on 2 CPU cores: 32x32 pixels -> 8x8 latents (VAE factor 4)
TINY_CLIP = {"width": 32, "height": 32, "num_frames": 3, "frame_stride": 1, "num_inference_steps": 2,
             "vae_batch": 2}

_SPECIAL = ("<|startoftext|>", "<|endoftext|>")


def write_tiny_tokenizer(folder: str | os.PathLike) -> Path:
    """A CLIPTokenizer folder (vocab.json, merges.txt, configs) over lowercase letters and digits."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    symbols = list(string.ascii_lowercase + string.digits + ".,!?'-")
    tokens = [*_SPECIAL, *symbols, *(s + "</w>" for s in symbols)]
    merges = ["th", "he", "an", "in", "er", "on"]
    tokens += [m for m in merges] + [m + "</w>" for m in merges]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{m[0]} {m[1]}\n" for m in merges))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer", "model_max_length": 16, "bos_token": _SPECIAL[0],
        "eos_token": _SPECIAL[1], "unk_token": _SPECIAL[1], "pad_token": _SPECIAL[1], "do_lower_case": True}))
    (folder / "special_tokens_map.json").write_text(json.dumps({
        "bos_token": _SPECIAL[0], "eos_token": _SPECIAL[1], "unk_token": _SPECIAL[1], "pad_token": _SPECIAL[1]}))
    return folder


def tiny_text_encoder(vocab_size: int):
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    config = CLIPTextConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                            num_attention_heads=4, max_position_embeddings=16, projection_dim=32,
                            bos_token_id=0, eos_token_id=1, pad_token_id=1)
    return CLIPTextModel(config).eval()


def tiny_unet():
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8)


def tiny_vae():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16, 16), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        norm_num_groups=8, sample_size=32)


def tiny_scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                         set_alpha_to_one=False, steps_offset=1)


def save_tiny_sd(folder: str | os.PathLike) -> Path:
    """Write a tiny SD 1.x stack in diffusers layout under ``folder``; returns the folder."""
    import diffusers
    from transformers import CLIPTokenizer

    folder = Path(folder)
    tok_dir = write_tiny_tokenizer(folder / "tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(str(tok_dir))
    tiny_text_encoder(len(tokenizer)).save_pretrained(folder / "text_encoder")
    tiny_unet().save_pretrained(folder / "unet")
    tiny_vae().save_pretrained(folder / "vae")
    tiny_scheduler().save_pretrained(folder / "scheduler")
    index = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": diffusers.__version__,
             "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
             "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
             "scheduler": ["diffusers", "DDIMScheduler"]}
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    return folder
