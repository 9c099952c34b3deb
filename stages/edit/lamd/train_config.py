"""Configuration of ``python -m jobs.train_lamd`` (``jobs/configs/train_lamd.yaml``).

Every number LaMD does not publish is here, with the defaults reasoned for the synthetic data
(64 x 64, L = 16, f_s = 4 -> 16 x 16 x d motion latents): d = 4, d' = 64, k = 2 content skips
(three levels), beta = 1e-4, lambda_GAN = 0 (the critic is built, and trained, only when > 0),
Adam at 1e-4 with batch 16 per worker.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pipeline.config import ConfigError
from pipeline.storage import StorageOptions
from pipeline.training import TrainConfig


@dataclass(frozen=True)
class LamdDataConfig:
    """Training clips: ``size`` x ``size`` pixels, ``num_frames`` = L frames.

    Synthetic (``--synthetic``): seeds from ``first_seed`` on (seeds below it are held out for
    evaluation). A manifest (``--data URL``, its ``video_uri`` column): non-overlapping windows
    of L frames every ``frame_stride`` decoded frames, centre-cropped square and resized, at most
    ``max_windows_per_video`` per video.
    """

    size: int = 64
    num_frames: int = 16
    first_seed: int = 1000
    frame_stride: int = 1
    max_windows_per_video: int = 8

    def __post_init__(self) -> None:
        if self.size < 8 or self.num_frames < 1 or self.frame_stride < 1 or self.max_windows_per_video < 1:
            raise ConfigError("data.size must be >= 8; num_frames, frame_stride, max_windows_per_video >= 1")


@dataclass(frozen=True)
class McdVaeArgs:
    """The MCD-VAE's shape: d = ``latent_channels``, d' = ``content_channels``; f_s = 2^(levels-1)."""

    latent_channels: int = 4
    content_channels: int = 64
    block_out_channels: tuple[int, ...] = (32, 64, 128)
    layers_per_block: int = 1
    norm_num_groups: int = 8
    latent_norm: Literal["layer", "none"] = "layer"
    disc_channels: tuple[int, ...] = (32, 64, 128)  # the video discriminator's widths


@dataclass(frozen=True)
class DmgArgs:
    """The DMG's UNet2DConditionModel and noise schedule (DDPM, 1000 steps, linear betas)."""

    block_out_channels: tuple[int, ...] = (64, 128, 128)
    down_block_types: tuple[str, ...] = ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D")
    up_block_types: tuple[str, ...] = ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")
    layers_per_block: int = 2
    cross_attention_dim: int = 128
    attention_head_dim: int = 8
    norm_num_groups: int = 32
    num_train_timesteps: int = 1000
    beta_schedule: str = "linear"
    beta_start: float = 1e-4
    beta_end: float = 0.02


@dataclass(frozen=True)
class VaePhaseConfig:
    """Phase ``vae``: L1 + ``beta`` KL + ``lpips_weight`` LPIPS (needs ``lpips_weights``, a local
    file of the ``lpips`` package's linear layers, and the package) + ``gan_weight`` hinge GAN from
    step ``gan_start_step``."""

    model: McdVaeArgs = field(default_factory=McdVaeArgs)
    batch_size: int = 16
    learning_rate: float = 1e-4
    disc_learning_rate: float = 1e-4
    beta: float = 1e-4
    gan_weight: float = 0.0
    gan_start_step: int = 2000
    lpips_weight: float = 0.0
    lpips_weights: str | None = None
    lpips_net: Literal["vgg", "alex"] = "vgg"
    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=20000, checkpoint_every=1000,
                                                                   log_every=50))

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.learning_rate <= 0 or self.disc_learning_rate <= 0:
            raise ConfigError("vae.batch_size must be >= 1 and the learning rates > 0")
        if min(self.beta, self.gan_weight, self.lpips_weight) < 0 or self.gan_start_step < 0:
            raise ConfigError("vae.beta, gan_weight, lpips_weight and gan_start_step must be >= 0")
        if self.lpips_weight > 0 and not self.lpips_weights:
            raise ConfigError("vae.lpips_weight > 0 needs vae.lpips_weights (a local path; nothing is downloaded)")


@dataclass(frozen=True)
class DmgPhaseConfig:
    """Phase ``dmg``: L_simple on the frozen MCD-VAE at ``mcd_vae`` (default: the run's own
    ``{output}/model/mcd_vae``). ``text_model``: a folder (local, fsspec URL or hub id) with
    ``text_encoder/`` and ``tokenizer/`` (CLIP, e.g. a Stable Diffusion 1.x folder): the DMG is then
    conditioned on the clip's prompt too (a manifest's ``prompt`` column; the synthetic clips'
    description for ``--synthetic``), and the frozen encoder is exported with it."""

    model: DmgArgs = field(default_factory=DmgArgs)
    mcd_vae: str | None = None
    text_model: str | None = None
    batch_size: int = 16
    learning_rate: float = 1e-4
    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=20000, checkpoint_every=1000,
                                                                   log_every=50))

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.learning_rate <= 0:
            raise ConfigError("dmg.batch_size must be >= 1 and dmg.learning_rate > 0")


@dataclass(frozen=True)
class TrainLamdConfig:
    storage: StorageOptions = field(default_factory=StorageOptions)
    num_cpus: int | None = None  # CPUs of a local Ray started by the job (None: all)
    data: LamdDataConfig = field(default_factory=LamdDataConfig)
    vae: VaePhaseConfig = field(default_factory=VaePhaseConfig)
    dmg: DmgPhaseConfig = field(default_factory=DmgPhaseConfig)
