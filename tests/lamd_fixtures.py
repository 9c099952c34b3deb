"""Tiny LaMD models built from config with fixed seeds, saved in the layout ``lamd`` loads.

MCD-VAE: 16 x 16 frames, L = 4, widths (8, 16, 16) -> f_s = 4, 4 x 4 motion latents of d = 2
and content latents of d' = 8. DMG: a 2-level UNet2DConditionModel of widths (8, 16) over them::

    folder = save_tiny_lamd(tmp_path / "lamd")      # mcd_vae/ and dmg/
    config = LamdConfig(model=folder, num_inference_steps=2)
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

TINY_VAE = dict(sample_size=16, num_frames=4, latent_channels=2, content_channels=8, block_out_channels=(8, 16, 16),
                norm_num_groups=4)
TINY_DMG = dict(latent_channels=2, content_channels=8, sample_size=4, block_out_channels=(8, 16),
                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=1, cross_attention_dim=16,
                attention_head_dim=2, norm_num_groups=4)
TINY_DISC = dict(block_out_channels=(8, 16), norm_num_groups=4)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models: one torch thread is fastest on a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_vae(**overrides):
    from stages.edit.lamd.mcd_vae import MCDVAE

    torch.manual_seed(0)
    return MCDVAE(**{**TINY_VAE, **overrides}).eval()


def tiny_dmg(**overrides):
    from stages.edit.lamd.dmg import MotionGenerator

    torch.manual_seed(1)
    return MotionGenerator(**{**TINY_DMG, **overrides}).eval()


def save_tiny_lamd(folder: Path | str, vae=None, dmg=None) -> str:
    """Save an MCD-VAE and a DMG (tiny, seeded, unless given) as ``folder/mcd_vae`` and ``folder/dmg``."""
    folder = Path(folder)
    (vae if vae is not None else tiny_vae()).save_pretrained(folder / "mcd_vae")
    (dmg if dmg is not None else tiny_dmg()).save_pretrained(folder / "dmg")
    return str(folder)


def save_tiny_text(folder: Path | str) -> str:
    """A tiny CLIP tokenizer and text encoder (width 32) as ``folder/tokenizer`` and ``folder/text_encoder``."""
    from transformers import CLIPTokenizer

    from tests.diffusion_fixtures import tiny_text_encoder, write_tiny_tokenizer

    folder = Path(folder)
    tokenizer = CLIPTokenizer.from_pretrained(str(write_tiny_tokenizer(folder / "tokenizer")))
    tiny_text_encoder(len(tokenizer)).save_pretrained(folder / "text_encoder")
    return str(folder)
