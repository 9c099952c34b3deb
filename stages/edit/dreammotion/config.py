"""DreamMotion's settings and components.

The paper publishes its backbones (ZeroScope, Show-1) and its objectives, not its numbers. Every
number below is therefore a setting; the defaults follow the delta-denoising-score (DDS) recipe
DreamMotion extends (200 iterations of SGD at learning rate 0.1 on a loss scaled by 2000,
guidance 7.5, timesteps in [50, 949)) and ZeroScope's training shape (576 x 320). Reasons and
the calibration procedure for ``lambda_s``/``lambda_t``: docs/dreammotion.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pipeline.config import ConfigError, Resources
from stages.edit.diffusion.config import LOAD_FIELDS, DiffusionConfig
from stages.edit.diffusion.loading import COMPONENTS as SD_COMPONENTS
from stages.edit.diffusion.loading import ComponentSpec

# ZeroScope / ModelScope text-to-video in diffusers layout: a UNet3D with SD's VAE, CLIP and scheduler
COMPONENTS: dict[str, ComponentSpec] = {
    **SD_COMPONENTS,
    "unet": ComponentSpec("diffusers", "UNet3DConditionModel", variant=True),
}
DREAMMOTION_LOAD_FIELDS: tuple[str, ...] = (*LOAD_FIELDS, "key_layers")


@dataclass(frozen=True)
class DreamMotionConfig(DiffusionConfig):
    """Score-distillation editing of a video's latents on a text-to-video UNet.

    Optimisation: ``iterations`` steps of ``optimizer`` ("sgd" or "adam") at ``learning_rate`` on
    ``loss_scale * (L_VDDS + lambda_s * L_S + lambda_t * L_T)``; each iteration draws one timestep
    uniformly from ``[t_min, t_max)`` and one noise for both videos and all three terms.
    ``guidance_scale`` is the classifier-free guidance of both V-DDS branches. ``key_layers``:
    module-name prefixes of the UNet whose spatial self-attention keys S-SSM and T-SSM compare
    (``up_blocks.2.attentions``: ZeroScope's 36 x 20-token level at 576 x 320).
    ``atlas_alpha_threshold``: an atlas alpha above it is the edit region when the row has no
    ``masks_uri``. ``calibrate`` logs each weighted term's gradient norm in the latents at the
    first iteration (the evidence ``lambda_s``/``lambda_t`` are set from).
    """

    model: str = "cerspense/zeroscope_v2_576w"
    width: int = 576
    height: int = 320
    num_frames: int = 16
    guidance_scale: float = 7.5
    gradient_checkpointing: bool = True
    iterations: int = 200
    optimizer: Literal["sgd", "adam"] = "sgd"
    learning_rate: float = 0.1
    loss_scale: float = 2000.0
    lambda_s: float = 1.0
    lambda_t: float = 1.0
    t_min: int = 50
    t_max: int = 949
    key_layers: tuple[str, ...] = ("up_blocks.2.attentions",)
    atlas_alpha_threshold: float = 0.5
    calibrate: bool = False  # log each weighted term's gradient norm at the first iteration
    resources: Resources = field(default_factory=lambda: Resources(num_cpus=1, num_gpus=0, min_actors=1,
                                                                   max_actors=1))

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "key_layers", tuple(self.key_layers))  # a list from code compares equal to YAML's
        if self.iterations < 0:
            raise ConfigError(f"iterations must be >= 0, got {self.iterations}")
        if self.learning_rate <= 0:
            raise ConfigError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.loss_scale <= 0:
            raise ConfigError(f"loss_scale must be > 0, got {self.loss_scale}")
        if self.lambda_s < 0 or self.lambda_t < 0:
            raise ConfigError(f"lambda_s and lambda_t must be >= 0, got {self.lambda_s}, {self.lambda_t}")
        if not 0 <= self.t_min < self.t_max:
            raise ConfigError(f"need 0 <= t_min < t_max, got t_min={self.t_min}, t_max={self.t_max}")
        if not self.key_layers or not all(isinstance(k, str) and k.strip() for k in self.key_layers):
            raise ConfigError(f"key_layers must name at least one UNet module prefix, got {self.key_layers!r}")
        if self.num_frames < 2:
            raise ConfigError(f"num_frames must be >= 2 (T-SSM compares frames), got {self.num_frames}")
        if not 0.0 <= self.atlas_alpha_threshold < 1.0:
            raise ConfigError(f"atlas_alpha_threshold must be in [0, 1), got {self.atlas_alpha_threshold}")
