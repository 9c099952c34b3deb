"""LaMD's two training objectives as plain PyTorch (Ray Train runs them in :mod:`.train_task`).

Phase ``vae``: the MCD-VAE on clips [B, 3, L, H, W] in [-1, 1]: L1 + ``beta`` KL +
``lpips_weight`` LPIPS + lambda_GAN (hinge, after ``gan_start_step`` steps) with its video
discriminator. Both networks learn from one scalar (so one optimiser over both, with their own
learning rates, and one gradient all-reduce): the autoencoder's adversarial term goes through a
copy of the critic with detached weights, and the critic's hinge loss sees detached
reconstructions, so neither term reaches the other network.
Phase ``dmg``: the DMG on the frozen MCD-VAE's normalised motion latents (a posterior sample per
clip) conditioned on the first frame's content latent: DDPM L_simple at t ~ U{0 .. 999}.

:class:`VaeTrainer` and :class:`DmgTrainer` step these objectives in one process (tests, benches).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.func import functional_call

from stages.edit.lamd import losses
from stages.edit.lamd.discriminator import VideoDiscriminator
from stages.edit.lamd.dmg import MotionGenerator
from stages.edit.lamd.mcd_vae import MCDVAE

PerceptualLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # frames [N, 3, H, W] x2 -> [N, ...]


@dataclass(frozen=True)
class VaeLossWeights:
    """beta (KL), lambda_GAN from optimiser step ``gan_start_step`` on, and the LPIPS weight."""

    beta: float = 1e-4
    gan_weight: float = 0.0
    gan_start_step: int = 2000
    lpips_weight: float = 0.0


def vae_loss(vae: MCDVAE, video: torch.Tensor, weights: VaeLossWeights, step: int, generator: torch.Generator,
             disc: VideoDiscriminator | None = None,
             lpips: PerceptualLoss | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """The MCD-VAE's (and critic's) loss on a batch [B, 3, L, H, W] at optimiser step ``step``."""
    out = vae(video, generator=generator)
    rec = losses.l1_loss(out.sample, video)
    kl = losses.kl_divergence(out.posterior.mean, out.posterior.logvar)
    total = rec + weights.beta * kl
    logs = {"l1": rec.item(), "kl": kl.item()}
    if lpips is not None and weights.lpips_weight > 0:
        perceptual = lpips(losses.frames_as_images(out.sample), losses.frames_as_images(video)).mean()
        total = total + weights.lpips_weight * perceptual
        logs["lpips"] = perceptual.item()
    lam = losses.gan_weight(step, weights.gan_start_step, weights.gan_weight)
    if disc is not None and lam > 0:
        frozen = {name: p.detach() for name, p in disc.named_parameters()}
        adversarial = losses.generator_adversarial_loss(functional_call(disc, frozen, (out.sample,)))
        real, fake = disc(torch.cat([video, out.sample.detach()])).chunk(2)
        critic = losses.hinge_discriminator_loss(real, fake)
        total = total + lam * adversarial + critic
        logs |= {"g_adv": adversarial.item(), "d_loss": critic.item()}
    return total, logs


def dmg_loss(dmg: MotionGenerator, vae: MCDVAE, scheduler, video: torch.Tensor, generator: torch.Generator,
             text: torch.Tensor | None = None) -> torch.Tensor:
    """L_simple of the DMG on a batch [B, 3, L, H, W] (and text states [B, N, D]); ``vae`` is frozen."""
    with torch.no_grad():
        motion, _ = vae.motion_latent(video, generator)
        motion, content = motion.float(), vae.encode_content(video[:, :, 0]).latent.float()
    noise = torch.randn(motion.shape, generator=generator, device=generator.device).to(motion)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (len(motion),), generator=generator,
                      device=generator.device).to(motion.device)
    noisy = scheduler.add_noise(motion, noise, t)
    return losses.epsilon_loss(dmg(noisy, t, content, text), noise)


def vae_parameter_groups(vae: MCDVAE, disc: VideoDiscriminator | None, lr: float, disc_lr: float) -> list[dict]:
    """Adam parameter groups: the autoencoder at ``lr``, the critic (when given) at ``disc_lr``."""
    groups = [{"params": list(vae.parameters()), "lr": lr}]
    if disc is not None:
        groups.append({"params": list(disc.parameters()), "lr": disc_lr})
    return groups


class VaeTrainer:
    """In-process training of the MCD-VAE (and its critic): one Adam step per :meth:`step`."""

    def __init__(self, vae: MCDVAE, weights: VaeLossWeights, lr: float, disc: VideoDiscriminator | None = None,
                 disc_lr: float | None = None, lpips: PerceptualLoss | None = None, seed: int = 0):
        self.vae, self.disc, self.weights, self.lpips = vae, disc, weights, lpips
        self.optimiser = torch.optim.Adam(vae_parameter_groups(vae, disc, lr, disc_lr or lr))
        self.generator = torch.Generator().manual_seed(seed)
        self.steps = 0

    def step(self, video: torch.Tensor) -> dict[str, float]:
        """Train on a batch [B, 3, L, H, W] in [-1, 1]; returns the batch's losses."""
        self.vae.train()
        loss, logs = vae_loss(self.vae, video, self.weights, self.steps, self.generator, self.disc, self.lpips)
        self.optimiser.zero_grad(set_to_none=True)
        loss.backward()
        self.optimiser.step()
        self.steps += 1
        return {"loss": loss.item(), **logs}


class DmgTrainer:
    """In-process training of the DMG on a frozen MCD-VAE: one Adam step per :meth:`step`."""

    def __init__(self, dmg: MotionGenerator, vae: MCDVAE, lr: float, seed: int = 0):
        self.dmg, self.vae = dmg, vae.eval().requires_grad_(False)
        self.scheduler = dmg.train_scheduler()
        self.optimiser = torch.optim.Adam(dmg.parameters(), lr=lr)
        self.generator = torch.Generator().manual_seed(seed)
        self.steps = 0

    def step(self, video: torch.Tensor, text: torch.Tensor | None = None) -> dict[str, float]:
        self.dmg.train()
        loss = dmg_loss(self.dmg, self.vae, self.scheduler, video, self.generator, text)
        self.optimiser.zero_grad(set_to_none=True)
        loss.backward()
        self.optimiser.step()
        self.steps += 1
        return {"loss": loss.item()}
