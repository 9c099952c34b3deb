"""Inflate a Stable Diffusion 1.x ``UNet2DConditionModel`` into Tune-A-Video's video UNet, in place.

Frames are folded into the batch (``[B, C, F, h, w] -> [B*F, C, h, w]``), so every
convolution, the time embedding and the cross-attention act per frame, as the release's
``InflatedConv3d`` does. On top of that, as in the release (showlab/Tune-A-Video):

- each ``BasicTransformerBlock``'s self-attention ``attn1`` becomes sparse-causal (frame i
  attends to frames 0 and i-1), and the block gains a temporal self-attention ``attn_temp``
  over the frames of each spatial position, pre-normed by ``norm_temp``, added as a residual
  after the feed-forward; its output projection starts at zero (weight and bias: the release
  zeroes the weight only, which leaves a constant bias; zeroing both makes the inflated UNet
  exactly the image UNet at the start);
- the resnets' GroupNorms (and ``conv_norm_out``) take their statistics over all frames of a
  video, as the release's norms over ``[B, C, F, H, W]`` tensors do; the transformers' input
  GroupNorm stays per frame, as there.

Parameter names keep the image UNet's and add ``...transformer_blocks.N.attn_temp.*`` and
``...norm_temp.*``, the release's names, so its trainable-module suffixes apply unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.attention_processor import Attention
from diffusers.models.resnet import ResnetBlock2D
from torch import nn

from stages.edit.diffusion.attention import FrameState, VideoAttnProcessor

TRAINABLE_MODULES: tuple[str, ...] = ("attn1.to_q", "attn2.to_q", "attn_temp")


class InflatedTransformerBlock(BasicTransformerBlock):
    """A ``BasicTransformerBlock`` followed by Tune-A-Video's temporal attention.

    Instances are made by :func:`inflate_unet` (which adds ``attn_temp``, ``norm_temp`` and
    ``frame_state`` to an existing block), never constructed directly.
    """

    attn_temp: Attention
    norm_temp: nn.LayerNorm
    frame_state: FrameState

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        hidden_states = super().forward(hidden_states, *args, **kwargs)
        frames = self.frame_state.num_frames
        bf, tokens, channels = hidden_states.shape
        # (b f) d c -> (b d) f c: attend over the frames of each spatial position
        x = hidden_states.view(bf // frames, frames, tokens, channels).transpose(1, 2).reshape(-1, frames, channels)
        x = self.attn_temp(self.norm_temp(x)) + x
        return x.view(bf // frames, tokens, frames, channels).transpose(1, 2).reshape(bf, tokens, channels)


class VideoGroupNorm(nn.GroupNorm):
    """GroupNorm with statistics over all frames of a video (input [B*F, C, H, W])."""

    frame_state: FrameState

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frames = self.frame_state.num_frames
        if frames == 1 or x.ndim != 4:
            return super().forward(x)
        bf, c, h, w = x.shape
        video = x.view(bf // frames, frames, c, h, w).transpose(1, 2)
        out = F.group_norm(video, self.num_groups, self.weight, self.bias, self.eps)
        return out.transpose(1, 2).reshape(bf, c, h, w)


def _add_temporal(block: BasicTransformerBlock, state: FrameState) -> None:
    if block.norm_type != "layer_norm":
        raise ValueError(f"only layer_norm transformer blocks inflate (SD 1.x), got {block.norm_type!r}")
    attn1 = block.attn1
    dim = attn1.to_q.in_features
    weight = attn1.to_q.weight
    temp = Attention(query_dim=dim, heads=attn1.heads, dim_head=attn1.inner_dim // attn1.heads,
                     bias=attn1.to_q.bias is not None, upcast_attention=attn1.upcast_attention)
    nn.init.zeros_(temp.to_out[0].weight)
    if temp.to_out[0].bias is not None:
        nn.init.zeros_(temp.to_out[0].bias)
    block.attn_temp = temp.to(device=weight.device, dtype=weight.dtype)
    block.norm_temp = nn.LayerNorm(dim).to(device=weight.device, dtype=weight.dtype)
    block.frame_state = state
    block.__class__ = InflatedTransformerBlock


def _video_norm(norm: nn.Module, state: FrameState) -> None:
    if type(norm) is nn.GroupNorm:
        norm.__class__ = VideoGroupNorm
        norm.frame_state = state


def inflate_unet(unet: nn.Module, *, attention: str = "sdpa", attention_slice: int | None = None,
                 video_group_norm: bool = True) -> FrameState:
    """Inflate ``unet`` in place; returns the :class:`FrameState` its layers read the frame count from.

    Raises ValueError when the UNet has no transformer blocks or is already inflated.
    """
    if getattr(unet, "frame_state", None) is not None:
        raise ValueError("this UNet is already inflated")
    state = FrameState()
    blocks = [m for m in unet.modules() if type(m) is BasicTransformerBlock]
    if not blocks:
        raise ValueError("the UNet has no BasicTransformerBlock to inflate (not an SD 1.x UNet?)")
    for block in blocks:
        _add_temporal(block, state)
        block.attn1.set_processor(VideoAttnProcessor(state, "sparse_causal", attention, attention_slice))
        if block.attn2 is not None:
            block.attn2.set_processor(VideoAttnProcessor(state, "full", attention, attention_slice))
        block.attn_temp.set_processor(VideoAttnProcessor(state, "full", attention, attention_slice))
    if video_group_norm:
        for module in unet.modules():
            if isinstance(module, ResnetBlock2D):
                _video_norm(module.norm1, state)
                _video_norm(module.norm2, state)
        if getattr(unet, "conv_norm_out", None) is not None:
            _video_norm(unet.conv_norm_out, state)
    unet.frame_state = state
    return state


def video_unet_forward(unet: nn.Module, latents: torch.Tensor, timestep: torch.Tensor | int,
                       text_embeddings: torch.Tensor) -> torch.Tensor:
    """Noise prediction of an inflated UNet for whole videos.

    latents [B, C, F, h, w]; timestep a scalar or [B]; text_embeddings [B, L, D].
    Returns [B, C, F, h, w] in the UNet's output dtype.
    """
    state: FrameState = unet.frame_state
    b, c, f, h, w = latents.shape
    state.num_frames = f
    x = latents.transpose(1, 2).reshape(b * f, c, h, w)
    t = torch.as_tensor(timestep, device=latents.device)
    t = t.expand(b) if t.ndim == 0 else t
    out = unet(x, t.repeat_interleave(f), encoder_hidden_states=text_embeddings.repeat_interleave(f, dim=0)).sample
    return out.view(b, f, -1, h, w).transpose(1, 2)


def trainable_parameters(unet: nn.Module, suffixes: Iterable[str] = TRAINABLE_MODULES) -> dict[str, nn.Parameter]:
    """Parameters of the modules whose names end with one of ``suffixes`` (the release's rule)."""
    suffixes = tuple(suffixes)
    out: dict[str, nn.Parameter] = {}
    for name, module in unet.named_modules():
        if name.endswith(suffixes):
            for pname, param in module.named_parameters():
                out[f"{name}.{pname}"] = param
    if not out:
        raise ValueError(f"no UNet module ends with any of {list(suffixes)}")
    return out
