"""Attention for video UNets built from image UNets: diffusers attention processors.

Frames travel folded into the batch (``[B*F, N, C]`` tokens). :class:`VideoAttnProcessor` is a
diffusers attention processor (the ``AttnProcessor2_0`` contract: ``__call__(attn,
hidden_states, encoder_hidden_states, attention_mask, temb)``) that reads the frame count from
a shared :class:`FrameState` and computes either full attention or Tune-A-Video's
sparse-causal attention, where the queries of frame ``i`` attend to the keys and values of
frames ``0`` and ``i - 1`` (frame 0 attends to itself twice, as in the release). Attention is
PyTorch SDPA (flash / memory-efficient kernels on GPU) or an eager softmax, optionally in
chunks of queries (attention slicing).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F


@dataclass
class FrameState:
    """Frames per video of the current UNet call; set by the caller before each forward pass."""

    num_frames: int = 1


def sparse_causal_kv(x: torch.Tensor, num_frames: int) -> torch.Tensor:
    """Keys or values of frames ``[0, i-1]`` for each frame ``i``.

    x: [B*F, N, C] (frames folded into the batch, frame-major within each video).
    Returns [B*F, 2N, C]: for frame i the tokens of frame 0 followed by those of frame
    max(i-1, 0).
    """
    bf, n, c = x.shape
    if bf % num_frames:
        raise ValueError(f"batch {bf} is not a multiple of num_frames={num_frames}")
    x = x.view(bf // num_frames, num_frames, n, c)
    previous = (torch.arange(num_frames, device=x.device) - 1).clamp(min=0)
    first = x[:, :1].expand(-1, num_frames, -1, -1)
    return torch.cat([first, x[:, previous]], dim=2).reshape(bf, 2 * n, c)


def attend(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *, scale: float,
           mask: torch.Tensor | None = None, backend: Literal["sdpa", "eager"] = "sdpa",
           chunk: int | None = None) -> torch.Tensor:
    """Multi-head attention ``softmax(q k^T * scale + mask) v``.

    query [B, H, Nq, D], key/value [B, H, Nk, D], mask broadcastable to [B, H, Nq, Nk] (additive).
    ``chunk`` splits the queries into pieces of at most that many (same result, less memory).
    Returns [B, H, Nq, D] in the query's dtype.
    """
    if chunk and query.shape[2] > chunk:
        parts = []
        for start in range(0, query.shape[2], chunk):
            part_mask = mask[..., start:start + chunk, :] if mask is not None and mask.shape[-2] > 1 else mask
            parts.append(attend(query[:, :, start:start + chunk], key, value, scale=scale, mask=part_mask,
                                backend=backend))
        return torch.cat(parts, dim=2)
    if backend == "sdpa":
        return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=0.0, scale=scale)
    scores = torch.matmul(query.float(), key.float().transpose(-1, -2)) * scale
    if mask is not None:
        scores = scores + mask.float()
    return torch.matmul(scores.softmax(dim=-1), value.float()).to(query.dtype)


class VideoAttnProcessor:
    """A diffusers attention processor for frames folded into the batch.

    ``mode="full"``: ordinary (self- or cross-) attention, as ``AttnProcessor2_0``.
    ``mode="sparse_causal"``: self-attention whose keys/values are those of frames 0 and i-1.
    """

    def __init__(self, state: FrameState, mode: Literal["full", "sparse_causal"] = "full",
                 backend: Literal["sdpa", "eager"] = "sdpa", chunk: int | None = None):
        if mode not in ("full", "sparse_causal"):
            raise ValueError(f"mode must be 'full' or 'sparse_causal', got {mode!r}")
        self.state = state
        self.mode = mode
        self.backend = backend
        self.chunk = chunk

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        batch = hidden_states.shape[0]
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        if self.mode == "sparse_causal":
            if attention_mask is not None:
                raise ValueError("sparse-causal attention takes no attention mask")
            key = sparse_causal_kv(key, self.state.num_frames)
            value = sparse_causal_kv(value, self.state.num_frames)
        elif attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, key.shape[1], batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])

        head_dim = key.shape[-1] // attn.heads
        query, key, value = (t.view(batch, -1, attn.heads, head_dim).transpose(1, 2) for t in (query, key, value))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        out = attend(query, key, value, scale=attn.scale, mask=attention_mask, backend=self.backend,
                     chunk=self.chunk)
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor
