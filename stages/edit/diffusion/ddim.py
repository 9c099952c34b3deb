"""Deterministic DDIM (eta = 0): sampling, inversion and classifier-free guidance, as pure functions.

The noise schedule (``alphas_cumprod``, ``final_alpha_cumprod``) and the timesteps come from a
diffusers ``DDIMScheduler`` built from the model's scheduler config; the step itself is
written out here so inversion is exactly the sampling step run the other way. Inversion follows
Tune-A-Video's release (``tuneavideo/util.py``): to go from level ``t - k`` up to ``t`` it
evaluates the noise at the target timestep ``t`` on the current latents.

Latents are any shape (videos are [B, C, F, h, w]); ``eps_fn(latents, t) -> eps`` of the same
shape. Only epsilon-prediction models (SD 1.x) are supported.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

EpsFn = Callable[[torch.Tensor, int], torch.Tensor]


def ddim_transfer(sample: torch.Tensor, eps: torch.Tensor, alpha_from: float | torch.Tensor,
                  alpha_to: float | torch.Tensor) -> torch.Tensor:
    """Move ``sample`` from noise level ``alpha_from`` to ``alpha_to`` (cumulative alphas) along ``eps``.

    x0 = (x - sqrt(1 - a_from) eps) / sqrt(a_from);  x' = sqrt(a_to) x0 + sqrt(1 - a_to) eps.
    Downward (a_to > a_from) it is a DDIM sampling step, upward an inversion step.
    """
    a_from = torch.as_tensor(alpha_from, dtype=torch.float32)
    a_to = torch.as_tensor(alpha_to, dtype=torch.float32)
    x0 = (sample.float() - (1 - a_from).sqrt() * eps.float()) / a_from.sqrt()
    return (a_to.sqrt() * x0 + (1 - a_to).sqrt() * eps.float()).to(sample.dtype)


def guided(eps_uncond: torch.Tensor, eps_cond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance: eps_u + scale * (eps_c - eps_u)."""
    return eps_uncond + scale * (eps_cond - eps_uncond)


def schedule(scheduler, num_steps: int) -> tuple[list[int], int]:
    """The DDIM timesteps (descending) for ``num_steps`` and the gap between two of them."""
    scheduler.set_timesteps(num_steps)
    gap = scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    return [int(t) for t in scheduler.timesteps], gap


def alpha_at(scheduler, t: int) -> torch.Tensor:
    """Cumulative alpha at timestep ``t``; ``final_alpha_cumprod`` below 0 (as DDIMScheduler.step)."""
    return scheduler.alphas_cumprod[t] if t >= 0 else scheduler.final_alpha_cumprod


@torch.no_grad()
def ddim_sample(eps_fn: EpsFn, latents: torch.Tensor, scheduler, num_steps: int,
                callback: Callable[[int, torch.Tensor], None] | None = None) -> torch.Tensor:
    """Denoise ``latents`` (at the noisiest level of the schedule) with ``num_steps`` DDIM steps."""
    timesteps, gap = schedule(scheduler, num_steps)
    x = latents
    for i, t in enumerate(timesteps):
        eps = eps_fn(x, t)
        x = ddim_transfer(x, eps, alpha_at(scheduler, t), alpha_at(scheduler, t - gap))
        if callback is not None:
            callback(i, x)
    return x


@torch.no_grad()
def ddim_invert(eps_fn: EpsFn, latents: torch.Tensor, scheduler, num_steps: int) -> torch.Tensor:
    """Map clean ``latents`` to the noisiest level of the schedule: the reverse of :func:`ddim_sample`."""
    timesteps, gap = schedule(scheduler, num_steps)
    x = latents
    for t in reversed(timesteps):
        eps = eps_fn(x, t)
        x = ddim_transfer(x, eps, alpha_at(scheduler, t - gap), alpha_at(scheduler, t))
    return x
