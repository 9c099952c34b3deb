"""LaMD's motion-content decomposed video autoencoder (MCD-VAE), as a diffusers ``ModelMixin``.

Three networks (LaMD, arXiv 2304.11603; the widths are vidflow's, the paper does not publish them):

- content encoder E_I, a 2D encoder on the first frame x_0 [B, 3, H, W]: the content latent
  f_x0 [B, d', H/f_s, W/f_s] plus one feature map per finer level (the multi-scale skips;
  k = levels - 1 of them);
- motion encoder E_M, a 3D CNN on the clip x_0:L [B, 3, L, H, W]: spatial factor f_s =
  2^(levels - 1) and temporal factor f_t = L (strided convolutions halve the frames with each
  spatial halving, then a convolution whose temporal kernel spans the remaining frames removes
  the time axis) -> the Gaussian posterior q(z_m | x) with mean and log-variance [B, d, h, w];
  a sample z_m = mu + eps * sigma goes through the normalisation layer (``latent_norm``: zero
  mean, unit variance over each sample's [d, h, w], no affine; or "none");
- decoder D_V, a 3D UNet: the normalised z_m and f_x0 are fused at the coarsest level into
  ceil(L / 2^(levels-1)) frames, then each finer level doubles the space and time resolution
  (to the encoder's frame count there) and concatenates the content skip of that level
  (broadcast over time) -> L frames [B, 3, L, H, W] in [-1, 1] (unclamped).

Pixels are float [-1, 1]; videos are [B, C, T, H, W].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from stages.edit.lamd.blocks import frame_counts, groups_for, halved, res_stack

LATENT_NORMS = ("layer", "none")


@dataclass
class MotionPosterior:
    """Diagonal Gaussian q(z_m | x): ``mean`` and ``logvar`` float [B, d, h, w]."""

    mean: torch.Tensor
    logvar: torch.Tensor

    @property
    def std(self) -> torch.Tensor:
        return torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """z_m = mu + eps * sigma, eps ~ N(0, I) drawn from ``generator`` (on its device) when given."""
        device = generator.device if generator is not None else self.mean.device
        eps = torch.randn(self.mean.shape, generator=generator, device=device, dtype=torch.float32).to(self.mean)
        return self.mean + eps * self.std

    def mode(self) -> torch.Tensor:
        return self.mean


@dataclass
class ContentFeatures:
    """E_I's output: ``latent`` f_x0 [B, d', h, w] and ``skips`` [B, c_i, H/2^i, W/2^i], finest first."""

    latent: torch.Tensor
    skips: list[torch.Tensor]


@dataclass
class MCDVAEOutput:
    """A reconstruction [B, 3, L, H, W], its posterior and the normalised motion latent [B, d, h, w]."""

    sample: torch.Tensor
    posterior: MotionPosterior
    motion: torch.Tensor


def normalise_latent(z: torch.Tensor, kind: str, eps: float = 1e-5) -> torch.Tensor:
    """The normalisation layer on z_m [B, d, h, w]: "layer" = zero mean, unit variance per sample."""
    if kind == "none":
        return z
    return F.layer_norm(z, z.shape[1:], eps=eps)


class MCDVAE(ModelMixin, ConfigMixin):
    """Motion-content decomposed video autoencoder; see the module docstring for shapes."""

    config_name = "config.json"

    @register_to_config
    def __init__(self, in_channels: int = 3, sample_size: int = 64, num_frames: int = 16,
                 latent_channels: int = 4, content_channels: int = 64,
                 block_out_channels: tuple[int, ...] = (32, 64, 128), layers_per_block: int = 1,
                 norm_num_groups: int = 8, latent_norm: str = "layer", logvar_min: float = -30.0,
                 logvar_max: float = 20.0):
        super().__init__()
        if len(block_out_channels) < 2:
            raise ValueError(f"block_out_channels needs >= 2 levels (f_s >= 2), got {block_out_channels}")
        if latent_norm not in LATENT_NORMS:
            raise ValueError(f"latent_norm must be one of {LATENT_NORMS}, got {latent_norm!r}")
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        widths = list(block_out_channels)
        levels = len(widths)
        g, n = norm_num_groups, layers_per_block
        self.frames = frame_counts(num_frames, levels)

        # E_I: 2D content encoder on x_0
        self.content_in = nn.Conv2d(in_channels, widths[0], 3, padding=1)
        self.content_blocks = nn.ModuleList()
        self.content_down = nn.ModuleList()
        for i, width in enumerate(widths):
            self.content_blocks.append(res_stack(widths[max(i - 1, 0)], width, n, 2, g))
            if i < levels - 1:
                self.content_down.append(nn.Conv2d(width, width, 3, stride=2, padding=1))
        self.content_out = nn.Sequential(nn.GroupNorm(groups_for(widths[-1], g), widths[-1]), nn.SiLU(),
                                         nn.Conv2d(widths[-1], content_channels, 3, padding=1))

        # E_M: 3D motion encoder on x_0:L; time halves with each spatial halving, then collapses
        self.motion_in = nn.Conv3d(in_channels, widths[0], 3, padding=1)
        self.motion_blocks = nn.ModuleList()
        self.motion_down = nn.ModuleList()
        for i, width in enumerate(widths):
            self.motion_blocks.append(res_stack(widths[max(i - 1, 0)], width, n, 3, g))
            if i < levels - 1:
                stride_t = 2 if self.frames[i] > 1 else 1
                self.motion_down.append(nn.Conv3d(width, width, 3, stride=(stride_t, 2, 2), padding=1))
        self.motion_out = nn.Sequential(
            nn.GroupNorm(groups_for(widths[-1], g), widths[-1]), nn.SiLU(),
            nn.Conv3d(widths[-1], 2 * latent_channels, (self.frames[-1], 3, 3), padding=(0, 1, 1)))

        # D_V: 3D UNet decoder; fuse at the coarsest level, then up with content skips
        self.fuse = nn.Conv2d(latent_channels + content_channels, widths[-1] * self.frames[-1], 3, padding=1)
        self.decoder_mid = res_stack(widths[-1], widths[-1], n, 3, g)
        self.decoder_up = nn.ModuleList()
        self.decoder_blocks = nn.ModuleList()
        for i in range(levels - 2, -1, -1):
            self.decoder_up.append(nn.Conv3d(widths[i + 1], widths[i], 3, padding=1))
            self.decoder_blocks.append(res_stack(2 * widths[i], widths[i], n, 3, g))
        self.decoder_out = nn.Sequential(nn.GroupNorm(groups_for(widths[0], g), widths[0]), nn.SiLU(),
                                         nn.Conv3d(widths[0], in_channels, 3, padding=1))

    @property
    def spatial_factor(self) -> int:
        """f_s = 2^(levels - 1): the motion and content latents are H / f_s x W / f_s."""
        return 2 ** (len(self.config.block_out_channels) - 1)

    def latent_size(self, height: int, width: int) -> tuple[int, int]:
        """(h, w) of the latents for frames of ``height`` x ``width`` pixels."""
        h, w = height, width
        for _ in range(len(self.config.block_out_channels) - 1):
            h, w = halved(h), halved(w)
        return h, w

    def _check_video(self, video: torch.Tensor) -> None:
        if video.ndim != 5 or video.shape[1] != self.config.in_channels:
            raise ValueError(f"video must be [B, {self.config.in_channels}, L, H, W], got {tuple(video.shape)}")
        if video.shape[2] != self.config.num_frames:
            raise ValueError(f"this MCD-VAE takes {self.config.num_frames} frames, got {video.shape[2]}")

    def encode_content(self, first_frame: torch.Tensor) -> ContentFeatures:
        """E_I: f_x0 and the multi-scale skips of x_0 [B, 3, H, W]."""
        h = self.content_in(first_frame)
        skips = []
        for i, block in enumerate(self.content_blocks):
            h = block(h)
            if i < len(self.content_down):
                skips.append(h)
                h = self.content_down[i](h)
        return ContentFeatures(self.content_out(h), skips)

    def encode_motion(self, video: torch.Tensor) -> MotionPosterior:
        """E_M: q(z_m | x_0:L) of a clip [B, 3, L, H, W]; mean/logvar [B, d, h, w] (no time axis)."""
        self._check_video(video)
        h = self.motion_in(video)
        for i, block in enumerate(self.motion_blocks):
            h = block(h)
            if i < len(self.motion_down):
                h = self.motion_down[i](h)
        mean, logvar = self.motion_out(h).squeeze(2).chunk(2, dim=1)
        return MotionPosterior(mean, logvar.clamp(self.config.logvar_min, self.config.logvar_max))

    def normalise(self, z: torch.Tensor) -> torch.Tensor:
        """The normalisation layer applied to a posterior sample before decoding (and diffusion)."""
        return normalise_latent(z, self.config.latent_norm)

    def decode(self, motion: torch.Tensor, content: ContentFeatures) -> torch.Tensor:
        """D_V: L frames [B, 3, L, H, W] from the normalised motion latent [B, d, h, w] and E_I's features."""
        f = content.latent
        if motion.shape[0] != f.shape[0] or motion.shape[-2:] != f.shape[-2:]:
            raise ValueError(f"motion latent {tuple(motion.shape)} does not fit content latent {tuple(f.shape)}")
        b, _, hh, ww = f.shape
        h = self.fuse(torch.cat([motion.to(f.dtype), f], 1))
        h = self.decoder_mid(h.reshape(b, -1, self.frames[-1], hh, ww))
        for j, (up, block) in enumerate(zip(self.decoder_up, self.decoder_blocks, strict=True)):
            skip = content.skips[-1 - j]
            frames = self.frames[-2 - j]
            h = up(F.interpolate(h, size=(frames, *skip.shape[-2:]), mode="nearest"))
            h = block(torch.cat([h, skip[:, :, None].expand(-1, -1, frames, -1, -1)], 1))
        return self.decoder_out(h)

    def motion_latent(self, video: torch.Tensor, generator: torch.Generator | None = None,
                      sample: bool = True) -> tuple[torch.Tensor, MotionPosterior]:
        """The normalised z_m [B, d, h, w] of a clip (a posterior sample, or its mean) and the posterior."""
        posterior = self.encode_motion(video)
        z = posterior.sample(generator) if sample else posterior.mode()
        return self.normalise(z), posterior

    def forward(self, video: torch.Tensor, generator: torch.Generator | None = None,
                sample_posterior: bool = True) -> MCDVAEOutput:
        """Reconstruct a clip [B, 3, L, H, W] from its first frame's content and its own motion."""
        motion, posterior = self.motion_latent(video, generator, sample_posterior)
        return MCDVAEOutput(self.decode(motion, self.encode_content(video[:, :, 0])), posterior, motion)
