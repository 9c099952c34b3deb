"""The config every diffusion editing method shares: models, precision, sampling, shapes, memory.

A method's config subclasses :class:`DiffusionConfig` (a frozen dataclass) and adds its own
fields. Defaults run on CPU so CI works; production GPU pools are set in ``jobs/configs/*.yaml``.
Fields in :data:`LOAD_FIELDS` decide what ``setup()`` loads and how; a row's ``params`` may
not change them (the actor has already loaded its models).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pipeline.config import ConfigError, Resources

# fields fixed when the actor loads its models; per-row overrides of these are refused
LOAD_FIELDS: tuple[str, ...] = (
    "model", "unet", "vae", "text_encoder", "tokenizer", "scheduler", "revision", "variant", "dtype", "device",
    "attention", "attention_slice", "vae_slicing", "vae_tiling", "cpu_offload", "gradient_checkpointing",
    "resources",
)

Dtype = Literal["auto", "float32", "float16", "bfloat16"]


@dataclass(frozen=True)
class DiffusionConfig:
    """Models, precision, sampling, clip shape and memory options of a diffusion method.

    Models: ``model`` is a hub id or a local directory in diffusers layout (``model_index.json``
    and ``unet/ vae/ text_encoder/ tokenizer/ scheduler/``), loaded with ``from_pretrained``;
    ``unet``/``vae``/... name a component's own hub id or folder instead of ``model``'s subfolder.
    ``HF_HUB_OFFLINE=1`` is honoured (a hub id must then be in the local cache).

    Precision and placement (``pipeline/devices.py``): ``dtype`` "auto" is float32 on the CPU and
    float16 on CUDA, or bfloat16 on cards that have it for methods that train (they keep trainable
    tensors float32 and scale float16 losses: ``precision.py``); ``device`` "auto" is CUDA only
    when ``resources.num_gpus > 0`` and a GPU is visible. Sampling: ``seed`` seeds every random draw of a row (noise,
    timesteps, VAE posterior) through ``torch.Generator``; ``num_inference_steps``;
    ``guidance_scale`` (classifier-free guidance, 1 = off).

    Clip: ``num_frames`` frames taken every ``frame_stride`` from ``start_frame`` of the decoded
    video (too few is a row error), resized to ``width`` x ``height`` (multiples of 8) by
    ``resize`` ("stretch" like the releases, or "crop" to keep the aspect ratio).

    Memory: ``attention`` "sdpa" (PyTorch scaled-dot-product: flash / memory-efficient kernels
    on GPU) or "eager" (plain softmax, for debugging); ``attention_slice`` computes attention in
    chunks of that many queries; ``vae_slicing`` runs the VAE ``vae_batch`` frames at a time;
    ``vae_tiling`` decodes in overlapping tiles; ``cpu_offload`` keeps the text encoder and VAE
    on the CPU and moves each to the device only while it runs; ``gradient_checkpointing``
    recomputes activations in the backward pass of methods that train.

    ``save_weights`` stores the weights a row tunes as a safetensors artifact.
    """

    model: str = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    unet: str | None = None
    vae: str | None = None
    text_encoder: str | None = None
    tokenizer: str | None = None
    scheduler: str | None = None
    revision: str | None = None
    variant: str | None = None
    dtype: Dtype = "auto"
    device: str = "auto"
    seed: int = 0
    num_inference_steps: int = 50
    guidance_scale: float = 7.5
    width: int = 512
    height: int = 512
    num_frames: int = 24
    frame_stride: int = 1
    start_frame: int = 0
    resize: Literal["stretch", "crop"] = "stretch"
    attention: Literal["sdpa", "eager"] = "sdpa"
    attention_slice: int | None = None
    vae_slicing: bool = True
    vae_batch: int = 8
    vae_tiling: bool = False
    cpu_offload: bool = False
    gradient_checkpointing: bool = False
    save_weights: bool = False
    resources: Resources = field(default_factory=lambda: Resources(num_cpus=1, num_gpus=0, min_actors=1,
                                                                   max_actors=1))

    def __post_init__(self) -> None:
        if not self.model.strip():
            raise ConfigError("model must name a hub id or a local path")
        if self.width < 8 or self.height < 8 or self.width % 8 or self.height % 8:
            raise ConfigError(f"width and height must be positive multiples of 8, got {self.width}x{self.height}")
        for name in ("num_frames", "frame_stride", "num_inference_steps", "vae_batch"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.start_frame < 0:
            raise ConfigError(f"start_frame must be >= 0, got {self.start_frame}")
        if self.guidance_scale < 0:
            raise ConfigError(f"guidance_scale must be >= 0, got {self.guidance_scale}")
        if self.attention_slice is not None and self.attention_slice < 1:
            raise ConfigError(f"attention_slice must be >= 1 or null, got {self.attention_slice}")
        if not (self.device == "auto" or self.device == "cpu" or self.device.startswith(("cuda", "mps"))):
            raise ConfigError(f"device must be auto, cpu, cuda[:N] or mps, got {self.device!r}")

    @property
    def frames_needed(self) -> int:
        """Decoded frames a row must have: ``start_frame + (num_frames - 1) * frame_stride + 1``."""
        return self.start_frame + (self.num_frames - 1) * self.frame_stride + 1
