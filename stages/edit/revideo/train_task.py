"""ReVideo's three training stages as a :class:`pipeline.training.TrainingTask` (models and loss).

Stage 1 and 2 train the whole control module with the SVD UNet frozen; stage 3 trains only the
temporal self-attention key/value projections of both and SAFM (:func:`.training.stage3_parameters`).
Adam at ``learning_rate`` (3e-5, the release's ``base_learning_rate``). The control module of
stage 1 starts as a copy of the UNet's encoder with zero-initialised residual convolutions (the
release's ``init_from_unet``); stages 2 and 3 start from the previous stage's ``controlnet/``.

The job (``jobs.train_revideo``) feeds batches of :mod:`.train_samples` (``video``, ``box``,
``c_mot``); :func:`revideo_loss` encodes them with the frozen VAE and CLIP image encoder and
computes :func:`.train_loss.denoising_loss`. The run's export is ``controlnet/`` (and, after
stage 3, ``unet/``): the layout the ``revideo`` method loads.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from pipeline.config import ConfigError
from pipeline.training import TrainSetup, WorkerContext
from stages.edit.diffusion.loading import load_component
from stages.edit.revideo.config import COMPONENTS, SVD_MODEL
from stages.edit.revideo.control import ReVideoControlModel
from stages.edit.revideo.train_loss import (
    clip_image_embeds,
    denoising_loss,
    encode_condition_latents,
    encode_video_latents,
    sample_sigmas,
)
from stages.edit.revideo.train_samples import STAGES, SampleConfig, content_condition, region_maps
from stages.edit.revideo.training import stage3_parameters

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReVideoTrainConfig:
    """ReVideo training (the ``revideo:`` section of jobs/configs/train_revideo.yaml).

    ``model``: SVD (vae/, image_encoder/, feature_extractor/); ``checkpoint``: the folder whose
    ``unet/`` is trained against (None: ``model``'s, the stock SVD UNet); ``controlnet``: the
    control module to start from (None: stage 1 builds it from the UNet, stages 2/3 take
    ``{output}/stage{n-1}/controlnet``).
    """

    model: str = SVD_MODEL
    checkpoint: str | None = None
    controlnet: str | None = None
    revision: str | None = None
    variant: str | None = None
    stem_channels: tuple[int, ...] = (16, 32, 96, 256)  # control stems of a new module (the release's)
    stage_steps: tuple[int, int, int] = (40_000, 30_000, 20_000)  # the paper's iterations per stage
    learning_rate: float = 3e-5  # the release's base_learning_rate (Adam)
    batch_size: int = 1  # samples per worker per micro-batch (paper: 4 per GPU = 1 x grad_accumulation 4)
    p_mean: float = 0.7  # log-normal noise levels (unpublished by ReVideo; see train_loss)
    p_std: float = 1.6
    cond_aug: float = 0.02  # the release's inference values for the conditioning
    fps_id: int = 10
    motion_bucket_id: int = 127
    condition_dropout: float = 0.1  # zero image embedding + conditioning latents (unconditional branch)
    gradient_checkpointing: bool = True  # recompute activations of both networks in the backward pass
    vae_chunk: int = 14  # frames per VAE encode call
    samples: SampleConfig = field(default_factory=SampleConfig)

    def __post_init__(self) -> None:
        if len(self.stage_steps) != 3 or min(self.stage_steps) < 1:
            raise ConfigError(f"revideo.stage_steps needs 3 positive step counts, got {self.stage_steps}")
        if self.learning_rate <= 0 or self.batch_size < 1 or self.vae_chunk < 1:
            raise ConfigError("revideo.learning_rate must be > 0, batch_size and vae_chunk >= 1")
        if self.p_std <= 0 or not 0 <= self.condition_dropout <= 1 or self.cond_aug < 0:
            raise ConfigError("revideo: need p_std > 0, 0 <= condition_dropout <= 1, cond_aug >= 0")
        if self.samples.min_trajectories < 1 or self.samples.max_trajectories < self.samples.min_trajectories:
            raise ConfigError("revideo.samples: need 1 <= min_trajectories <= max_trajectories")
        if self.samples.min_region < 1 or not 0 < self.samples.max_region_fraction <= 1:
            raise ConfigError("revideo.samples: need min_region >= 1 and 0 < max_region_fraction <= 1")


@dataclass
class ReVideoModels:
    """What the loss uses: the frozen parts, the UNet, the control module, the stage."""

    unet: torch.nn.Module
    control: ReVideoControlModel
    vae: torch.nn.Module
    image_encoder: torch.nn.Module
    feature_extractor: Any
    stage: int
    config: ReVideoTrainConfig


def load_models(config: ReVideoTrainConfig, controlnet: str | None) -> dict[str, Any]:
    """Load the SVD parts, the UNet and (when ``controlnet`` names one) the control module through
    the method's own loader (``from_pretrained``; local paths, hub ids and fsspec URLs); float32."""
    source = SimpleNamespace(model=config.model, checkpoint=config.checkpoint or config.model, controlnet=controlnet,
                             revision=config.revision, variant=config.variant, unet=None, vae=None,
                             image_encoder=None, feature_extractor=None)
    names = ["unet", "vae", "image_encoder", "feature_extractor"] + (["controlnet"] if controlnet else [])
    return {name: load_component(source, name, COMPONENTS[name]) for name in names}


def trainable_parameters(stage: int, unet: torch.nn.Module, control: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """The parameters ``stage`` trains, by name (``controlnet.*`` / ``unet.*``)."""
    if stage == 3:
        return stage3_parameters(unet, control)
    return {f"controlnet.{k}": p for k, p in control.named_parameters()}


def build_revideo(ctx: WorkerContext) -> TrainSetup:
    """``TrainingTask.build``: ``ctx.options`` holds ``config`` (ReVideoTrainConfig), ``stage`` and
    ``controlnet`` (the resolved start module, or None for a new one)."""
    config: ReVideoTrainConfig = ctx.options["config"]
    stage = int(ctx.options["stage"])
    models = load_models(config, ctx.options.get("controlnet"))
    unet = models["unet"]
    control = models.get("controlnet") or ReVideoControlModel.from_unet(unet, tuple(config.stem_channels))
    frozen = ctx.precision.frozen_dtype
    unet.to(ctx.device, torch.float32 if stage == 3 else frozen)  # stage 3 trains some UNet weights: fp32
    control.to(ctx.device, torch.float32)
    for part in (models["vae"], models["image_encoder"]):
        part.to(ctx.device, frozen)
    unet.requires_grad_(False)
    control.requires_grad_(False)
    params = trainable_parameters(stage, unet, control)
    for p in params.values():
        p.requires_grad_(True)
    if config.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        control.enable_gradient_checkpointing()
    unet.train(stage == 3)
    control.train()
    optimizer = torch.optim.Adam(params.values(), lr=config.learning_rate)
    bundle = ReVideoModels(unet=unet, control=control, vae=models["vae"], image_encoder=models["image_encoder"],
                           feature_extractor=models["feature_extractor"], stage=stage, config=config)
    log.info("stage %d: %d trainable tensors (%.1fM values)", stage, len(params),
             sum(p.numel() for p in params.values()) / 1e6)
    return TrainSetup(params=params, optimizer=optimizer, models=bundle, export=export_revideo)


def export_revideo(models: ReVideoModels, folder: str) -> None:
    """``controlnet/`` (and ``unet/`` after stage 3) in diffusers layout, float32."""
    models.control.save_pretrained(os.path.join(folder, "controlnet"))
    if models.stage == 3:
        models.unet.to(torch.float32).save_pretrained(os.path.join(folder, "unet"))


def batch_tensors(batch: dict, stage: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Trainer tensors from a numpy batch of samples: pixels [B, F, 3, H, W] in [-1, 1], reference
    [B, 3, H, W] in [0, 1], c_mot [B, F, 2, H, W], content [B, F, 3, H, W], region [B, F, 1, H, W]."""
    video = np.asarray(batch["video"])
    b, f, h, w = video.shape[:4]
    region = region_maps(np.asarray(batch["box"]), h, w)
    pixels = torch.from_numpy(video).to(device).permute(0, 1, 4, 2, 3).float() / 127.5 - 1.0
    return {"pixels": pixels, "ref01": (pixels[:, 0] + 1.0) / 2.0,
            "c_mot": torch.from_numpy(np.asarray(batch["c_mot"], np.float32)).to(device),
            "content": torch.from_numpy(content_condition(video, region, stage)).to(device),
            "region": torch.from_numpy(region)[:, None, None].expand(b, f, 1, h, w).to(device)}


def revideo_loss(models: ReVideoModels, batch: dict, ctx: WorkerContext, micro: int) -> tuple[torch.Tensor, dict]:
    """``TrainingTask.loss``: encode the batch with the frozen parts, then the EDM loss."""
    cfg, gen = models.config, ctx.generator(micro)
    t = batch_tensors(batch, models.stage, ctx.device)
    b, f = t["pixels"].shape[:2]
    with torch.no_grad():
        latents = encode_video_latents(models.vae, t["pixels"], gen, cfg.vae_chunk)
        cond = encode_condition_latents(models.vae, t["pixels"][:, 0], cfg.cond_aug, f, gen)
        embeds = clip_image_embeds(models.image_encoder, models.feature_extractor, t["ref01"])
        keep = (torch.rand(b, generator=gen, device=ctx.device) >= cfg.condition_dropout).float()
        cond, embeds = cond * keep.view(-1, 1, 1, 1, 1), embeds * keep.view(-1, 1, 1)
    ids = torch.tensor([[cfg.fps_id, cfg.motion_bucket_id, cfg.cond_aug]], device=ctx.device).expand(b, 3)
    sigma = sample_sigmas(b, cfg.p_mean, cfg.p_std, gen, ctx.device)
    noise = torch.randn(latents.shape, generator=gen, device=ctx.device)
    dtype = next(models.unet.parameters()).dtype
    loss = denoising_loss(models.unet, models.control, latents, cond.to(dtype), embeds.to(dtype), ids.to(dtype),
                          t["c_mot"], t["content"], t["region"], sigma, noise)
    return loss, {"sigma_mean": float(sigma.mean())}


def check_stage(stage: int) -> int:
    if stage not in STAGES:
        raise ConfigError(f"stage must be one of {STAGES}, got {stage}")
    return stage
