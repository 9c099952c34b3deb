"""Settings of the ``lamd`` image-to-video method and where its models come from.

The model folder (a local path or an fsspec URL) holds ``mcd_vae/`` (:class:`~.mcd_vae.MCDVAE`)
and ``dmg/`` (:class:`~.dmg.MotionGenerator`), both ``save_pretrained`` folders, as
``python -m jobs.train_lamd`` writes them; a text-conditioned DMG keeps its frozen CLIP text
encoder in ``dmg/text_encoder/`` and ``dmg/tokenizer/``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pipeline.config import ConfigError, Resources
from stages.edit.diffusion.loading import ComponentSpec

COMPONENTS: dict[str, ComponentSpec] = {
    "mcd_vae": ComponentSpec("stages.edit.lamd.mcd_vae", "MCDVAE"),
    "dmg": ComponentSpec("stages.edit.lamd.dmg", "MotionGenerator"),
}
# inside the DMG's folder (``dmg``, else ``model``/dmg), unless text_encoder/tokenizer name their own
TEXT_COMPONENTS: dict[str, ComponentSpec] = {
    "text_encoder": ComponentSpec("transformers", "CLIPTextModel"),
    "tokenizer": ComponentSpec("transformers", "CLIPTokenizer", "tokenizer_config.json"),
}
# fields fixed when the actor loads its models; a row's params may not change them
LOAD_FIELDS: tuple[str, ...] = ("model", "mcd_vae", "dmg", "text_encoder", "tokenizer", "dtype", "device",
                                "resources")


@dataclass(frozen=True)
class LamdConfig:
    """LaMD image-to-video.

    Models: ``model`` is the trained folder (``mcd_vae/``, ``dmg/``); ``mcd_vae``/``dmg``/
    ``text_encoder``/``tokenizer`` name a component's own folder instead (the text parts are
    loaded only for a DMG trained with text, from its folder by default). ``dtype``/``device`` as
    every stage (``pipeline/devices.py``; float32 on the CPU).

    Sampling: ``num_inference_steps`` K = 200 DDIM steps over the DMG's 1000 training steps with
    ``eta`` 1 (respaced ancestral DDPM; 0 = deterministic DDIM); ``num_samples`` videos per row,
    sample ``i`` seeded with ``seed + i``. The first frame is the row's decoded frame 0, or the
    image at the row's ``first_frame_uri``, resized to the MCD-VAE's ``sample_size`` square by
    ``resize`` ("stretch", or "crop" to the centre square first). The row's ``prompt`` conditions
    a DMG trained with text and is ignored otherwise. ``fps`` of the output (None: the video's).
    """

    model: str = ""
    mcd_vae: str | None = None
    dmg: str | None = None
    text_encoder: str | None = None
    tokenizer: str | None = None
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    device: str = "auto"
    seed: int = 0
    num_samples: int = 1
    num_inference_steps: int = 200
    eta: float = 1.0
    resize: Literal["stretch", "crop"] = "stretch"
    fps: float | None = None
    previews: bool = True
    preview_width: int = 256
    resources: Resources = field(default_factory=lambda: Resources(num_cpus=1, num_gpus=0, min_actors=1,
                                                                   max_actors=1))

    def __post_init__(self) -> None:
        if self.num_samples < 1 or self.num_inference_steps < 1:
            raise ConfigError(f"num_samples and num_inference_steps must be >= 1, got {self.num_samples}, "
                              f"{self.num_inference_steps}")
        if not 0.0 <= self.eta <= 1.0:
            raise ConfigError(f"eta must be in [0, 1], got {self.eta}")
        if self.fps is not None and self.fps <= 0:
            raise ConfigError(f"fps must be > 0 or null, got {self.fps}")
        if self.preview_width < 16:
            raise ConfigError(f"preview_width must be >= 16, got {self.preview_width}")

    def dmg_folder(self) -> str:
        """The DMG's folder: ``dmg``, else ``model``/dmg."""
        return self.dmg or self.model.rstrip("/") + "/dmg"

    def check_models(self) -> None:
        """ConfigError unless every model component has a source."""
        missing = [name for name in COMPONENTS if not (getattr(self, name) or self.model)]
        if missing:
            raise ConfigError(f"lamd: set 'model' (a folder with mcd_vae/ and dmg/, from python -m jobs.train_lamd) "
                              f"or {missing[0]!r}")
