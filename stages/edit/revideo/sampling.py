"""ReVideo's sampler: EDM Euler with v-prediction, Karras sigmas and per-frame linear guidance.

As the release's sgm configuration (``configs/inference/config_test.yaml``): ``EDMDiscretization``
(rho 7, sigma_max 700, sigma_min 0.002, a final 0 appended), ``VScalingWithEDMcNoise``
(``denoiser_scaling.py`` L51-60), ``EulerEDMSampler`` without churn (the initial noise is scaled
by sqrt(1 + sigma_max^2)), and ``LinearPredictionGuider`` (``guiders.py`` L60-87): the guidance
scale grows linearly over the frames from ``min_scale`` (1: frame 0 follows the conditional
prediction) to ``max_scale`` (4), applied to the denoised predictions. This is diffusers'
``EulerDiscreteScheduler`` with ``prediction_type="v_prediction"``, ``use_karras_sigmas=True``
and continuous timesteps ``c_noise = 0.25 ln sigma`` (tested step for step).

Latents are [B, F, C, h, w] (SVD's layout). Sigmas are float64 Python numbers, computed in
float32 as sgm does.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

# denoise(x [B, F, C, h, w] float32, sigma) -> the guided denoised prediction, same shape
DenoiseFn = Callable[[torch.Tensor, float], torch.Tensor]


def karras_sigmas(num_steps: int, sigma_min: float = 0.002, sigma_max: float = 700.0,
                  rho: float = 7.0) -> list[float]:
    """EDM/Karras noise levels, descending, with a final 0: ``num_steps + 1`` floats.

    sigma_i = (max^(1/rho) + i/(n-1) (min^(1/rho) - max^(1/rho)))^rho, computed in float32 as
    sgm's ``EDMDiscretization`` (n = 1 gives [sigma_max, 0]).
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    ramp = torch.linspace(0, 1, num_steps)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho
    return [float(s) for s in sigmas] + [0.0]


def edm_scalings(sigma: float) -> tuple[float, float, float, float]:
    """(c_skip, c_out, c_in, c_noise) of v-prediction with EDM's c_noise at noise level ``sigma``.

    c_skip = 1/(s^2+1), c_out = -s/sqrt(s^2+1), c_in = 1/sqrt(s^2+1), c_noise = 0.25 ln s.
    """
    s2 = sigma * sigma + 1.0
    return 1.0 / s2, -sigma / math.sqrt(s2), 1.0 / math.sqrt(s2), 0.25 * math.log(sigma)


def denoised_from_v(x: torch.Tensor, v: torch.Tensor, sigma: float) -> torch.Tensor:
    """The denoised prediction ``c_out * v + c_skip * x`` (x, v of one shape; float32 out)."""
    c_skip, c_out, _, _ = edm_scalings(sigma)
    return v.float() * c_out + x.float() * c_skip


def euler_step(x: torch.Tensor, denoised: torch.Tensor, sigma: float, sigma_next: float) -> torch.Tensor:
    """One Euler step of the probability-flow ODE: x + (sigma_next - sigma) (x - denoised) / sigma."""
    return x + (sigma_next - sigma) * (x - denoised) / sigma


def frame_guidance(num_frames: int, min_scale: float = 1.0, max_scale: float = 4.0) -> torch.Tensor:
    """Per-frame guidance scales, float32 [num_frames]: linspace(min_scale, max_scale)."""
    return torch.linspace(min_scale, max_scale, num_frames)


def guide(uncond: torch.Tensor, cond: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """uncond + scale_f (cond - uncond) per frame; uncond/cond [B, F, ...], scales [F]."""
    scales = scales.to(uncond.device, uncond.dtype).view(1, -1, *([1] * (uncond.ndim - 2)))
    return uncond + scales * (cond - uncond)


@torch.no_grad()
def sample_euler(denoise: DenoiseFn, noise: torch.Tensor, sigmas: list[float],
                 callback: Callable[[int, torch.Tensor], None] | None = None) -> torch.Tensor:
    """Integrate from unit ``noise`` [B, F, C, h, w] down ``sigmas`` (descending, ending at 0).

    The start is ``noise * sqrt(1 + sigmas[0]^2)`` (sgm's ``prepare_sampling_loop``); each step
    calls ``denoise(x, sigma)`` once. Returns float32 latents.
    """
    x = noise.float() * math.sqrt(1.0 + sigmas[0] ** 2)
    for i in range(len(sigmas) - 1):
        x = euler_step(x, denoise(x, sigmas[i]).float(), sigmas[i], sigmas[i + 1])
        if callback is not None:
            callback(i, x)
    return x
