"""LaMD's two training phases as :class:`pipeline.training.TrainingTask` s (run by Ray Train).

``ctx.options`` carries ``data`` (:class:`~.train_config.LamdDataConfig`), ``phase`` (the
phase's config), ``source`` ("synthetic" or "manifest": Ray Data's ``train`` dataset of decoded
windows with their rows' prompts) and, for the DMG, ``mcd_vae`` (the trained MCD-VAE folder, local
or any fsspec URL). With ``dmg.text_model`` the DMG also reads the CLIP states of each clip's prompt
(the synthetic clips' description for synthetic data).
Trainable parameters are named ``mcd_vae.*``/``disc.*`` (phase vae) and ``dmg.*`` (phase dmg);
the exports are ``save_pretrained`` folders that the ``lamd`` method loads.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from types import SimpleNamespace

import torch

from jobs.make_sample import SOURCE_PROMPT
from pipeline.training import TrainingTask, TrainSetup, WorkerContext, shard_batches
from stages.edit.diffusion.loading import fetch_remote_folder, is_remote, load_components
from stages.edit.lamd.config import TEXT_COMPONENTS
from stages.edit.lamd.data import batch_prompts, batch_to_video, synthetic_batches
from stages.edit.lamd.discriminator import VideoDiscriminator
from stages.edit.lamd.dmg import MotionGenerator
from stages.edit.lamd.mcd_vae import MCDVAE
from stages.edit.lamd.text import encode_prompts
from stages.edit.lamd.training import PerceptualLoss, VaeLossWeights, dmg_loss, vae_loss, vae_parameter_groups

log = logging.getLogger(__name__)


@dataclass
class VaeModels:
    vae: MCDVAE
    disc: VideoDiscriminator | None
    lpips: PerceptualLoss | None
    weights: VaeLossWeights


@dataclass
class DmgModels:
    dmg: MotionGenerator
    vae: MCDVAE
    scheduler: object
    text_encoder: object = None  # frozen CLIP text model and its tokenizer, with dmg.text_model
    tokenizer: object = None


def load_lpips(net: str, weights_path: str, device: torch.device) -> PerceptualLoss:
    """LPIPS of the ``lpips`` package with its linear layers from ``weights_path`` (a local file);
    its backbone's ImageNet weights must already be in torchvision's cache (TORCH_HOME)."""
    try:
        import lpips
    except ImportError as exc:
        raise RuntimeError("vae.lpips_weight > 0 needs the lpips package (pip install lpips)") from exc
    model = lpips.LPIPS(net=net, model_path=weights_path, verbose=False).to(device).eval().requires_grad_(False)
    return model


def export_vae(models: VaeModels, folder: str) -> None:
    models.vae.save_pretrained(folder)


def export_dmg(models: DmgModels, folder: str) -> None:
    """The DMG's folder; a text-conditioned one carries its frozen text encoder (``text_encoder/``,
    ``tokenizer/``), where the ``lamd`` method looks for it."""
    models.dmg.save_pretrained(folder)
    if models.text_encoder is not None:
        models.text_encoder.save_pretrained(os.path.join(folder, "text_encoder"))
        models.tokenizer.save_pretrained(os.path.join(folder, "tokenizer"))


def load_text_model(ref: str, device: torch.device):
    """The frozen CLIP text encoder and tokenizer in ``ref``'s ``text_encoder/`` and ``tokenizer/``."""
    models = load_components(SimpleNamespace(model=ref), TEXT_COMPONENTS)
    return models["text_encoder"].to(device), models["tokenizer"]


def build_vae(ctx: WorkerContext) -> TrainSetup:
    data, phase = ctx.options["data"], ctx.options["phase"]
    args = phase.model
    vae = MCDVAE(sample_size=data.size, num_frames=data.num_frames, latent_channels=args.latent_channels,
                 content_channels=args.content_channels, block_out_channels=tuple(args.block_out_channels),
                 layers_per_block=args.layers_per_block, norm_num_groups=args.norm_num_groups,
                 latent_norm=args.latent_norm).to(ctx.device).train()
    disc = None
    if phase.gan_weight > 0:
        disc = VideoDiscriminator(block_out_channels=tuple(args.disc_channels),
                                  norm_num_groups=args.norm_num_groups).to(ctx.device).train()
    lpips = load_lpips(phase.lpips_net, phase.lpips_weights, ctx.device) if phase.lpips_weight > 0 else None
    params = {f"mcd_vae.{n}": p for n, p in vae.named_parameters()}
    if disc is not None:
        params |= {f"disc.{n}": p for n, p in disc.named_parameters()}
    optimizer = torch.optim.Adam(vae_parameter_groups(vae, disc, phase.learning_rate, phase.disc_learning_rate))
    weights = VaeLossWeights(beta=phase.beta, gan_weight=phase.gan_weight, gan_start_step=phase.gan_start_step,
                             lpips_weight=phase.lpips_weight)
    return TrainSetup(params=params, optimizer=optimizer, models=VaeModels(vae, disc, lpips, weights),
                      export=export_vae)


def local_folder(url: str) -> str:
    """A local path of a model folder given as a local path or any fsspec URL (copied once)."""
    return fetch_remote_folder(url) if is_remote(url) else url.removeprefix("file://")


def build_dmg(ctx: WorkerContext) -> TrainSetup:
    phase = ctx.options["phase"]
    args = phase.model
    vae = MCDVAE.from_pretrained(local_folder(ctx.options["mcd_vae"])).to(ctx.device, ctx.precision.frozen_dtype)
    vae.eval().requires_grad_(False)
    text_encoder = tokenizer = None
    if phase.text_model:
        text_encoder, tokenizer = load_text_model(phase.text_model, ctx.device)
    h, w = vae.latent_size(vae.config.sample_size, vae.config.sample_size)
    dmg = MotionGenerator(latent_channels=vae.config.latent_channels, content_channels=vae.config.content_channels,
                          sample_size=h, block_out_channels=tuple(args.block_out_channels),
                          down_block_types=tuple(args.down_block_types), up_block_types=tuple(args.up_block_types),
                          layers_per_block=args.layers_per_block, cross_attention_dim=args.cross_attention_dim,
                          attention_head_dim=args.attention_head_dim, norm_num_groups=args.norm_num_groups,
                          num_train_timesteps=args.num_train_timesteps, beta_schedule=args.beta_schedule,
                          beta_start=args.beta_start, beta_end=args.beta_end,
                          text_embed_dim=text_encoder.config.hidden_size if text_encoder is not None else None,
                          ).to(ctx.device).train()
    params = {f"dmg.{n}": p for n, p in dmg.named_parameters()}
    optimizer = torch.optim.Adam(params.values(), lr=phase.learning_rate)
    return TrainSetup(params=params, optimizer=optimizer,
                      models=DmgModels(dmg, vae, dmg.train_scheduler(), text_encoder, tokenizer), export=export_dmg)


def clip_batches(ctx: WorkerContext, start: int) -> Iterable:
    """This worker's batches after the first ``start``: synthetic clips rendered on the fly, or
    its shard of the ``train`` dataset of decoded windows."""
    data, phase = ctx.options["data"], ctx.options["phase"]
    if ctx.options["source"] == "synthetic":
        return synthetic_batches(data.first_seed, ctx.rank, ctx.world_size, phase.batch_size, data.size,
                                 data.num_frames, skip_batches=start)
    import ray.train

    return shard_batches(ray.train.get_dataset_shard("train"), batch_size=phase.batch_size, start=start)


def vae_task_loss(models: VaeModels, batch, ctx: WorkerContext, micro: int) -> tuple[torch.Tensor, dict]:
    video = batch_to_video(batch, ctx.device)
    return vae_loss(models.vae, video, models.weights, ctx.step, ctx.generator(micro), models.disc, models.lpips)


def dmg_task_loss(models: DmgModels, batch, ctx: WorkerContext, micro: int) -> tuple[torch.Tensor, dict]:
    video = batch_to_video(batch, ctx.device).to(ctx.precision.frozen_dtype)
    text = None
    if models.text_encoder is not None:
        text = encode_prompts(models.text_encoder, models.tokenizer, batch_prompts(batch, SOURCE_PROMPT)).float()
    return dmg_loss(models.dmg, models.vae, models.scheduler, video, ctx.generator(micro), text), {}


def vae_task(options: dict) -> TrainingTask:
    return TrainingTask("lamd-vae", build_vae, clip_batches, vae_task_loss, options=options)


def dmg_task(options: dict) -> TrainingTask:
    return TrainingTask("lamd-dmg", build_dmg, clip_batches, dmg_task_loss, options=options)
