"""Tune-A-Video (Wu et al., ICCV 2023): one-shot tuning of an inflated Stable Diffusion 1.x UNet.

Per row, following the release (showlab/Tune-A-Video; facts in ``METHODS.md``):

1. take ``num_frames`` frames (default 24, every 2nd) at ``width`` x ``height`` (512 x 512) and
   encode them with the VAE (one posterior sample, scaled by the VAE's ``scaling_factor``);
2. restore the UNet's pristine weights, then tune it on the clip and the row's
   ``source_prompt``: ``train_steps`` (500) AdamW steps at ``learning_rate`` 3e-5 (constant,
   weight decay 1e-2, gradient norm clipped to 1), epsilon-MSE at a uniformly drawn timestep,
   training only ``attn1.to_q``, ``attn2.to_q`` and the temporal attention ``attn_temp``, kept
   in float32 while the frozen UNet runs in half precision under autocast, with a GradScaler
   for float16 (``stages/edit/diffusion/precision.py``);
3. DDIM-invert the clip's latents with the tuned UNet (``num_inference_steps`` = 50 steps,
   ``inversion_prompt`` "" and no guidance);
4. DDIM-sample from the inverted latents with the row's ``prompt`` and classifier-free guidance
   ``guidance_scale`` 12.5; decode with the VAE.

The inflation (sparse-causal attention, temporal attention, per-frame convolutions) is
``stages/edit/diffusion/inflate.py``. With ``save_weights`` the tuned parameters are stored
(``outputs.tuned_weights``); a row with ``tuned_weights_uri`` loads them instead of tuning.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.config import ConfigError, Resources
from stages.edit.diffusion import ddim
from stages.edit.diffusion.base import DiffusionEditStage
from stages.edit.diffusion.config import LOAD_FIELDS, DiffusionConfig
from stages.edit.diffusion.inflate import TRAINABLE_MODULES, inflate_unet, trainable_parameters, video_unet_forward
from stages.edit.diffusion.precision import MixedPrecision, keep_float32, optimizer_step

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TuneAVideoConfig(DiffusionConfig):
    """Tune-A-Video's settings; defaults are the release's (``configs/*.yaml``, ``train_tuneavideo.py``)."""

    guidance_scale: float = 12.5
    num_frames: int = 24
    frame_stride: int = 2  # the release's sample_frame_rate
    gradient_checkpointing: bool = True
    train_steps: int = 500
    learning_rate: float = 3e-5
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    trainable_modules: tuple[str, ...] = TRAINABLE_MODULES
    inversion: bool = True  # start sampling from the DDIM-inverted clip (else from seeded noise)
    inversion_prompt: str = ""
    video_group_norm: bool = True  # resnet GroupNorm statistics over all frames, as the release
    resources: Resources = field(default_factory=lambda: Resources(num_cpus=1, num_gpus=0, min_actors=1,
                                                                   max_actors=1))

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.train_steps < 0:
            raise ConfigError(f"train_steps must be >= 0, got {self.train_steps}")
        if self.learning_rate <= 0:
            raise ConfigError(f"learning_rate must be > 0, got {self.learning_rate}")
        if not self.trainable_modules:
            raise ConfigError("trainable_modules must name at least one module suffix")


def denoising_loss(unet: torch.nn.Module, latents: torch.Tensor, text_embeddings: torch.Tensor, scheduler,
                   noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """Epsilon-prediction MSE of an inflated UNet on latents [B, C, F, h, w] noised to ``timesteps`` [B]."""
    noisy = scheduler.add_noise(latents, noise, timesteps)
    pred = video_unet_forward(unet, noisy, timesteps, text_embeddings)
    return F.mse_loss(pred.float(), noise.float())


def tune_unet(unet: torch.nn.Module, params: list[torch.nn.Parameter], latents: torch.Tensor,
              text_embeddings: torch.Tensor, scheduler, config: TuneAVideoConfig, generator: torch.Generator,
              precision: MixedPrecision | None = None) -> list[float]:
    """Tune ``params`` of ``unet`` on one clip for ``config.train_steps`` steps; returns the step losses.

    latents [1, C, F, h, w] (scaled); text_embeddings [1, L, D] of the source prompt. Noise and
    timesteps are drawn from ``generator`` (CPU), so a seed fixes the run. ``precision``: the
    forward passes autocast to its dtype and, for float16, the loss is scaled (GradScaler);
    ``params`` should be float32 (:func:`~stages.edit.diffusion.precision.keep_float32`).
    None: float32 throughout.
    """
    precision = precision or MixedPrecision(latents.device.type, torch.float32)
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, betas=(config.adam_beta1, config.adam_beta2),
                                  weight_decay=config.weight_decay, eps=config.adam_epsilon)
    scaler = precision.scaler()
    num_train = scheduler.config.num_train_timesteps
    losses = []
    skipped = 0
    unet.train()
    try:
        for _ in range(config.train_steps):
            noise = torch.randn(latents.shape, generator=generator).to(latents)
            t = torch.randint(0, num_train, (latents.shape[0],), generator=generator).to(latents.device)
            with precision.autocast():
                loss = denoising_loss(unet, latents, text_embeddings, scheduler, noise, t)
            skipped += not optimizer_step(loss, params, optimizer, scaler, config.max_grad_norm)
            losses.append(float(loss.detach()))
    finally:
        unet.eval()
        for p in params:
            p.grad = None
    if skipped:
        log.info("tune_a_video: %d of %d steps skipped on gradient overflow (loss scale now %g)", skipped,
                 config.train_steps, scaler.get_scale())
    return losses


class TuneAVideoStage(DiffusionEditStage):
    method = "tune_a_video"
    config_class = TuneAVideoConfig
    required_fields = ("prompt", "source_prompt")
    load_fields = (*LOAD_FIELDS, "trainable_modules", "video_group_norm")
    trains = True  # dtype auto: bfloat16 where the card has it, else float16 with a GradScaler

    def prepare_models(self, models: dict) -> None:
        scheduler = models["scheduler"]
        if scheduler.config.get("prediction_type", "epsilon") != "epsilon":
            raise ValueError(f"Tune-A-Video needs an epsilon-prediction model (SD 1.x), got "
                             f"{scheduler.config.prediction_type!r}")
        inflate_unet(models["unet"], attention=self.config.attention, attention_slice=self.config.attention_slice,
                     video_group_norm=self.config.video_group_norm)

    def after_setup(self) -> None:
        unet = self.models["unet"]
        self.params = trainable_parameters(unet, self.config.trainable_modules)
        keep_float32(self.params.values())  # trainable weights stay float32 (mixed precision, as the release)
        self.pristine = {name: p.detach().clone() for name, p in self.params.items()}
        log.info("tune_a_video: %d trainable tensors, %.1fM parameters", len(self.params),
                 sum(p.numel() for p in self.params.values()) / 1e6)

    @torch.no_grad()
    def restore_pristine(self) -> None:
        """Put back the base model's trainable weights (each row is tuned from the base model)."""
        for name, p in self.params.items():
            p.copy_(self.pristine[name])

    @torch.no_grad()
    def load_tuned(self, url: str) -> None:
        tensors = self.load_tensors(url)
        missing = sorted(set(self.params) - set(tensors))
        extra = sorted(set(tensors) - set(self.params))
        if missing or extra:
            raise ValueError(f"tuned weights {url!r} do not fit this UNet: missing {missing[:2]}, extra {extra[:2]}")
        for name, p in self.params.items():
            if tensors[name].shape != p.shape:
                raise ValueError(f"tuned weights {url!r}: {name} has shape {tuple(tensors[name].shape)}, "
                                 f"the UNet {tuple(p.shape)}")
            p.copy_(tensors[name])

    def tune(self, latents: torch.Tensor, source_prompt: str, config: TuneAVideoConfig,
             generator: torch.Generator) -> list[float]:
        embeddings = self.encode_text([source_prompt])
        return tune_unet(self.models["unet"], list(self.params.values()), latents, embeddings,
                         self.models["scheduler"], config, generator, self.precision)

    def _eps_fn(self, embeddings: torch.Tensor, guidance: float) -> Callable[[torch.Tensor, int], torch.Tensor]:
        """eps(latents, t) of the inflated UNet; ``embeddings`` [1, L, D] or [2, L, D] (uncond, cond)."""
        unet = self.models["unet"]

        def eps(x: torch.Tensor, t: int) -> torch.Tensor:
            with self.autocast():
                if embeddings.shape[0] == 1:
                    return video_unet_forward(unet, x.to(self.dtype), t, embeddings).to(x.dtype)
                out = video_unet_forward(unet, torch.cat([x, x]).to(self.dtype), t, embeddings).to(x.dtype)
            uncond, cond = out.chunk(2)
            return ddim.guided(uncond, cond, guidance)

        return eps

    def invert(self, latents: torch.Tensor, config: TuneAVideoConfig) -> torch.Tensor:
        """DDIM inversion [1, C, F, h, w] -> the noisiest level (``inversion_prompt``, no guidance)."""
        eps = self._eps_fn(self.encode_text([config.inversion_prompt]), 1.0)
        return ddim.ddim_invert(eps, latents.float(), self.models["scheduler"], config.num_inference_steps)

    def sample(self, latents: torch.Tensor, prompt: str, config: TuneAVideoConfig) -> torch.Tensor:
        """DDIM sampling from ``latents`` with ``prompt`` and classifier-free guidance (off at scale <= 1)."""
        if config.guidance_scale > 1.0:
            embeddings = self.encode_text(["", prompt])
        else:
            embeddings = self.encode_text([prompt])
        eps = self._eps_fn(embeddings, config.guidance_scale)
        return ddim.ddim_sample(eps, latents.float(), self.models["scheduler"], config.num_inference_steps)

    def edit_clip(self, row: dict, clip: np.ndarray, config: TuneAVideoConfig) -> np.ndarray:
        generator = self.generator(config.seed)
        latents = self.encode_frames(clip, generator).float()
        self.restore_pristine()
        uri = row.get("tuned_weights_uri")
        if uri:
            self.load_tuned(str(uri))
        else:
            losses = self.tune(latents, row["source_prompt"], config, generator)
            if losses:
                log.info("tune_a_video %s: %d steps, loss %.4f -> %.4f", row.get("job_id"), len(losses),
                         float(np.mean(losses[:10])), float(np.mean(losses[-10:])))
            if config.save_weights:
                self.save_tensors(row, self.params)
        if config.inversion:
            start = self.invert(latents, config)
        else:
            start = self.randn(tuple(latents.shape), generator, torch.float32)
        edited = self.sample(start, row["prompt"], config)
        return self.decode_latents(edited)
