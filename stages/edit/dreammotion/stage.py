"""The ``dreammotion`` editing method: optimise the video's latents on a frozen text-to-video UNet.

Per row (docs/dreammotion.md):

1. ``prompt`` (the edit) and ``source_prompt`` (describes the input) are required; the edit
   region comes from ``masks_uri``, else the atlas alpha, else the whole frame (``masks.py``),
   checked before any model work;
2. the clip (``num_frames`` = 16 at 576 x 320) is encoded with the VAE (posterior mean, scaled);
3. ``iterations`` steps of V-DDS + S-SSM + T-SSM on the latents (``optimise.py``), the UNet
   frozen in the actor's dtype under autocast, the latents float32;
4. the latents are decoded with the VAE.

The model must predict noise (epsilon): ZeroScope (``cerspense/zeroscope_v2_576w``) and
ModelScope text-to-video do; a v-prediction model is refused at setup.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from stages.edit.base import RowFieldError
from stages.edit.diffusion.base import DiffusionEditStage
from stages.edit.dreammotion.config import COMPONENTS, DREAMMOTION_LOAD_FIELDS, DreamMotionConfig
from stages.edit.dreammotion.key_hooks import KeyRecorder, spatial_key_layers
from stages.edit.dreammotion.masks import latent_masks, mask_source, row_masks
from stages.edit.dreammotion.memory import checkpoint_blocks, set_attention
from stages.edit.dreammotion.optimise import OptimisationResult, PromptEmbeddings, optimise_latents

log = logging.getLogger(__name__)


def check_timesteps(config: DreamMotionConfig, scheduler) -> None:
    """ValueError when ``t_max`` lies beyond the scheduler's training timesteps."""
    steps = int(scheduler.config.num_train_timesteps)
    if config.t_max > steps:
        raise ValueError(f"t_max={config.t_max} exceeds the scheduler's {steps} training timesteps")


class DreamMotionStage(DiffusionEditStage):
    method = "dreammotion"
    config_class = DreamMotionConfig
    components = COMPONENTS  # type: ignore[assignment]
    load_fields = DREAMMOTION_LOAD_FIELDS
    required_fields = ("prompt", "source_prompt")
    optional_needs = ("atlas",)  # rows with mask_source: atlas
    trains = True  # dtype auto: bfloat16 where the card has it, else float16 with a GradScaler

    @classmethod
    def row_needs(cls, row: dict) -> tuple[str, ...]:
        try:
            return ("atlas",) if mask_source(row) == "atlas" else ()
        except RowFieldError:
            return ()  # the edit stage reports the bad field

    def __init__(self, config: DreamMotionConfig, context):
        super().__init__(config, context)
        self.recorder: KeyRecorder | None = None
        self.last_result: OptimisationResult | None = None
        self._masks: np.ndarray | None = None

    def check_row(self, row: dict) -> None:
        super().check_row(row)
        mask_source(row)

    def prepare_models(self, models: dict) -> None:
        scheduler, unet = models["scheduler"], models["unet"]
        prediction = scheduler.config.get("prediction_type", "epsilon")
        if prediction != "epsilon":
            raise ValueError(f"DreamMotion needs an epsilon-prediction model (V-DDS compares noise predictions), "
                             f"got prediction_type {prediction!r}")
        check_timesteps(self.config, scheduler)
        set_attention(unet, self.config.attention, self.config.attention_slice)
        if self.config.gradient_checkpointing:
            checkpoint_blocks(unet)
            # diffusers refuses enable_gradient_checkpointing for UNet3D; the framework's call is ours instead
            unet.enable_gradient_checkpointing = lambda: None

    def after_setup(self) -> None:
        unet = self.models["unet"]
        layers = spatial_key_layers(unet, self.config.key_layers)
        self.recorder = KeyRecorder(unet, layers)
        log.info("dreammotion: S-SSM/T-SSM keys of %d spatial self-attention layers (%s ...)", len(layers), layers[0])

    def close(self) -> None:
        if self.recorder is not None:
            self.recorder.remove()
            self.recorder = None
        super().close()

    def prompt_embeddings(self, prompt: str, source_prompt: str) -> PromptEmbeddings:
        """Embeddings [1, L, D] of "", the target and the source prompt; equal prompts share one tensor
        (rows of one text-encoder batch may differ in the last bit, and V-DDS of equal prompts must be 0)."""
        texts = list(dict.fromkeys(["", prompt, source_prompt]))
        embeddings = dict(zip(texts, self.encode_text(texts).split(1)))
        return PromptEmbeddings(uncond=embeddings[""], target=embeddings[prompt], source=embeddings[source_prompt])

    # --- per row -----------------------------------------------------------------------------

    def edit(self, row: dict, config: Any) -> np.ndarray:
        frames = np.asarray(row["frames"])
        if frames.ndim != 4:
            raise ValueError(f"frames must be [T, H, W, 3], got {frames.shape}")
        masks, source = row_masks(row, frames.shape[:3], config.atlas_alpha_threshold, self.context.storage)
        log.info("dreammotion %s: edit region from %s", row.get("job_id"), source)
        self._masks = masks
        try:
            return super().edit(row, config)
        finally:
            self._masks = None

    def edit_clip(self, row: dict, clip: np.ndarray, config: DreamMotionConfig) -> np.ndarray:
        source = self.encode_frames(clip).float()
        mask = None
        if self._masks is not None:
            mask = latent_masks(self._masks, config, tuple(source.shape[-2:])).to(self.device)
        prompts = self.prompt_embeddings(row["prompt"], row["source_prompt"])
        check_timesteps(config, self.models["scheduler"])  # a row's params may move t_max
        alphas = self.models["scheduler"].alphas_cumprod.float()
        result = optimise_latents(self.models["unet"], self.recorder, source, prompts, alphas, mask, config,
                                  self.generator(config.seed), self.precision, calibrate=config.calibrate)
        self.last_result = result
        if result.history:
            first, last = result.history[0], result.history[-1]
            log.info("dreammotion %s: %d iterations, S-SSM %.4g -> %.4g, T-SSM %.4g -> %.4g", row.get("job_id"),
                     len(result.history), first["s_ssm"], last["s_ssm"], first["t_ssm"], last["t_ssm"])
        return self.decode_latents(result.latents)
