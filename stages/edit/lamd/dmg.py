"""LaMD's diffusion motion generator (DMG): a diffusers ``UNet2DConditionModel`` over the motion latent.

eps_theta(z_t, t, c) predicts the noise of the normalised motion latent z_m [B, d, h, w] (DDPM,
``num_train_timesteps`` 1000, L_simple). Its cross-attention reads conditioning tokens: the
content latent f_x0 [B, d', h, w] as h*w tokens, each projected to ``cross_attention_dim`` by a
linear layer plus a fixed 2D sine/cosine code of its position; with ``text_embed_dim`` set, text
encoder states [B, N, text_embed_dim] are projected the same way and appended.

:class:`MotionGenerator` keeps the noise schedule in its config, so one ``dmg/`` folder
(``config.json`` + weights, ``from_pretrained``) is the whole generator: :meth:`train_scheduler`
is the training ``DDPMScheduler``, :meth:`sampling_scheduler` the ``DDIMScheduler`` over the same
betas that samples a K-step subsequence (K = 200 in LaMD; eta 1 = respaced ancestral DDPM).
"""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from stages.edit.lamd.blocks import sinusoidal_positions_2d


class MotionGenerator(ModelMixin, ConfigMixin):
    """The DMG: conditioning projections + a ``UNet2DConditionModel`` (in/out ``latent_channels``)."""

    config_name = "config.json"

    @register_to_config
    def __init__(self, latent_channels: int = 4, content_channels: int = 64, sample_size: int = 16,
                 block_out_channels: tuple[int, ...] = (64, 128, 128),
                 down_block_types: tuple[str, ...] = ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                 up_block_types: tuple[str, ...] = ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                 layers_per_block: int = 2, cross_attention_dim: int = 128, attention_head_dim: int = 8,
                 norm_num_groups: int = 32, text_embed_dim: int | None = None,
                 num_train_timesteps: int = 1000, beta_schedule: str = "linear", beta_start: float = 1e-4,
                 beta_end: float = 0.02):
        super().__init__()
        if cross_attention_dim % 4:
            raise ValueError(f"cross_attention_dim must be a multiple of 4, got {cross_attention_dim}")
        self.unet = UNet2DConditionModel(
            sample_size=sample_size, in_channels=latent_channels, out_channels=latent_channels,
            block_out_channels=tuple(block_out_channels), down_block_types=tuple(down_block_types),
            up_block_types=tuple(up_block_types), layers_per_block=layers_per_block,
            cross_attention_dim=cross_attention_dim, attention_head_dim=attention_head_dim,
            norm_num_groups=norm_num_groups)
        self.content_proj = nn.Linear(content_channels, cross_attention_dim)
        self.text_proj = nn.Linear(text_embed_dim, cross_attention_dim) if text_embed_dim else None

    def conditioning(self, content: torch.Tensor, text: torch.Tensor | None = None) -> torch.Tensor:
        """Cross-attention tokens [B, h*w (+ N), cross_attention_dim] of f_x0 [B, d', h, w] (and text [B, N, D])."""
        b, c, h, w = content.shape
        if c != self.config.content_channels:
            raise ValueError(f"content latent has {c} channels; this DMG takes {self.config.content_channels}")
        tokens = self.content_proj(content.flatten(2).transpose(1, 2))
        tokens = tokens + sinusoidal_positions_2d(h, w, tokens.shape[-1], tokens.device).to(tokens.dtype)
        if text is None:
            return tokens
        if self.text_proj is None:
            raise ValueError("this DMG was built without text conditioning (text_embed_dim is null)")
        return torch.cat([tokens, self.text_proj(text.to(tokens.dtype))], 1)

    def denoise(self, noisy: torch.Tensor, timesteps: torch.Tensor | int, tokens: torch.Tensor) -> torch.Tensor:
        """eps_theta(z_t, t, c): predicted noise [B, d, h, w] of noisy latents [B, d, h, w] given
        conditioning tokens (:meth:`conditioning`; the sampler computes them once per clip)."""
        return self.unet(noisy, timesteps, encoder_hidden_states=tokens).sample

    def forward(self, noisy: torch.Tensor, timesteps: torch.Tensor | int, content: torch.Tensor,
                text: torch.Tensor | None = None) -> torch.Tensor:
        """eps_theta from the content latent [B, d', h, w] (and text states) itself: the training pass,
        so every trained parameter is used inside ``forward`` (as DistributedDataParallel needs)."""
        return self.denoise(noisy, timesteps, self.conditioning(content, text))

    def train_scheduler(self) -> DDPMScheduler:
        """The DDPM forward process the DMG is trained with (epsilon prediction, no clipping)."""
        cfg = self.config
        return DDPMScheduler(num_train_timesteps=cfg.num_train_timesteps, beta_schedule=cfg.beta_schedule,
                             beta_start=cfg.beta_start, beta_end=cfg.beta_end, prediction_type="epsilon",
                             clip_sample=False)

    def sampling_scheduler(self) -> DDIMScheduler:
        """A DDIM sampler on the training betas (``set_timesteps(K)`` picks the K-step subsequence)."""
        return DDIMScheduler.from_config(self.train_scheduler().config, clip_sample=False)
