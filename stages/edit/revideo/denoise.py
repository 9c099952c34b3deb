"""ReVideo's denoising loop: the control module and the UNet inside the EDM Euler sampler.

Each step (``sample_single_region.py`` L230-250 with sgm's ``Denoiser`` and
``LinearPredictionGuider``): the UNet input is ``cat(c_in * x_t, conditioning latents)`` (8 ch);
the control module turns it, ``c_noise``, the image embedding, the added ids and the conditions
(motion, content, region) into residuals; the UNet's v-prediction becomes the denoised latent; the
unconditional pass (zero image embedding, zero conditioning latents, the same control inputs) and
the conditional one are blended per frame. The stage and ``bench/revideo.py`` share this code.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from stages.edit.revideo import sampling
from stages.edit.revideo.control import controlled_unet_forward


def predict_v(unet: nn.Module, control: nn.Module, sample: torch.Tensor, c_noise: float, image_embeds: torch.Tensor,
              added_ids: torch.Tensor, motion: torch.Tensor, content: torch.Tensor, region: torch.Tensor,
              conditioning_scale: float = 1.0) -> torch.Tensor:
    """The UNet's v-prediction [B, F, C, h, w] (float32) with the control residuals added.

    sample [B, F, 2C, h, w] in the models' dtype; image_embeds [B, 1, D]; added_ids [B, 3];
    motion/content/region [B, F, 2|3|1, H, W].
    """
    t = torch.tensor([c_noise], dtype=torch.float32, device=sample.device)
    down, mid = control(sample, t, image_embeds, added_ids, motion, content, region, conditioning_scale)
    return controlled_unet_forward(unet, sample, t, image_embeds, added_ids, down, mid).float()


@torch.no_grad()
def sample_revideo(unet: nn.Module, control: nn.Module, noise: torch.Tensor, cond_latents: torch.Tensor,
                   image_embeds: torch.Tensor, added_ids: torch.Tensor, motion: torch.Tensor, content: torch.Tensor,
                   region: torch.Tensor, sigmas: list[float], scales: torch.Tensor, *, cfg_batch: bool = True,
                   conditioning_scale: float = 1.0,
                   callback: Callable[[int, torch.Tensor], None] | None = None) -> torch.Tensor:
    """Denoised latents [1, F, C, h, w] (float32, scaled as the VAE expects).

    noise [1, F, C, h, w] unit Gaussian; cond_latents [1, F, C, h, w] (unscaled VAE latents of the
    noised reference frame, repeated); image_embeds [1, 1, D]; added_ids [1, 3]; motion
    [1, F, 2, H, W] (px, dy/dx); content [1, F, 3, H, W] in [-1, 1]; region [1, F, 1, H, W];
    sigmas from :func:`sampling.karras_sigmas`; scales [F] (:func:`sampling.frame_guidance`).
    Conditions are in the models' dtype on their device. ``cfg_batch`` runs both passes as one
    batch of 2 (False: one after the other, half the activation memory, the same result).
    """
    zero_latents, zero_embeds = torch.zeros_like(cond_latents), torch.zeros_like(image_embeds)
    dtype = cond_latents.dtype

    def denoise(x: torch.Tensor, sigma: float) -> torch.Tensor:
        _, _, c_in, c_noise = sampling.edm_scalings(sigma)
        scaled = (x * c_in).to(dtype)
        inp_u, inp_c = torch.cat([scaled, zero_latents], dim=2), torch.cat([scaled, cond_latents], dim=2)
        if cfg_batch:
            conds = (c.repeat(2, *([1] * (c.ndim - 1))) for c in (added_ids, motion, content, region))
            v = predict_v(unet, control, torch.cat([inp_u, inp_c]), c_noise, torch.cat([zero_embeds, image_embeds]),
                          *conds, conditioning_scale)
            v_u, v_c = v.chunk(2)
        else:
            v_u = predict_v(unet, control, inp_u, c_noise, zero_embeds, added_ids, motion, content, region,
                            conditioning_scale)
            v_c = predict_v(unet, control, inp_c, c_noise, image_embeds, added_ids, motion, content, region,
                            conditioning_scale)
        return sampling.guide(sampling.denoised_from_v(x, v_u, sigma), sampling.denoised_from_v(x, v_c, sigma),
                              scales)

    return sampling.sample_euler(denoise, noise, sigmas, callback)
