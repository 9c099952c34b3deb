"""Building blocks of LaMD's networks: 2D/3D residual blocks (GroupNorm, SiLU, 3x3(x3) convolutions)."""

from __future__ import annotations

import math

import torch
from torch import nn


def groups_for(channels: int, preferred: int) -> int:
    """The largest group count <= ``preferred`` that divides ``channels`` (GroupNorm needs a divisor)."""
    return math.gcd(channels, preferred) or 1


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice plus a (1x1 when widths differ) shortcut; ``dims`` 2 (images) or 3 (videos)."""

    def __init__(self, in_channels: int, out_channels: int, dims: int = 2, norm_groups: int = 8):
        super().__init__()
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        self.norm1 = nn.GroupNorm(groups_for(in_channels, norm_groups), in_channels)
        self.conv1 = conv(in_channels, out_channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups_for(out_channels, norm_groups), out_channels)
        self.conv2 = conv(out_channels, out_channels, 3, padding=1)
        self.act = nn.SiLU()
        self.shortcut = conv(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self.act(self.norm1(x)))
        h = self.conv2(self.act(self.norm2(h)))
        return self.shortcut(x) + h


def res_stack(in_channels: int, out_channels: int, layers: int, dims: int, norm_groups: int) -> nn.Sequential:
    """``layers`` residual blocks, the first changing the width from ``in_channels`` to ``out_channels``."""
    return nn.Sequential(*[ResBlock(in_channels if i == 0 else out_channels, out_channels, dims, norm_groups)
                           for i in range(layers)])


def halved(size: int) -> int:
    """Output length of a kernel-3, padding-1, stride-2 convolution: ceil(size / 2)."""
    return (size + 1) // 2


def frame_counts(num_frames: int, levels: int) -> list[int]:
    """Frames at each level of the motion encoder (and, reversed, the decoder): L, ceil(L/2), ... [levels]."""
    counts = [num_frames]
    for _ in range(levels - 1):
        counts.append(halved(counts[-1]))
    return counts


def sinusoidal_positions_2d(height: int, width: int, dim: int, device=None) -> torch.Tensor:
    """Fixed 2D sine/cosine position codes, float32 [height * width, dim] (row-major tokens).

    Half of ``dim`` encodes the row, half the column, each as sin/cos pairs at geometric
    frequencies 1 .. 1/10000 (``dim`` must be a multiple of 4).
    """
    if dim % 4:
        raise ValueError(f"position code width must be a multiple of 4, got {dim}")
    quarter = dim // 4
    freqs = torch.exp(-math.log(10000.0) * torch.arange(quarter, device=device, dtype=torch.float32) / quarter)
    ys = torch.arange(height, device=device, dtype=torch.float32)[:, None] * freqs  # [H, q]
    xs = torch.arange(width, device=device, dtype=torch.float32)[:, None] * freqs  # [W, q]
    row = torch.cat([ys.sin(), ys.cos()], -1)[:, None].expand(height, width, 2 * quarter)
    col = torch.cat([xs.sin(), xs.cos()], -1)[None].expand(height, width, 2 * quarter)
    return torch.cat([row, col], -1).reshape(height * width, dim)
