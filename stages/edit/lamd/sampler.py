"""Sample motion latents with LaMD's DMG over a K-step subsequence of its 1000 training steps."""

from __future__ import annotations

import torch

from stages.edit.lamd.dmg import MotionGenerator


@torch.no_grad()
def sample_motion(model: MotionGenerator, tokens: torch.Tensor, num_steps: int, generator: torch.Generator,
                  eta: float = 1.0, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Motion latents [B, d, h, w] (float32) for conditioning ``tokens`` [B, N, D].

    Starts from N(0, I) noise and runs ``num_steps`` DDIM steps (``eta`` 1: the variance of
    ancestral DDPM on the respaced schedule; 0: deterministic DDIM). Every random draw comes
    from ``generator`` (a CPU generator), so a seed fixes the result on any device. ``size``:
    (h, w), default the DMG's ``sample_size`` square.
    """
    cfg = model.config
    h, w = size or (cfg.sample_size, cfg.sample_size)
    scheduler = model.sampling_scheduler()
    scheduler.set_timesteps(num_steps)
    shape = (tokens.shape[0], cfg.latent_channels, h, w)
    z = torch.randn(shape, generator=generator, dtype=torch.float32).to(tokens.device) * scheduler.init_noise_sigma
    dtype = next(model.parameters()).dtype
    for t in scheduler.timesteps:
        eps = model.denoise(z.to(dtype), t.to(tokens.device), tokens.to(dtype)).float()
        noise = torch.randn(shape, generator=generator, dtype=torch.float32).to(z.device) if eta > 0 else None
        z = scheduler.step(eps, t, z, eta=eta, variance_noise=noise).prev_sample
    return z
