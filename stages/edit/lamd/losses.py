"""LaMD's training objectives as pure functions (MCD-VAE: L1 + LPIPS + beta KL + lambda GAN; DMG: L_simple).

Pixels are float [-1, 1]; videos [B, 3, L, H, W]; latents [B, d, h, w].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kl_divergence(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, I)) summed over the latent [d, h, w], averaged over the batch.

    Zero exactly when mean = 0 and logvar = 0 (sigma = 1); a scalar in nats.
    """
    per_element = 0.5 * (mean.float() ** 2 + logvar.float().exp() - 1.0 - logvar.float())
    return per_element.flatten(1).sum(1).mean()


def l1_loss(reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over every pixel, channel and frame (pixel units of [-1, 1])."""
    return (reconstruction.float() - target.float()).abs().mean()


def hinge_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """The critic's hinge loss: mean(relu(1 - real)) + mean(relu(1 + fake)), halved."""
    return 0.5 * (F.relu(1.0 - real_logits.float()).mean() + F.relu(1.0 + fake_logits.float()).mean())


def generator_adversarial_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """The autoencoder's adversarial term: -mean(critic logits of its reconstructions)."""
    return -fake_logits.float().mean()


def gan_weight(step: int, start_step: int, weight: float) -> float:
    """lambda_GAN at optimiser step ``step``: 0 during the warm-up (before ``start_step``), then ``weight``."""
    return weight if step >= start_step else 0.0


def frames_as_images(video: torch.Tensor) -> torch.Tensor:
    """[B, C, L, H, W] -> [B * L, C, H, W] (frame-wise losses such as LPIPS)."""
    b, c, t, h, w = video.shape
    return video.transpose(1, 2).reshape(b * t, c, h, w)


def epsilon_loss(predicted: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """DDPM's L_simple: mean squared error between the predicted and the true noise."""
    return F.mse_loss(predicted.float(), noise.float())
