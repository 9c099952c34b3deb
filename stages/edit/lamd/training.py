"""LaMD's two training phases as plain PyTorch steps (Ray Train calls them in ``jobs/train_lamd.py``).

Phase ``vae``: the MCD-VAE (and, after ``gan_start_step``, its video discriminator) on clips
[B, 3, L, H, W]: L1 + ``beta`` KL + ``lpips_weight`` LPIPS + lambda_GAN hinge adversarial loss.
Phase ``dmg``: the DMG on the frozen MCD-VAE's normalised motion latents (a posterior sample per
clip) conditioned on the first frame's content latent: DDPM L_simple at t ~ U{0..999}.
Each trainer's :meth:`state_dict` holds its models, optimisers and step, so a checkpoint resumes
exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from stages.edit.lamd import losses
from stages.edit.lamd.discriminator import VideoDiscriminator
from stages.edit.lamd.dmg import MotionGenerator
from stages.edit.lamd.mcd_vae import MCDVAE


@dataclass(frozen=True)
class VaeLossWeights:
    """beta (KL), lambda_GAN after ``gan_start_step`` optimiser steps, and the LPIPS weight."""

    beta: float = 1e-4
    gan_weight: float = 0.0
    gan_start_step: int = 2000
    lpips_weight: float = 0.0


def clip_gradients(params, max_norm: float | None) -> None:
    if max_norm:
        torch.nn.utils.clip_grad_norm_(params, max_norm)


Wrap = Callable[[nn.Module], nn.Module]
PerceptualLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # frames [N, 3, H, W] x2 -> [N, ...]


def unwrapped(module: nn.Module) -> nn.Module:
    return module


class VaeTrainer:
    """One optimiser step of the MCD-VAE (and its discriminator) per :meth:`step`.

    ``wrap`` puts a trained model in its data-parallel wrapper (Ray Train's ``prepare_model``);
    checkpoints hold the bare models.
    """

    def __init__(self, vae: MCDVAE, weights: VaeLossWeights, lr: float, disc: VideoDiscriminator | None = None,
                 disc_lr: float | None = None, lpips: PerceptualLoss | None = None,
                 max_grad_norm: float | None = 1.0, seed: int = 0, wrap: Wrap = unwrapped):
        self.vae, self.disc, self.weights, self.lpips = vae, disc, weights, lpips
        self.vae_forward = wrap(vae)
        self.disc_forward = wrap(disc) if disc is not None else None
        self.max_grad_norm = max_grad_norm
        self.optimiser = torch.optim.Adam(vae.parameters(), lr=lr)
        self.disc_optimiser = torch.optim.Adam(disc.parameters(), lr=disc_lr or lr) if disc is not None else None
        self.generator = torch.Generator().manual_seed(seed)
        self.steps = 0

    def step(self, video: torch.Tensor) -> dict[str, float]:
        """Train on a batch [B, 3, L, H, W] in [-1, 1]; returns the batch's losses."""
        w = self.weights
        self.vae.train()
        out = self.vae_forward(video, generator=self.generator)
        rec = losses.l1_loss(out.sample, video)
        kl = losses.kl_divergence(out.posterior.mean, out.posterior.logvar)
        total = rec + w.beta * kl
        metrics = {"l1": rec.item(), "kl": kl.item()}
        if self.lpips is not None and w.lpips_weight > 0:
            perceptual = self.lpips(losses.frames_as_images(out.sample), losses.frames_as_images(video)).mean()
            total = total + w.lpips_weight * perceptual
            metrics["lpips"] = perceptual.item()
        lam = losses.gan_weight(self.steps, w.gan_start_step, w.gan_weight)
        if self.disc is not None and lam > 0:
            self.disc.requires_grad_(False)  # the bare critic: only the autoencoder learns from this pass
            adversarial = losses.generator_adversarial_loss(self.disc(out.sample))
            self.disc.requires_grad_(True)
            total = total + lam * adversarial
            metrics["g_adv"] = adversarial.item()
        self.optimiser.zero_grad(set_to_none=True)
        total.backward()
        clip_gradients(self.vae.parameters(), self.max_grad_norm)
        self.optimiser.step()
        if self.disc is not None and lam > 0:
            real, fake = self.disc_forward(torch.cat([video, out.sample.detach()])).chunk(2)  # one pass (DDP)
            d_loss = losses.hinge_discriminator_loss(real, fake)
            self.disc_optimiser.zero_grad(set_to_none=True)
            d_loss.backward()
            clip_gradients(self.disc.parameters(), self.max_grad_norm)
            self.disc_optimiser.step()
            metrics["d_loss"] = d_loss.item()
        self.steps += 1
        metrics["loss"] = total.item()
        return metrics

    def state_dict(self) -> dict:
        state = {"vae": self.vae.state_dict(), "optimiser": self.optimiser.state_dict(), "steps": self.steps,
                 "generator": self.generator.get_state()}
        if self.disc is not None:
            state["disc"] = self.disc.state_dict()
            state["disc_optimiser"] = self.disc_optimiser.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.vae.load_state_dict(state["vae"])
        self.optimiser.load_state_dict(state["optimiser"])
        self.steps = int(state["steps"])
        self.generator.set_state(state["generator"])
        if self.disc is not None and "disc" in state:
            self.disc.load_state_dict(state["disc"])
            self.disc_optimiser.load_state_dict(state["disc_optimiser"])


class DmgTrainer:
    """One optimiser step of the DMG on the frozen MCD-VAE's latents per :meth:`step`."""

    def __init__(self, dmg: MotionGenerator, vae: MCDVAE, lr: float, max_grad_norm: float | None = 1.0,
                 seed: int = 0, wrap: Wrap = unwrapped):
        self.dmg, self.vae = dmg, vae.eval().requires_grad_(False)
        self.dmg_forward = wrap(dmg)
        self.scheduler = dmg.train_scheduler()
        self.max_grad_norm = max_grad_norm
        self.optimiser = torch.optim.Adam(dmg.parameters(), lr=lr)
        self.generator = torch.Generator().manual_seed(seed)
        self.steps = 0

    @torch.no_grad()
    def latents(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The normalised motion latent (a posterior sample) [B, d, h, w] and content latent [B, d', h, w]."""
        motion, _ = self.vae.motion_latent(video, self.generator)
        return motion, self.vae.encode_content(video[:, :, 0]).latent

    def step(self, video: torch.Tensor, text: torch.Tensor | None = None) -> dict[str, float]:
        """Train on a batch [B, 3, L, H, W] (and text states [B, N, D]); returns the batch's loss."""
        self.dmg.train()
        motion, content = self.latents(video)
        noise = torch.randn(motion.shape, generator=self.generator).to(motion)
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (len(motion),),
                          generator=self.generator).to(motion.device)
        noisy = self.scheduler.add_noise(motion, noise, t)
        loss = losses.epsilon_loss(self.dmg_forward(noisy, t, content, text), noise)
        self.optimiser.zero_grad(set_to_none=True)
        loss.backward()
        clip_gradients(self.dmg.parameters(), self.max_grad_norm)
        self.optimiser.step()
        self.steps += 1
        return {"loss": loss.item()}

    def state_dict(self) -> dict:
        return {"dmg": self.dmg.state_dict(), "optimiser": self.optimiser.state_dict(), "steps": self.steps,
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.dmg.load_state_dict(state["dmg"])
        self.optimiser.load_state_dict(state["optimiser"])
        self.steps = int(state["steps"])
        self.generator.set_state(state["generator"])
