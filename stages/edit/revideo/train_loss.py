"""ReVideo's training objective: SVD's EDM denoising loss with v-prediction, through the control module.

For clean latents x (VAE latents of the target clip, scaled by the VAE's ``scaling_factor``):

    sigma ~ exp(N(p_mean, p_std^2))                       per sample
    x_noisy = x + sigma * n,  n ~ N(0, I)
    D(x_noisy) = c_skip x_noisy + c_out F(c_in x_noisy ++ cond, c_noise; control residuals)
    loss = mean( w(sigma) * (D - x)^2 ),  w(sigma) = (sigma^2 + 1) / sigma^2

with v-prediction scalings c_skip = 1/(s^2+1), c_out = -s/sqrt(s^2+1), c_in = 1/sqrt(s^2+1),
c_noise = 0.25 ln s (sgm's ``VScalingWithEDMcNoise``, the release's denoiser; see
:func:`stages.edit.revideo.sampling.edm_scalings`). The weighting is sgm's ``VWeighting``
(= ``EDMWeighting`` with sigma_data = 1), which makes the loss the plain MSE of F against the
v-target. The noise-level distribution is not published by ReVideo: the defaults (p_mean 0.7,
p_std 1.6) are the log-normal that SVD fine-tuning commonly uses (shifted towards more noise than
EDM's image default -1.2 / 1.2, as the SVD paper does for video); both are config values.

Conditioning as at inference: the CLIP image embedding of the clean reference frame (frame 0),
and the VAE posterior mode of ``ref + cond_aug * noise`` (unscaled) repeated over frames; with
probability ``condition_dropout`` a sample gets both zeroed (the unconditional branch that
classifier-free guidance uses at inference).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from stages.edit.revideo.control import controlled_unet_forward


def sample_sigmas(batch: int, p_mean: float, p_std: float, generator: torch.Generator,
                  device: torch.device) -> torch.Tensor:
    """Noise levels float32 [batch]: exp(p_mean + p_std * N(0, 1))."""
    z = torch.randn(batch, generator=generator, device=device)
    return torch.exp(p_mean + p_std * z)


def v_weighting(sigma: torch.Tensor) -> torch.Tensor:
    """sgm's ``VWeighting``: (sigma^2 + 1) / sigma^2, same shape as ``sigma``."""
    return (sigma ** 2 + 1.0) / sigma ** 2


def v_scalings(sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(c_skip, c_out, c_in, c_noise) tensors of ``sigma`` [B] (v-prediction, EDM c_noise)."""
    s2 = sigma ** 2 + 1.0
    return 1.0 / s2, -sigma / s2.sqrt(), 1.0 / s2.sqrt(), 0.25 * sigma.log()


def _bcast(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.view(-1, *([1] * (like.ndim - 1))).to(like.dtype)


def denoising_loss(unet: torch.nn.Module, control: torch.nn.Module, latents: torch.Tensor,
                   cond_latents: torch.Tensor, image_embeds: torch.Tensor, added_time_ids: torch.Tensor,
                   c_mot: torch.Tensor, content: torch.Tensor, region: torch.Tensor, sigma: torch.Tensor,
                   noise: torch.Tensor) -> torch.Tensor:
    """The weighted EDM loss (scalar, float32) of one batch.

    latents [B, F, C, h, w] (scaled); cond_latents [B, F, C, h, w] (unscaled); image_embeds
    [B, 1, D]; added_time_ids [B, 3]; c_mot [B, F, 2, H, W] px (dy, dx); content [B, F, 3, H, W]
    in [-1, 1]; region [B, F, 1, H, W]; sigma [B]; noise like ``latents``.
    """
    x = latents.float()
    c_skip, c_out, c_in, c_noise = v_scalings(sigma.float())
    noisy = x + _bcast(sigma, x) * noise.float()
    sample = torch.cat([_bcast(c_in, x) * noisy, cond_latents.to(x.dtype)], dim=2)
    down, mid = control(sample, c_noise, image_embeds, added_time_ids, c_mot, content, region)
    v = controlled_unet_forward(unet, sample, c_noise, image_embeds, added_time_ids, down, mid)
    denoised = _bcast(c_skip, x) * noisy + _bcast(c_out, x) * v.float()
    per_sample = F.mse_loss(denoised, x, reduction="none").flatten(1).mean(1)
    return (v_weighting(sigma.float()) * per_sample).mean()


@torch.no_grad()
def clip_image_embeds(image_encoder: torch.nn.Module, feature_extractor, images: torch.Tensor) -> torch.Tensor:
    """CLIP image embeddings [B, 1, D] of reference frames float [B, 3, H, W] in [0, 1]
    (antialiased bicubic resize to the processor's crop size, its mean/std; as the method's stage)."""
    crop = feature_extractor.crop_size
    x = F.interpolate(images.float(), size=(int(crop["height"]), int(crop["width"])), mode="bicubic",
                      align_corners=False, antialias=True).clamp(0, 1)
    mean = torch.tensor(feature_extractor.image_mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(feature_extractor.image_std, device=x.device).view(1, 3, 1, 1)
    dtype = next(image_encoder.parameters()).dtype
    return image_encoder(pixel_values=((x - mean) / std).to(dtype)).image_embeds[:, None].float()


@torch.no_grad()
def encode_video_latents(vae: torch.nn.Module, video: torch.Tensor, generator: torch.Generator,
                         chunk: int = 14) -> torch.Tensor:
    """Scaled VAE latents [B, F, C, h, w] (a posterior sample) of pixels [B, F, 3, H, W] in [-1, 1]."""
    b, f = video.shape[:2]
    dtype = next(vae.parameters()).dtype
    frames = video.flatten(0, 1).to(dtype)
    parts = []
    for start in range(0, len(frames), chunk):
        dist = vae.encode(frames[start:start + chunk]).latent_dist
        eps = torch.randn(dist.mean.shape, generator=generator, device=dist.mean.device, dtype=dist.mean.dtype)
        parts.append(dist.mean + dist.std * eps)
    z = torch.cat(parts).float() * vae.config.scaling_factor
    return z.view(b, f, *z.shape[1:])


@torch.no_grad()
def encode_condition_latents(vae: torch.nn.Module, ref: torch.Tensor, cond_aug: float, num_frames: int,
                             generator: torch.Generator) -> torch.Tensor:
    """SVD's conditioning latents [B, F, C, h, w]: the posterior mode of ``ref + cond_aug * noise``
    (ref [B, 3, H, W] in [-1, 1]), unscaled, repeated over ``num_frames``."""
    noisy = ref.float() + cond_aug * torch.randn(ref.shape, generator=generator, device=ref.device)
    mode = vae.encode(noisy.to(next(vae.parameters()).dtype)).latent_dist.mode().float()
    return mode[:, None].expand(-1, num_frames, -1, -1, -1).contiguous()
