"""ReVideo's control module and the SVD UNet forward that takes its residuals.

:class:`ReVideoControlModel` is a diffusers ``ModelMixin`` built from diffusers' spatio-temporal
blocks: a copy of the SVD UNet's encoder (``conv_in``, ``down_blocks``, ``mid_block``) with its
own time and added-time embeddings, taking the same 8-channel input as the UNet (scaled noisy
latents + conditioning latents). Three conditioning stems (diffusers'
``ControlNetConditioningEmbedding``: 3x3 convs to (16, 32, 96, 256) with three stride-2 steps,
SiLU, zero-initialised 3x3 ``conv_out``) embed the motion map (2 ch), the content video (3 ch) and,
in SAFM, the region map plus a constant map of ``c_noise`` (2 ch). SAFM (the release's
``WeightEmbedding``, ``ctrl_model/svd_ctrl.py`` L164-205) fuses::

    Gamma = sigmoid(stem([M, c_noise]))            # [B*F, C0, h, w]
    fused = conv_final(motion * Gamma + content * (1 - Gamma))

and the fused map is added to the control branch's ``conv_in`` output (L603-615). Zero-initialised
1x1 convolutions turn every encoder skip (12 for SVD) and the mid-block output into residuals,
times ``conditioning_scale`` (1 in the release), which :func:`controlled_unet_forward` adds to the
UNet's skips and its mid-block output (``ControledVideoUnet.forward``, L73-77).

Frames travel folded into the batch (``[B*F, C, H, W]``) inside both networks, as in diffusers.
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.controlnets.controlnet import ControlNetConditioningEmbedding
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.unets.unet_3d_blocks import UNetMidBlockSpatioTemporal, get_down_block
from torch import nn


def safm_fuse(motion: torch.Tensor, content: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """SAFM's blend ``motion * Gamma + content * (1 - Gamma)`` (the release's order; the paper
    writes the complement). All [B*F, C, h, w] of one dtype; Gamma in [0, 1]."""
    return motion * gamma + content * (1 - gamma)


def noise_map(c_noise: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The constant map of ``c_noise`` [N] (one per folded frame) shaped like ``like`` [N, 1, H, W]."""
    return c_noise.to(like.dtype).view(-1, 1, 1, 1).expand(like.shape)


class SpatialAdaptiveFusion(ControlNetConditioningEmbedding):
    """SAFM: a conditioning stem on [region, c_noise] whose sigmoid output Gamma blends the motion
    and content embeddings, followed by a (non-zero-initialised) 3x3 ``conv_final``.

    Parameter names are the stem's (``conv_in``, ``blocks.*``, ``conv_out``) plus ``conv_final``,
    as the release's ``WeightEmbedding``.
    """

    def __init__(self, conditioning_embedding_channels: int, region_channels: int = 1,
                 block_out_channels: tuple[int, ...] = (16, 32, 96, 256)):
        super().__init__(conditioning_embedding_channels, region_channels * 2, block_out_channels)
        self.conv_final = nn.Conv2d(conditioning_embedding_channels, conditioning_embedding_channels, 3, padding=1)

    def gamma(self, region: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        """Gamma [N, C0, h, w] in (0, 1) from region maps [N, 1, H, W] and ``c_noise`` [N]."""
        return torch.sigmoid(super().forward(torch.cat([region, noise_map(c_noise, region)], dim=1)))

    def forward(self, motion: torch.Tensor, content: torch.Tensor, region: torch.Tensor,  # type: ignore[override]
                c_noise: torch.Tensor) -> torch.Tensor:
        return self.conv_final(safm_fuse(motion, content, self.gamma(region, c_noise)))


def embed_time(model: nn.Module, timestep: torch.Tensor | float, added_time_ids: torch.Tensor, batch: int,
               num_frames: int, dtype: torch.dtype) -> torch.Tensor:
    """Time + added-time embedding [B*F, E] of an SVD UNet or a control model (same layer names).

    ``timestep``: scalar or [B] (SVD: ``c_noise = 0.25 ln sigma``); ``added_time_ids`` [B, 3]
    (fps_id, motion_bucket_id, cond_aug) in the sgm values. As diffusers' SVD UNet forward.
    """
    device = added_time_ids.device
    timesteps = torch.as_tensor(timestep, device=device)
    if timesteps.ndim == 0:
        timesteps = timesteps[None]
    timesteps = timesteps.expand(batch)
    emb = model.time_embedding(model.time_proj(timesteps).to(dtype=dtype))
    time_embeds = model.add_time_proj(added_time_ids.flatten()).reshape((batch, -1)).to(emb.dtype)
    emb = emb + model.add_embedding(time_embeds)
    return emb.repeat_interleave(num_frames, dim=0, output_size=emb.shape[0] * num_frames)


def _run_down_block(block: nn.Module, sample: torch.Tensor, emb: torch.Tensor, context: torch.Tensor,
                    indicator: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    if getattr(block, "has_cross_attention", False):
        return block(hidden_states=sample, temb=emb, encoder_hidden_states=context, image_only_indicator=indicator)
    return block(hidden_states=sample, temb=emb, image_only_indicator=indicator)


def controlled_unet_forward(unet: nn.Module, sample: torch.Tensor, timestep: torch.Tensor | float,
                            encoder_hidden_states: torch.Tensor, added_time_ids: torch.Tensor,
                            down_block_additional_residuals: tuple[torch.Tensor, ...] | None = None,
                            mid_block_additional_residual: torch.Tensor | None = None) -> torch.Tensor:
    """``UNetSpatioTemporalConditionModel.forward`` (diffusers 0.42) with control residuals.

    sample [B, F, C_in, h, w]; encoder_hidden_states [B, 1, D]; added_time_ids [B, 3]; residuals
    [B*F, C_i, h_i, w_i] (one per encoder skip) and [B*F, C, h/2^k, w/2^k] (mid). Each residual is
    added to the matching skip and the mid residual to the mid block's output, as the release's
    ``ControledVideoUnet``. Returns [B, F, C_out, h, w]. Without residuals the result is
    bit-identical to ``unet(...).sample``.
    """
    up_factor = 2 ** unet.num_upsamplers
    forward_upsample_size = any(s % up_factor != 0 for s in sample.shape[-2:])
    upsample_size = None
    batch, frames = sample.shape[:2]
    emb = embed_time(unet, timestep, added_time_ids, batch, frames, sample.dtype)
    context = encoder_hidden_states.repeat_interleave(frames, dim=0,
                                                      output_size=encoder_hidden_states.shape[0] * frames)
    x = unet.conv_in(sample.flatten(0, 1))
    indicator = torch.zeros(batch, frames, dtype=x.dtype, device=x.device)
    skips: tuple[torch.Tensor, ...] = (x,)
    for block in unet.down_blocks:
        x, res = _run_down_block(block, x, emb, context, indicator)
        skips += res
    if down_block_additional_residuals is not None:
        if len(down_block_additional_residuals) != len(skips):
            raise ValueError(f"{len(down_block_additional_residuals)} down residuals for {len(skips)} UNet skips")
        skips = tuple(s + r for s, r in zip(skips, down_block_additional_residuals))
    x = unet.mid_block(hidden_states=x, temb=emb, encoder_hidden_states=context, image_only_indicator=indicator)
    if mid_block_additional_residual is not None:
        x = x + mid_block_additional_residual
    for i, block in enumerate(unet.up_blocks):
        res = skips[-len(block.resnets):]
        skips = skips[: -len(block.resnets)]
        if i < len(unet.up_blocks) - 1 and forward_upsample_size:
            upsample_size = skips[-1].shape[2:]
        kwargs = dict(hidden_states=x, temb=emb, res_hidden_states_tuple=res, upsample_size=upsample_size,
                      image_only_indicator=indicator)
        if getattr(block, "has_cross_attention", False):
            kwargs["encoder_hidden_states"] = context
        x = block(**kwargs)
    x = unet.conv_out(unet.conv_act(unet.conv_norm_out(x)))
    return x.reshape(batch, frames, *x.shape[1:])


class ReVideoControlModel(ModelMixin, ConfigMixin):
    """ReVideo's control branch (see the module docstring). Construct with the SVD UNet's
    encoder settings (diffusers' defaults are SVD's) or with :meth:`from_unet`."""

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(self, in_channels: int = 8,
                 down_block_types: tuple[str, ...] = ("CrossAttnDownBlockSpatioTemporal",) * 3
                 + ("DownBlockSpatioTemporal",),
                 block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280), addition_time_embed_dim: int = 256,
                 projection_class_embeddings_input_dim: int = 768, layers_per_block: int = 2,
                 cross_attention_dim: int = 1024, transformer_layers_per_block: int = 1,
                 num_attention_heads: int | tuple[int, ...] = (5, 10, 20, 20), num_frames: int = 14,
                 motion_channels: int = 2, content_channels: int = 3, region_channels: int = 1,
                 conditioning_embedding_out_channels: tuple[int, ...] = (16, 32, 96, 256),
                 conditioning_scale: float = 1.0):
        super().__init__()
        n = len(down_block_types)
        heads = (num_attention_heads,) * n if isinstance(num_attention_heads, int) else tuple(num_attention_heads)
        if len(block_out_channels) != n or len(heads) != n:
            raise ValueError(f"block_out_channels {block_out_channels} and num_attention_heads {heads} need one "
                             f"entry per down block ({n})")
        c0, temb = block_out_channels[0], block_out_channels[0] * 4
        self.conv_in = nn.Conv2d(in_channels, c0, kernel_size=3, padding=1)
        self.time_proj = Timesteps(c0, True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(c0, temb)
        self.add_time_proj = Timesteps(addition_time_embed_dim, True, downscale_freq_shift=0)
        self.add_embedding = TimestepEmbedding(projection_class_embeddings_input_dim, temb)
        stems = dict(block_out_channels=tuple(conditioning_embedding_out_channels))
        self.motion_embedding = ControlNetConditioningEmbedding(c0, motion_channels, **stems)
        self.content_embedding = ControlNetConditioningEmbedding(c0, content_channels, **stems)
        self.fusion = SpatialAdaptiveFusion(c0, region_channels, **stems)
        self.down_blocks = nn.ModuleList()
        zero_convs = [self._zero_conv(c0)]
        out_ch = c0
        for i, kind in enumerate(down_block_types):
            in_ch, out_ch = out_ch, block_out_channels[i]
            last = i == n - 1
            self.down_blocks.append(get_down_block(
                kind, num_layers=layers_per_block, transformer_layers_per_block=transformer_layers_per_block,
                in_channels=in_ch, out_channels=out_ch, temb_channels=temb, add_downsample=not last,
                resnet_eps=1e-5, cross_attention_dim=cross_attention_dim, num_attention_heads=heads[i],
                resnet_act_fn="silu"))
            zero_convs += [self._zero_conv(out_ch) for _ in range(layers_per_block + (0 if last else 1))]
        self.controlnet_down_blocks = nn.ModuleList(zero_convs)
        self.mid_block = UNetMidBlockSpatioTemporal(
            block_out_channels[-1], temb_channels=temb, transformer_layers_per_block=transformer_layers_per_block,
            cross_attention_dim=cross_attention_dim, num_attention_heads=heads[-1])
        self.controlnet_mid_block = self._zero_conv(block_out_channels[-1])

    @staticmethod
    def _zero_conv(channels: int) -> nn.Conv2d:
        conv = nn.Conv2d(channels, channels, kernel_size=1)
        nn.init.zeros_(conv.weight)
        nn.init.zeros_(conv.bias)
        return conv

    @classmethod
    def from_unet(cls, unet: nn.Module, conditioning_embedding_out_channels: tuple[int, ...] = (16, 32, 96, 256),
                  copy_encoder: bool = True, **kwargs) -> ReVideoControlModel:
        """A control model shaped like ``unet``'s encoder; with ``copy_encoder`` its ``conv_in``,
        ``down_blocks`` and ``mid_block`` weights are copied (the release's ``init_from_unet``,
        which leaves the time embeddings to their own initialisation)."""
        c = unet.config
        model = cls(in_channels=c.in_channels, down_block_types=tuple(c.down_block_types),
                    block_out_channels=tuple(c.block_out_channels), addition_time_embed_dim=c.addition_time_embed_dim,
                    projection_class_embeddings_input_dim=c.projection_class_embeddings_input_dim,
                    layers_per_block=c.layers_per_block, cross_attention_dim=c.cross_attention_dim,
                    transformer_layers_per_block=c.transformer_layers_per_block,
                    num_attention_heads=c.num_attention_heads, num_frames=c.num_frames,
                    conditioning_embedding_out_channels=tuple(conditioning_embedding_out_channels), **kwargs)
        if copy_encoder:
            for name in ("conv_in", "down_blocks", "mid_block"):
                getattr(model, name).load_state_dict(getattr(unet, name).state_dict())
        return model

    @property
    def downscale(self) -> int:
        """Pixels per latent cell of the stems (2^(number of stride-2 convs))."""
        return 2 ** (len(self.config.conditioning_embedding_out_channels) - 1)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | float, encoder_hidden_states: torch.Tensor,
                added_time_ids: torch.Tensor, motion: torch.Tensor, content: torch.Tensor, region: torch.Tensor,
                conditioning_scale: float | None = None) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """Residuals for :func:`controlled_unet_forward`.

        sample [B, F, 8, h, w] (``c_in * x_t`` and the conditioning latents); timestep ``c_noise``
        (scalar or [B]); encoder_hidden_states [B, 1, D]; added_time_ids [B, 3]; motion [B, F, 2, H, W]
        (c_mot, px, channels dy, dx); content [B, F, 3, H, W] in [-1, 1] (-1 in the edit region);
        region [B, F, 1, H, W] (1 in the edit region); H = h * :attr:`downscale`.
        Returns (down residuals, one per UNet skip, [B*F, C_i, h_i, w_i]; mid residual).
        """
        batch, frames = sample.shape[:2]
        if motion.shape[-2:] != tuple(s * self.downscale for s in sample.shape[-2:]):
            raise ValueError(f"condition maps {tuple(motion.shape[-2:])} must be {self.downscale}x the latents "
                             f"{tuple(sample.shape[-2:])}")
        scale = self.config.conditioning_scale if conditioning_scale is None else conditioning_scale
        emb = embed_time(self, timestep, added_time_ids, batch, frames, sample.dtype)
        context = encoder_hidden_states.repeat_interleave(frames, dim=0,
                                                          output_size=encoder_hidden_states.shape[0] * frames)
        c_noise = torch.as_tensor(timestep, device=sample.device, dtype=sample.dtype).reshape(-1)
        c_noise = c_noise.expand(batch).repeat_interleave(frames)
        fused = self.fusion(self.motion_embedding(motion.flatten(0, 1).to(sample.dtype)),
                            self.content_embedding(content.flatten(0, 1).to(sample.dtype)),
                            region.flatten(0, 1).to(sample.dtype), c_noise)
        x = self.conv_in(sample.flatten(0, 1)) + fused
        indicator = torch.zeros(batch, frames, dtype=x.dtype, device=x.device)
        skips: tuple[torch.Tensor, ...] = (x,)
        for block in self.down_blocks:
            x, res = _run_down_block(block, x, emb, context, indicator)
            skips += res
        x = self.mid_block(hidden_states=x, temb=emb, encoder_hidden_states=context, image_only_indicator=indicator)
        down = tuple(conv(s) * scale for conv, s in zip(self.controlnet_down_blocks, skips))
        return down, self.controlnet_mid_block(x) * scale

