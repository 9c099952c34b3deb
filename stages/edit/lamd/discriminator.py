"""LaMD's video discriminator for the MCD-VAE's adversarial loss: a 3D convolutional patch critic.

The paper names a video discriminator and no architecture; this one is a PatchGAN made 3D:
strided 4x4 spatial / 3-frame temporal convolutions (time halved from the second layer on),
GroupNorm and LeakyReLU(0.2), ending in one logit per space-time patch [B, 1, T', H', W'].
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from stages.edit.lamd.blocks import groups_for


class VideoDiscriminator(ModelMixin, ConfigMixin):
    """Patch logits of a clip [B, 3, L, H, W] in [-1, 1]: real > 0 > fake under the hinge loss."""

    config_name = "config.json"

    @register_to_config
    def __init__(self, in_channels: int = 3, block_out_channels: tuple[int, ...] = (32, 64, 128),
                 norm_num_groups: int = 8):
        super().__init__()
        layers: list[nn.Module] = []
        previous = in_channels
        for i, width in enumerate(block_out_channels):
            stride = (1 if i == 0 else 2, 2, 2)
            layers.append(nn.Conv3d(previous, width, (3, 4, 4), stride=stride, padding=1))
            if i > 0:
                layers.append(nn.GroupNorm(groups_for(width, norm_num_groups), width))
            layers.append(nn.LeakyReLU(0.2))
            previous = width
        layers.append(nn.Conv3d(previous, 1, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.net(video)
