"""DreamMotion's three objectives as pure functions: V-DDS, S-SSM and T-SSM.

Layouts: latent videos are float [B, C, F, h, w] (UNet3D layout); attention keys of one
spatial self-attention layer are [F, HW, D] (one video: its frames folded into the batch,
``HW`` tokens of ``D`` channels each). All losses are float32 scalars.

* V-DDS (video delta denoising score): the difference of the classifier-free-guided noise
  predictions of the target video for the target prompt and of the source video for the source
  prompt, at one shared timestep and noise, masked per frame. Its loss is the surrogate
  ``sum(stopgrad(g) * z) / (h * w)`` whose gradient with respect to ``z`` is ``g / (h * w)``
  (delta denoising score, the DDS recipe): the value itself carries no meaning, the gradient does.
* S-SSM: per frame, the cosine self-similarity of a layer's keys ``[HW, HW]`` of the target
  must match the source's (appearance may change, spatial structure not).
* T-SSM: per layer, the keys averaged over space ``[F, D]``, their frame-by-frame cosine
  similarity ``[F, F]`` of the target must match the source's (motion is kept).

Squared norms are taken as means over entries (and over frames and layers), so a weight does
not depend on the resolution, the frame count or how many layers are hooked.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def noisy_latents(latents: torch.Tensor, noise: torch.Tensor, alpha_bar: float | torch.Tensor) -> torch.Tensor:
    """Forward diffusion ``sqrt(a) z + sqrt(1 - a) eps`` of latents [B, C, F, h, w] at cumulative alpha ``a``."""
    alpha_bar = torch.as_tensor(alpha_bar, dtype=torch.float32, device=latents.device)
    return alpha_bar.sqrt() * latents + (1.0 - alpha_bar).sqrt() * noise


def guided(uncond: torch.Tensor, cond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance ``uncond + scale * (cond - uncond)`` (any shape; ``scale`` 1 = cond)."""
    return uncond + scale * (cond - uncond)


def vdds_direction(target_eps: torch.Tensor, source_eps: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The masked V-DDS direction ``g = (eps_target - eps_source) * m``, float32 [B, C, F, h, w].

    ``target_eps``/``source_eps``: guided noise predictions [B, C, F, h, w]; ``mask``: [F, h, w]
    (or anything broadcastable to [B, 1, F, h, w]) in {0, 1} on the latent grid, None = everywhere.
    Detached: the UNet's Jacobian is never back-propagated for this term.
    """
    g = (target_eps.float() - source_eps.float()).detach()
    if mask is not None:
        m = mask.to(g.device, torch.float32)
        if m.ndim == 3:
            m = m[None, None]
        g = g * m
    return g


def vdds_loss(latents: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """Surrogate ``sum(direction * latents) / (h * w)`` whose gradient in ``latents`` is ``direction / (h*w)``.

    latents [B, C, F, h, w] (the trainable video); direction: :func:`vdds_direction`, same shape.
    """
    h, w = latents.shape[-2:]
    return (direction.detach().float() * latents.float()).sum() / (h * w)


def cosine_similarity_matrix(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Pairwise cosine similarity of the rows of x [..., N, D]: float32 [..., N, N] in [-1, 1]."""
    x = F.normalize(x.float(), dim=-1, eps=eps)
    return x @ x.transpose(-1, -2)


def spatial_self_similarity(keys: torch.Tensor) -> torch.Tensor:
    """Per frame cosine self-similarity of keys [F, HW, D]: [F, HW, HW]."""
    return cosine_similarity_matrix(keys)


def temporal_self_similarity(keys: torch.Tensor) -> torch.Tensor:
    """Frame-by-frame cosine similarity of spatially averaged keys [F, HW, D]: [F, F]."""
    return cosine_similarity_matrix(keys.float().mean(dim=1))


def s_ssm_loss(target_keys: Sequence[torch.Tensor], source_keys: Sequence[torch.Tensor]) -> torch.Tensor:
    """S-SSM: mean over layers of ``mean_f mean_ij (S_f(target) - S_f(source))_ij^2``.

    target_keys, source_keys: one tensor per hooked layer, [F, HW, D] each (same layers, same
    order); the source's are treated as constants. Invariant to scaling either video's keys.
    """
    _check_pairs(target_keys, source_keys)
    terms = [(spatial_self_similarity(t) - spatial_self_similarity(s.detach())).pow(2).mean()
             for t, s in zip(target_keys, source_keys)]
    return torch.stack(terms).mean()


def t_ssm_loss(target_keys: Sequence[torch.Tensor], source_keys: Sequence[torch.Tensor]) -> torch.Tensor:
    """T-SSM: mean over layers of ``mean_ij (T(target) - T(source))_ij^2`` with T the [F, F] frame
    similarity of spatially averaged keys. Unchanged when both videos' frames are permuted alike."""
    _check_pairs(target_keys, source_keys)
    terms = [(temporal_self_similarity(t) - temporal_self_similarity(s.detach())).pow(2).mean()
             for t, s in zip(target_keys, source_keys)]
    return torch.stack(terms).mean()


def _check_pairs(target_keys: Sequence[torch.Tensor], source_keys: Sequence[torch.Tensor]) -> None:
    if not target_keys or len(target_keys) != len(source_keys):
        raise ValueError(f"need the keys of the same layers for both videos, got {len(target_keys)} target "
                         f"and {len(source_keys)} source tensors")
    for t, s in zip(target_keys, source_keys):
        if t.ndim != 3 or t.shape != s.shape:
            raise ValueError(f"keys must be [F, HW, D] of equal shapes, got {tuple(t.shape)} and {tuple(s.shape)}")
