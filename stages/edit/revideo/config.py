"""ReVideo's settings; defaults are the release's (MC-E/ReVideo ``configs/inference/config_test.yaml``,
``main/inference/sample_*.py``) unless a comment says otherwise. See docs/revideo.md."""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.config import ConfigError, Resources
from stages.edit.diffusion.config import LOAD_FIELDS, DiffusionConfig
from stages.edit.diffusion.loading import ComponentSpec

SVD_MODEL = "stabilityai/stable-video-diffusion-img2vid"

# unet/ and controlnet/ come from the converted ReVideo checkpoint (python -m stages.edit.revideo.convert);
# the VAE, image encoder and its preprocessor from the SVD model
COMPONENTS: dict[str, ComponentSpec] = {
    "unet": ComponentSpec("diffusers", "UNetSpatioTemporalConditionModel", ref_field="checkpoint"),
    "controlnet": ComponentSpec("stages.edit.revideo.control", "ReVideoControlModel", ref_field="checkpoint"),
    "vae": ComponentSpec("diffusers", "AutoencoderKLTemporalDecoder", variant=True),
    "image_encoder": ComponentSpec("transformers", "CLIPVisionModelWithProjection", variant=True),
    "feature_extractor": ComponentSpec("transformers", "CLIPImageProcessor", "preprocessor_config.json"),
}
REVIDEO_LOAD_FIELDS: tuple[str, ...] = (*LOAD_FIELDS, "checkpoint", "controlnet", "image_encoder",
                                        "feature_extractor", "forward_chunking", "vae_float32")


@dataclass(frozen=True)
class ReVideoConfig(DiffusionConfig):
    """ReVideo on Stable Video Diffusion.

    Models: ``checkpoint`` is the converted ReVideo folder (``unet/``, ``controlnet/``; a local path
    or an fsspec URL); ``unet``/``controlnet`` name either folder on its own instead. ``model``
    (SVD) supplies ``vae``, ``image_encoder`` and ``feature_extractor``.

    Clip: ``num_frames`` 14; ``max_area`` (the release: 1024*1024) sizes each row's clip to the
    video's aspect ratio at about that many pixels, rounded to ``size_multiple`` (64) as the
    release; without it the clip is ``width`` x ``height`` (512 x 320, the paper's training size).

    Conditioning (sgm values, not diffusers' pipeline's): ``fps_id`` (None: 10 for one box, 6 for
    several, as the release's single/multi-region scripts), ``motion_bucket_id`` 127, ``cond_aug``
    0.02. Sampling: ``num_inference_steps`` 25 (the config; the example scripts use 15), Karras
    sigmas ``sigma_min``..``sigma_max`` with ``rho``; guidance ``min_guidance_scale`` (frame 0) to
    ``guidance_scale`` (last frame) linearly; ``seed`` 23.

    Motion: Gaussian ``kernel_size``/``kernel_sigma`` (51, 10, unnormalised); with
    ``motion_source: track`` up to ``track_points`` of the trajectory stage's tracks inside the box.

    Memory: ``cfg_batch`` runs the unconditional and conditional passes as one batch (False: one
    after the other, half the activations); ``forward_chunking`` runs feed-forward layers one
    frame/token chunk at a time; ``vae_batch`` frames per VAE decode (the release decodes 1);
    ``vae_float32`` keeps the VAE in float32 whatever ``dtype`` (the release's VAE never runs in
    half precision).
    """

    model: str = SVD_MODEL
    checkpoint: str | None = None
    controlnet: str | None = None
    image_encoder: str | None = None
    feature_extractor: str | None = None
    width: int = 512
    height: int = 320
    num_frames: int = 14
    max_area: int | None = None
    size_multiple: int = 64
    num_inference_steps: int = 25
    guidance_scale: float = 4.0
    min_guidance_scale: float = 1.0
    sigma_min: float = 0.002
    sigma_max: float = 700.0
    rho: float = 7.0
    fps_id: int | None = None
    motion_bucket_id: int = 127
    cond_aug: float = 0.02
    conditioning_scale: float = 1.0
    seed: int = 23
    min_box_size: int = 64
    kernel_size: int = 51
    kernel_sigma: float = 10.0
    track_points: int = 10
    cfg_batch: bool = True
    forward_chunking: bool = False
    vae_batch: int = 1
    vae_float32: bool = True
    previews: bool = True
    preview_width: int = 384
    resources: Resources = field(default_factory=lambda: Resources(num_cpus=1, num_gpus=0, min_actors=1,
                                                                   max_actors=1))

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_frames < 3:
            raise ConfigError(f"num_frames must be >= 3 (start/end trajectories), got {self.num_frames}")
        if self.size_multiple < 8 or self.size_multiple % 8:
            raise ConfigError(f"size_multiple must be a positive multiple of 8, got {self.size_multiple}")
        if self.width % self.size_multiple or self.height % self.size_multiple:
            raise ConfigError(f"width and height must be multiples of size_multiple={self.size_multiple}, got "
                              f"{self.width}x{self.height}")
        if self.max_area is not None and self.max_area < self.size_multiple ** 2:
            raise ConfigError(f"max_area must be >= size_multiple^2, got {self.max_area}")
        if not 0 < self.sigma_min < self.sigma_max or self.rho <= 0:
            raise ConfigError(f"need 0 < sigma_min < sigma_max and rho > 0, got {self.sigma_min}, "
                              f"{self.sigma_max}, {self.rho}")
        if self.min_guidance_scale < 0:
            raise ConfigError(f"min_guidance_scale must be >= 0, got {self.min_guidance_scale}")
        if self.cond_aug < 0 or self.min_box_size < 1 or self.track_points < 1:
            raise ConfigError("cond_aug must be >= 0, min_box_size and track_points >= 1")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0 or self.kernel_sigma <= 0:
            raise ConfigError(f"kernel_size must be odd and kernel_sigma > 0, got {self.kernel_size}, "
                              f"{self.kernel_sigma}")
        if self.attention_slice is not None:
            raise ConfigError("attention_slice is not available for the SVD UNet; use forward_chunking or "
                              "cfg_batch: false to save memory")

    def clip_size(self, height: int, width: int) -> tuple[int, int]:
        """(width, height) of the clip for a video of ``height`` x ``width`` pixels.

        With ``max_area``: scale to about that area keeping the aspect ratio, round each side to a
        multiple of ``size_multiple`` (the release's ``resize_pil_image``), at least one multiple.
        """
        if self.max_area is None:
            return self.width, self.height
        k = (self.max_area / float(height * width)) ** 0.5
        m = self.size_multiple
        return max(m, int(round(width * k / m)) * m), max(m, int(round(height * k / m)) * m)
