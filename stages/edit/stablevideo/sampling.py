"""DDIM with a ControlNet: the guided noise prediction, sampling from noise and SDEdit from an image.

Latents are [1, C, h, w] float32; models run in their own dtype. The DDIM step itself is
:func:`stages.edit.diffusion.ddim.ddim_transfer` (eta 0).

SDEdit follows diffusers' img2img convention: for ``steps`` and strength ``s`` it runs the last
``int(steps * s)`` timesteps of the schedule, after noising the clean latents to the first of
them (20 steps, s 0.9: noise to t=851, denoise 851 -> 1, 18 steps). The release (ldm's
``stochastic_encode`` + ``decode``) noises one DDIM level higher (t=901) than the one it starts
denoising at. Strength 1 starts from the noise itself (as diffusers' inpainting pipelines at
full strength), so it equals sampling from that noise; strength 0 runs no step.
"""

from __future__ import annotations

from typing import Any

import torch

from stages.edit.diffusion.ddim import EpsFn, alpha_at, ddim_transfer, guided, schedule


def controlled_eps(unet: Any, controlnet: Any | None, hint: torch.Tensor | None, text: torch.Tensor,
                   text_uncond: torch.Tensor, guidance_scale: float, conditioning_scale: float = 1.0) -> EpsFn:
    """``eps(latents [1, C, h, w], t) -> [1, C, h, w]`` float32 with classifier-free guidance.

    ``hint`` [1, 3, H, W] in [0, 1] (H, W = latent size x the VAE factor) goes to ``controlnet``,
    whose residuals are added to the UNet's skip connections on both guidance halves (as the
    release: the unconditional pass sees the hint too); ``controlnet=None`` is the plain UNet.
    ``text``/``text_uncond`` [1, L, D]: prompt and negative-prompt embeddings.
    """
    dtype = next(unet.parameters()).dtype
    use_cfg = guidance_scale != 1.0
    emb = torch.cat([text_uncond, text]) if use_cfg else text
    emb = emb.to(dtype)
    cond = None
    if controlnet is not None:
        if hint is None:
            raise ValueError("a ControlNet needs a hint")
        cond = hint.to(emb.device, dtype)
        cond = torch.cat([cond, cond]) if use_cfg else cond

    def eps(latents: torch.Tensor, t: int) -> torch.Tensor:
        x = latents.to(emb.device, dtype)
        x = torch.cat([x, x]) if use_cfg else x
        extra = {}
        if controlnet is not None:
            down, mid = controlnet(x, t, encoder_hidden_states=emb, controlnet_cond=cond,
                                   conditioning_scale=conditioning_scale, return_dict=False)
            extra = {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}
        out = unet(x, t, encoder_hidden_states=emb, **extra).sample.float()
        if not use_cfg:
            return out
        uncond, cond_out = out.chunk(2)
        return guided(uncond, cond_out, guidance_scale)

    return eps


def sdedit_timesteps(scheduler: Any, steps: int, strength: float) -> tuple[list[int], int]:
    """The timesteps SDEdit runs (descending; the last ``int(steps * strength)`` of the schedule)
    and the gap between two of them."""
    timesteps, gap = schedule(scheduler, steps)
    count = min(int(steps * strength), steps)
    return timesteps[len(timesteps) - count:], gap


@torch.no_grad()
def denoise(eps_fn: EpsFn, latents: torch.Tensor, scheduler: Any, timesteps: list[int], gap: int) -> torch.Tensor:
    """Run DDIM (eta 0) over ``timesteps`` from ``latents`` at the level of ``timesteps[0]``."""
    x = latents.float()
    for t in timesteps:
        x = ddim_transfer(x, eps_fn(x, t), alpha_at(scheduler, t), alpha_at(scheduler, t - gap))
    return x


@torch.no_grad()
def sample(eps_fn: EpsFn, noise: torch.Tensor, scheduler: Any, steps: int) -> torch.Tensor:
    """Clean latents from ``noise`` [1, C, h, w] by ``steps`` DDIM steps."""
    timesteps, gap = schedule(scheduler, steps)
    return denoise(eps_fn, noise, scheduler, timesteps, gap)


@torch.no_grad()
def sdedit(eps_fn: EpsFn, clean: torch.Tensor, noise: torch.Tensor, scheduler: Any, steps: int,
           strength: float) -> torch.Tensor:
    """Clean latents [1, C, h, w] -> noised to strength ``strength`` -> denoised (see the module doc)."""
    timesteps, gap = sdedit_timesteps(scheduler, steps, strength)
    if not timesteps:
        return clean.float()
    if len(timesteps) == steps:  # full strength: the noise itself, as sampling
        start = noise.float()
    else:
        a = torch.as_tensor(alpha_at(scheduler, timesteps[0]), dtype=torch.float32)
        start = a.sqrt() * clean.float() + (1 - a).sqrt() * noise.float().to(clean.device)
    return denoise(eps_fn, start, scheduler, timesteps, gap)
