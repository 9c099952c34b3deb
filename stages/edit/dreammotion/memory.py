"""Memory options of a ``UNet3DConditionModel`` that diffusers 0.42 does not offer for it.

``UNet3DConditionModel`` declares no gradient-checkpointing support (``enable_gradient_checkpointing``
raises), yet DreamMotion back-propagates through it every iteration. :func:`checkpoint_blocks`
wraps the forward of every resnet, temporal convolution and (spatial and temporal) transformer
of its down, mid and up blocks in non-reentrant ``torch.utils.checkpoint``: activations inside
them are recomputed in backward instead of stored. Module names stay as they were, so hooks
placed by name still fire; non-reentrant checkpointing keeps intermediate outputs (the recorded
attention keys) differentiable. :func:`set_attention` installs the framework's attention
processor (SDPA or eager, optionally in query chunks) on every attention layer.
"""

from __future__ import annotations

import functools

import torch
from torch.utils.checkpoint import checkpoint

from stages.edit.diffusion.attention import FrameState, VideoAttnProcessor

_CHECKPOINTED = ("resnets", "temp_convs", "attentions", "temp_attentions")


def _checkpointed(forward):
    @functools.wraps(forward)
    def run(*args, **kwargs):
        if not torch.is_grad_enabled():
            return forward(*args, **kwargs)
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)

    run.vidflow_checkpointed = True  # type: ignore[attr-defined]
    return run


def checkpoint_blocks(unet: torch.nn.Module) -> int:
    """Checkpoint the sub-layers of every block of a UNet3D (idempotent); returns how many are wrapped."""
    blocks = [*unet.down_blocks, unet.mid_block, *unet.up_blocks]
    count = 0
    for block in blocks:
        if block is None:
            continue
        for attr in _CHECKPOINTED:
            for module in getattr(block, attr, None) or ():
                if not getattr(module.forward, "vidflow_checkpointed", False):
                    module.forward = _checkpointed(module.forward)
                count += 1
    return count


def set_attention(unet: torch.nn.Module, backend: str = "sdpa", chunk: int | None = None) -> None:
    """Every attention layer of ``unet`` computes ``softmax(qk^T)v`` with ``backend``, ``chunk`` queries at a time."""
    unet.set_attn_processor(VideoAttnProcessor(FrameState(), "full", backend=backend, chunk=chunk))
