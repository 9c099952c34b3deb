"""StableVideo's settings; defaults are the release's (rese1f/StableVideo ``app.py``, ``atlas_data.py``)
unless a comment says otherwise. See docs/stablevideo.md."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pipeline.config import ConfigError, Resources
from stages.edit.diffusion.config import LOAD_FIELDS, DiffusionConfig
from stages.edit.diffusion.loading import COMPONENTS as SD_COMPONENTS
from stages.edit.diffusion.loading import ComponentSpec

# one SD 1.5 stack shared by both ControlNets (the release loads two full copies)
COMPONENTS: dict[str, ComponentSpec] = {
    **SD_COMPONENTS,
    "controlnet_canny": ComponentSpec("diffusers", "ControlNetModel", ref_field="controlnet_canny", variant=True),
    "controlnet_depth": ComponentSpec("diffusers", "ControlNetModel", ref_field="controlnet_depth", variant=True),
    "depth_model": ComponentSpec("transformers", "DPTForDepthEstimation", ref_field="depth_model"),
}
STABLEVIDEO_LOAD_FIELDS: tuple[str, ...] = (*LOAD_FIELDS, "controlnet_canny", "controlnet_depth", "depth_model")

A_PROMPT = "best quality, extremely detailed"
N_PROMPT = ("longbody, lowres, bad anatomy, bad hands, missing fingers, extra digit, fewer digits, cropped, "
            "worst quality, low quality")


@dataclass(frozen=True)
class StableVideoConfig(DiffusionConfig):
    """StableVideo on a fitted layered atlas (the ``atlas`` stage's), with ControlNet depth and canny.

    Models: ``model`` (SD 1.5: unet, vae, text encoder, tokenizer, DDIM scheduler) is shared by
    ``controlnet_canny`` and ``controlnet_depth`` (hub ids or local folders); ``depth_model`` is
    the DPT of the depth stage (``Intel/dpt-hybrid-midas`` = the release's MiDaS dpt_hybrid).

    The method edits every decoded frame: the atlas was fitted on them. The framework's clip
    fields (``width``, ``height``, ``num_frames``, ``frame_stride``, ``start_frame``, ``resize``)
    are not used; the diffusion size comes from ``image_resolution`` and ``size_multiple``.

    Sampling: DDIM ``num_inference_steps`` 20, eta 0, ``guidance_scale`` 9 against ``n_prompt``;
    prompts are ``prompt + ", " + a_prompt``; ``conditioning_scale`` 1 (the release's
    ``strength``). Foreground: ``strength`` (the release's ``s``) 0.9 for keyframes after the
    first (diffusers img2img convention); ``canny_low``/``canny_high`` 100/200; crops are the
    bounding box of ``alpha >= alpha_threshold`` (0.99) grown by ``crop_border`` (30) pixels and
    at least ``crop_min_size`` (129) pixels. Background: depth of the background atlas cropped
    to its covered area (the DPT's own canvas: 384 for DPT-Hybrid = the release's
    ``detect_resolution``).

    Aggregation: ``aggregate: median`` (the release's default) or ``net`` (the median refined by
    the aggregation net: ``net_iterations`` 500, SGD ``net_lr`` 1e-3, ``net_momentum`` 0.9).
    """

    num_inference_steps: int = 20
    guidance_scale: float = 9.0
    seed: int = 0
    controlnet_canny: str = "lllyasviel/sd-controlnet-canny"
    controlnet_depth: str = "lllyasviel/sd-controlnet-depth"
    depth_model: str = "Intel/dpt-hybrid-midas"
    a_prompt: str = A_PROMPT
    n_prompt: str = N_PROMPT
    image_resolution: int = 512  # short side of the diffusion canvas, before rounding to size_multiple
    size_multiple: int = 64  # the release's resize_image rounding
    conditioning_scale: float = 1.0
    strength: float = 0.9
    canny_low: int = 100
    canny_high: int = 200
    num_keyframes: int = 3  # when the row has no `keyframes` (the release's UI: "20, 40, 60" of 70 frames)
    alpha_threshold: float = 0.99  # atlas_data.py mask_alpha_threshold
    crop_border: int = 30  # atlas_data.py masks_border_expansion
    crop_min_size: int = 129  # 2 ** num_scales + 1
    scatter_min_alpha: float = 0.5  # crop pixels scattered into a keyframe atlas (unpublished; the release: all)
    uncovered: Literal["original", "black"] = "original"  # foreground texels no keyframe covered
    aggregate: Literal["median", "net"] = "median"
    net_iterations: int = 500
    net_lr: float = 1e-3
    net_momentum: float = 0.9
    save_atlases: bool = True  # write the edited atlases and keyframe edits as PNG outputs
    resources: Resources = field(default_factory=lambda: Resources(num_cpus=1, num_gpus=0, min_actors=1,
                                                                   max_actors=1))

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.strength <= 1.0:
            raise ConfigError(f"strength must be in [0, 1], got {self.strength}")
        if self.size_multiple < 8 or self.size_multiple % 8:
            raise ConfigError(f"size_multiple must be a positive multiple of 8, got {self.size_multiple}")
        if self.image_resolution < self.size_multiple:
            raise ConfigError(f"image_resolution must be >= size_multiple ({self.size_multiple}), "
                              f"got {self.image_resolution}")
        if not 0 <= self.canny_low <= self.canny_high:
            raise ConfigError(f"need 0 <= canny_low <= canny_high, got {self.canny_low}, {self.canny_high}")
        if self.num_keyframes < 1:
            raise ConfigError(f"num_keyframes must be >= 1, got {self.num_keyframes}")
        if not 0.0 < self.alpha_threshold <= 1.0 or not 0.0 < self.scatter_min_alpha <= 1.0:
            raise ConfigError(f"alpha_threshold and scatter_min_alpha must be in (0, 1], got "
                              f"{self.alpha_threshold}, {self.scatter_min_alpha}")
        if self.crop_border < 0 or self.crop_min_size < 1:
            raise ConfigError(f"crop_border must be >= 0 and crop_min_size >= 1, got {self.crop_border}, "
                              f"{self.crop_min_size}")
        if self.net_iterations < 1 or self.net_lr <= 0 or not 0.0 <= self.net_momentum < 1.0:
            raise ConfigError("net_iterations must be >= 1, net_lr > 0 and net_momentum in [0, 1)")
        if self.conditioning_scale < 0:
            raise ConfigError(f"conditioning_scale must be >= 0, got {self.conditioning_scale}")
