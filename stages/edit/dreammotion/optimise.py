"""DreamMotion's optimisation of a video's latents against a frozen text-to-video UNet.

Per iteration (:func:`iteration_losses`), with one timestep ``t ~ U[t_min, t_max)`` and one noise
``eps`` drawn by :func:`draw` and shared by both videos and all three terms:

1. noise the trainable latents ``z`` and the source latents ``z_src`` alike: ``z_t``, ``z_src_t``;
2. pass ``z_t`` with the target prompt through the UNet with gradients on (only when S-SSM or
   T-SSM has a weight), recording the spatial keys; pass ``z_src_t`` with the source prompt
   without gradients, recording its keys; pass each with the empty prompt without gradients:
   four UNet passes of one video each (so equal videos get bit-equal predictions; rows of one
   batch need not), back-propagation through one (up to the hooked layers);
3. V-DDS: ``g = CFG(z_t, y) - CFG(z_src_t, y_src)``, masked per frame, as the DDS surrogate;
   S-SSM and T-SSM on the recorded keys (``losses.py``);
4. ``loss_scale * (L_VDDS + lambda_s L_S + lambda_t L_T)``; the optimiser updates ``z`` only
   (the UNet is frozen; its parameters never get a gradient).

:func:`optimise_latents` runs the loop and returns the latents and each iteration's terms;
``calibrate=True`` also measures each weighted term's gradient norm at the first iteration
(:func:`term_gradient_norms`), the evidence ``lambda_s``/``lambda_t`` are set from.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from stages.edit.diffusion.precision import MixedPrecision, optimizer_step
from stages.edit.dreammotion.config import DreamMotionConfig
from stages.edit.dreammotion.key_hooks import KeyRecorder
from stages.edit.dreammotion.losses import guided, noisy_latents, s_ssm_loss, t_ssm_loss, vdds_direction, vdds_loss

log = logging.getLogger(__name__)
TERMS = ("vdds", "s_ssm", "t_ssm")


@dataclass(frozen=True)
class PromptEmbeddings:
    """Text embeddings [1, L, D] of the empty prompt, the target prompt and the source prompt."""

    uncond: torch.Tensor
    target: torch.Tensor
    source: torch.Tensor


@dataclass
class OptimisationResult:
    latents: torch.Tensor  # float32 [1, C, F, h, w], detached
    history: list[dict[str, float]] = field(default_factory=list)  # per iteration: t and each term's value
    gradient_norms: dict[str, float] | None = None  # calibrate: each weighted term's gradient norm at iteration 0


def draw(generator: torch.Generator, shape: tuple[int, ...], t_min: int, t_max: int) -> tuple[int, torch.Tensor]:
    """One iteration's random draws, in this order: timestep ``t`` in [t_min, t_max) and noise float32 ``shape``."""
    t = int(torch.randint(t_min, t_max, (1,), generator=generator))
    return t, torch.randn(shape, generator=generator, dtype=torch.float32)


def unet_eps(unet: torch.nn.Module, latents: torch.Tensor, t: int, embeddings: torch.Tensor,
             precision: MixedPrecision) -> torch.Tensor:
    """Noise prediction float32 [B, C, F, h, w] of a UNet3D for latents [B, C, F, h, w] and embeddings [B, L, D]."""
    dtype = next(unet.parameters()).dtype
    timesteps = torch.full((latents.shape[0],), t, device=latents.device, dtype=torch.long)
    with precision.autocast():
        out = unet(latents.to(dtype), timesteps, encoder_hidden_states=embeddings.to(dtype)).sample
    return out.float()


def iteration_losses(unet: torch.nn.Module, recorder: KeyRecorder, latents: torch.Tensor, source: torch.Tensor,
                     t: int, noise: torch.Tensor, alpha_bar: float, prompts: PromptEmbeddings,
                     mask: torch.Tensor | None, config: DreamMotionConfig,
                     precision: MixedPrecision) -> dict[str, torch.Tensor]:
    """The three terms (float32 scalars, unweighted) and ``total`` (weighted, scaled) of one iteration.

    latents: trainable float32 [1, C, F, h, w]; source: float32 [1, C, F, h, w]; noise: same
    shape, shared by both videos; mask: [F, h, w] in {0, 1} or None (whole frame).
    """
    frames = latents.shape[2]
    z_t = noisy_latents(latents, noise, alpha_bar)
    z_src_t = noisy_latents(source, noise, alpha_bar)
    structure = config.lambda_s > 0 or config.lambda_t > 0
    with torch.set_grad_enabled(structure and torch.is_grad_enabled()), recorder.capture(structure) as keys:
        eps_target = unet_eps(unet, z_t, t, prompts.target, precision)
    with torch.no_grad():
        with recorder.capture(structure) as source_keys:
            eps_source = unet_eps(unet, z_src_t, t, prompts.source, precision)
        # one video per call: rows of one batch may differ in the last bit, the two videos' passes must not
        eps_target_uncond = unet_eps(unet, z_t.detach(), t, prompts.uncond, precision)
        eps_source_uncond = unet_eps(unet, z_src_t, t, prompts.uncond, precision)
    direction = vdds_direction(guided(eps_target_uncond, eps_target.detach(), config.guidance_scale),
                               guided(eps_source_uncond, eps_source, config.guidance_scale), mask)
    terms = {"vdds": vdds_loss(latents, direction)}
    zero = latents.new_zeros(())
    if structure:
        target_k = recorder.per_video(keys, frames)[0]
        source_k = recorder.per_video(source_keys, frames)[0]
        terms["s_ssm"] = s_ssm_loss(target_k, source_k) if config.lambda_s > 0 else zero
        terms["t_ssm"] = t_ssm_loss(target_k, source_k) if config.lambda_t > 0 else zero
    else:
        terms["s_ssm"] = terms["t_ssm"] = zero
    terms["total"] = config.loss_scale * (terms["vdds"] + config.lambda_s * terms["s_ssm"]
                                          + config.lambda_t * terms["t_ssm"])
    return terms


def term_gradient_norms(latents: torch.Tensor, terms: dict[str, torch.Tensor],
                        config: DreamMotionConfig) -> dict[str, float]:
    """L2 norm of the gradient in ``latents`` of each weighted, scaled term (``loss_scale * weight * term``)."""
    weights = {"vdds": 1.0, "s_ssm": config.lambda_s, "t_ssm": config.lambda_t}
    norms = {}
    for name in TERMS:
        term = terms[name] * (config.loss_scale * weights[name])
        if not term.requires_grad:
            norms[name] = 0.0
            continue
        (grad,) = torch.autograd.grad(term, latents, retain_graph=True, allow_unused=True)
        norms[name] = 0.0 if grad is None else float(grad.norm())
    return norms


def make_optimizer(params: list[torch.Tensor], config: DreamMotionConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.learning_rate)
    return torch.optim.SGD(params, lr=config.learning_rate)


def optimise_latents(unet: torch.nn.Module, recorder: KeyRecorder, source: torch.Tensor, prompts: PromptEmbeddings,
                     alphas_cumprod: torch.Tensor, mask: torch.Tensor | None, config: DreamMotionConfig,
                     generator: torch.Generator, precision: MixedPrecision | None = None,
                     calibrate: bool = False, init: torch.Tensor | None = None) -> OptimisationResult:
    """Optimise latents initialised from ``source`` (float32 [1, C, F, h, w]) for ``config.iterations`` steps.

    ``init``: start from these latents instead of the source's (same shape).
    Draws come from ``generator`` (CPU), so a seed fixes the run. ``alphas_cumprod``: the
    scheduler's cumulative alphas [num_train_timesteps].
    """
    precision = precision or MixedPrecision(source.device.type, torch.float32)
    source = source.detach().float()
    start = source if init is None else init.detach().float()
    if start.shape != source.shape:
        raise ValueError(f"init latents {tuple(start.shape)} differ from the source's {tuple(source.shape)}")
    latents = start.clone().requires_grad_(True)
    optimizer = make_optimizer([latents], config)
    scaler = precision.scaler()
    result = OptimisationResult(latents=source)
    skipped = 0
    for i in range(config.iterations):
        t, noise = draw(generator, tuple(source.shape), config.t_min, config.t_max)
        terms = iteration_losses(unet, recorder, latents, source, t, noise.to(source.device),
                                 float(alphas_cumprod[t]), prompts, mask, config, precision)
        if calibrate and i == 0:
            result.gradient_norms = term_gradient_norms(latents, terms, config)
            log.info("dreammotion calibration (t=%d): gradient norms %s", t,
                     ", ".join(f"{k} {v:.4g}" for k, v in result.gradient_norms.items()))
        skipped += not optimizer_step(terms["total"], [latents], optimizer, scaler)
        result.history.append({"t": float(t), **{k: float(v.detach()) for k, v in terms.items()}})
    if skipped:
        log.info("dreammotion: %d of %d steps skipped on gradient overflow", skipped, config.iterations)
    result.latents = latents.detach()
    return result
