"""Text states for a text-conditioned DMG: a frozen CLIP text encoder, as Stable Diffusion uses it."""

from __future__ import annotations

import torch


@torch.no_grad()
def encode_prompts(text_encoder, tokenizer, prompts: list[str]) -> torch.Tensor:
    """Last hidden states [N, max_length, D] of ``prompts``, padded to the tokenizer's max length."""
    ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    device = next(text_encoder.parameters()).device
    return text_encoder(ids.to(device))[0]
