"""The ``stablevideo`` editing method: StableVideo (ICCV 2023) on the atlas stage's layered atlas.

Per row (facts and sources in docs/stablevideo.md): read the fit (``atlas_dir``), choose the
keyframes (the row's ``keyframes`` or :func:`.keyframes.default_keyframes`), edit the foreground
atlas from the keyframes with ControlNet-canny (:mod:`.foreground`), re-paint the background atlas
with ControlNet-depth when the row has a ``bg_prompt`` (:mod:`.background`; empty keeps it
bit-identical), and render every frame from the two atlases through the fitted UVs and alpha.
One SD 1.5 stack serves both ControlNets; the DPT is a component too (``depth_model``), run through
the depth stage's :class:`~stages.depth.DepthEstimator`.
"""

from __future__ import annotations

import io
import logging
from typing import Any

import cv2
import numpy as np
import torch

from pipeline import previews, storage
from pipeline.stage import add_output
from stages.atlas.artifacts import AtlasFit, WindowedFitError, load_fit, read_meta
from stages.atlas.render import render_frames
from stages.edit.base import RowFieldError
from stages.edit.diffusion.base import DiffusionEditStage
from stages.edit.stablevideo.background import edit_background
from stages.edit.stablevideo.config import COMPONENTS, STABLEVIDEO_LOAD_FIELDS, StableVideoConfig
from stages.edit.stablevideo.foreground import ForegroundEdit, edit_foreground
from stages.edit.stablevideo.keyframes import NoForegroundError, crop_box, default_keyframes, parse_keyframes

log = logging.getLogger(__name__)


def row_text(row: dict, key: str) -> str:
    value = row.get(key)
    return value.strip() if isinstance(value, str) else ""


def full_prompt(prompt: str, added: str) -> str:
    """The release's ``prompt + ", " + a_prompt`` (just ``prompt`` when nothing is added)."""
    return f"{prompt}, {added}" if added.strip() else prompt


def load_single_fit(atlas_dir: str, options: Any = None) -> AtlasFit:
    """The one atlas fit at ``atlas_dir``; RowFieldError when it is a long clip's overlapping windows.

    StableVideo edits one atlas with diffusion; windows fitted separately would each get a
    different edit, and the video would change at every seam. Called before any model work.
    """
    try:
        return load_fit(atlas_dir, options)
    except WindowedFitError:
        windows = read_meta(atlas_dir, options)["windows"]
    spans = ", ".join(f"{w['start']}-{w['stop'] - 1}" for w in windows)
    raise RowFieldError(
        f"method 'stablevideo' needs one atlas of the whole clip, but the clip was fitted in {len(windows)} "
        f"overlapping windows (frames {spans}), which "
        "diffusion would edit differently; decode fewer frames (decode.max_frames, decode.stride) or smaller "
        "frames so one fit holds the clip, or raise atlas.max_frames/max_pixels (atlas.long_clips: refuse "
        "makes such rows fail in the atlas stage instead)")


def load_coverage(atlas_dir: str, options: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """(fg_coverage, bg_coverage) bool [R, R] of a fit's ``maps.npz``."""
    data = storage.read_bytes(storage.join_url(atlas_dir, "maps.npz"), options)
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        return z["fg_coverage"].astype(bool), z["bg_coverage"].astype(bool)


def load_processor(config: StableVideoConfig) -> Any:
    """The DPT's image processor (its pixel normalisation), or None for DPT's defaults (mean and
    std 0.5, those of the MiDaS DPT models) when the model folder has none."""
    from transformers import AutoImageProcessor

    from stages.edit.diffusion.loading import _local_path, is_local, is_remote

    ref = config.depth_model
    if is_remote(ref):
        return None
    try:
        return AutoImageProcessor.from_pretrained(_local_path(ref) if is_local(ref) else ref)
    except (OSError, ValueError) as exc:
        log.warning("depth model %s has no usable image processor (%s); using DPT defaults", ref, exc)
        return None


class StableVideoStage(DiffusionEditStage):
    method = "stablevideo"
    config_class = StableVideoConfig
    components = COMPONENTS  # type: ignore[assignment]
    load_fields = STABLEVIDEO_LOAD_FIELDS
    needs = ("atlas",)
    required_fields = ("prompt",)

    def __init__(self, config: StableVideoConfig, context):
        super().__init__(config, context)
        self.depth_processor: Any = None

    @classmethod
    def row_needs(cls, row: dict) -> tuple[str, ...]:
        """No atlas fit for a row that will fail its field checks (the edit stage reports them)."""
        try:
            cls.check_fields(row)
        except RowFieldError:
            return ()
        return cls.needs

    @classmethod
    def check_fields(cls, row: dict) -> None:
        if not row_text(row, "prompt"):
            raise RowFieldError(f"method {cls.method!r} needs row field 'prompt' (the foreground edit)")
        frames = row.get("frames")
        if frames is not None:
            parse_keyframes(row.get("keyframes"), len(frames))

    def check_row(self, row: dict) -> None:
        self.check_fields(row)

    # --- actor lifecycle -------------------------------------------------------------------

    def prepare_models(self, models: dict) -> None:
        cfg = self.config
        nets = [models[n] for n in ("unet", "controlnet_canny", "controlnet_depth")]
        if cfg.attention == "eager":
            from diffusers.models.attention_processor import AttnProcessor

            for net in nets:
                net.set_attn_processor(AttnProcessor())
        if cfg.attention_slice:
            for net in nets:
                net.set_attention_slice(cfg.attention_slice)

    def after_setup(self) -> None:
        vae = self.models["vae"]
        factor = 2 ** (len(vae.config.block_out_channels) - 1)
        for name in ("controlnet_canny", "controlnet_depth"):
            net = self.models[name]
            net.to(self.device)  # used every step, even with cpu_offload
            down = 2 ** (len(net.config.conditioning_embedding_out_channels) - 1)
            if down != factor:
                raise ValueError(f"{name} downsamples its hint {down}x but the VAE {factor}x")
        self.depth_processor = load_processor(self.config)

    def close(self) -> None:
        self.depth_processor = None
        super().close()

    # --- what foreground/background need (the Diffuser protocol) ----------------------------

    def scheduler(self) -> Any:
        return self.models["scheduler"]

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int, int]:
        vae = self.models["vae"]
        factor = 2 ** (len(vae.config.block_out_channels) - 1)
        return (1, vae.config.latent_channels, height // factor, width // factor)

    def encode_image(self, image: np.ndarray, generator: torch.Generator) -> torch.Tensor:
        """Scaled latents [1, C, h, w] of uint8 [H, W, 3] (a posterior sample, as ldm's encoding)."""
        return self.encode_frames(image[None], generator)[:, :, 0].float()

    def decode_image(self, latents: torch.Tensor) -> np.ndarray:
        return self.decode_latents(latents[:, :, None])[0]

    def eps_fn(self, control: str, hint: np.ndarray, prompt: str, config: StableVideoConfig):
        from stages.edit.stablevideo.sampling import controlled_eps

        text = self.encode_text([full_prompt(prompt, config.a_prompt)])
        uncond = self.encode_text([config.n_prompt])
        hint_t = torch.from_numpy(np.ascontiguousarray(hint)).permute(2, 0, 1)[None].to(self.device)
        return controlled_eps(self.models["unet"], self.models[control], hint_t, text, uncond,
                              config.guidance_scale, config.conditioning_scale)

    def predict_depth(self, image: np.ndarray) -> np.ndarray:
        """Relative inverse depth float32 [H, W] of uint8 [H, W, 3] by the DPT (the depth stage's estimator)."""
        from stages.depth import DepthEstimator

        with self.on_device("depth_model") as model:
            size = model.config.image_size
            size = int(size[0] if isinstance(size, (list, tuple)) else size)
            estimator = DepthEstimator(model, self.depth_processor, input_size=size, device=str(self.device),
                                       dtype=self.dtype)
            return estimator.predict_image(image)

    # --- per row -----------------------------------------------------------------------------

    def edit(self, row: dict, config: StableVideoConfig) -> np.ndarray:
        changed = [f for f in self.load_fields if getattr(config, f) != getattr(self.config, f)]
        if changed:
            raise RowFieldError(f"params may not override {changed[0]!r} of {self.method!r}: the actor "
                                "loaded its models with the job's value")
        return self.edit_clip(row, np.asarray(row["frames"]), config)

    def edit_clip(self, row: dict, clip: np.ndarray, config: StableVideoConfig) -> np.ndarray:
        """Every decoded frame edited (the atlas was fitted on all of them; no clip selection)."""
        frames = clip
        atlas_dir = row.get("atlas_dir")
        if not isinstance(atlas_dir, str) or not atlas_dir:
            raise RowFieldError("method 'stablevideo' needs the atlas stage's 'atlas_dir' on the row")
        fit = load_single_fit(atlas_dir, self.context.storage)
        if fit.alpha.shape != frames.shape[:3]:
            raise ValueError(f"atlas fit at {atlas_dir} is for {fit.alpha.shape} frames, "
                             f"the row has {frames.shape[:3]}")
        keyframes = self.keyframes(row, fit.alpha, config)
        if not self.models:
            self.setup()
        fg = edit_foreground(self, frames, fit, keyframes, row_text(row, "prompt"), config,
                             self.generator(config.seed))
        bg_atlas = fit.bg_atlas
        bg_prompt = row_text(row, "bg_prompt")
        if bg_prompt:
            _, bg_cov = load_coverage(atlas_dir, self.context.storage)
            bg_atlas = edit_background(self, self.predict_depth, fit.bg_atlas, bg_cov, bg_prompt, config,
                                       self.generator(config.seed))
        edited = render_frames(fg.atlas, bg_atlas, fit.uv_fg, fit.uv_bg, fit.alpha)
        if config.save_atlases and row.get("job_id") and row.get("video_id"):
            self.write_outputs(row, fg, bg_atlas, bool(bg_prompt))
        return edited

    @staticmethod
    def keyframes(row: dict, alpha: np.ndarray, config: StableVideoConfig) -> list[int]:
        """The row's keyframes (checked to hold foreground) or the default choice."""
        given = parse_keyframes(row.get("keyframes"), len(alpha))
        if given is None:
            return default_keyframes(alpha, config.num_keyframes, config.alpha_threshold)
        for k in given:
            try:
                crop_box(alpha[k], config.alpha_threshold, config.crop_border, config.crop_min_size)
            except NoForegroundError as exc:
                raise NoForegroundError(f"keyframes: frame {k} of the atlas has no foreground "
                                        f"(alpha >= {config.alpha_threshold})") from exc
        return given

    def write_outputs(self, row: dict, fg: ForegroundEdit, bg_atlas: np.ndarray, bg_edited: bool) -> None:
        """Edited atlases and keyframe edits (crop before | start | edit) as PNGs under previews/."""
        base = storage.join_url(self.context.output_url, "previews", storage.safe_id(str(row["video_id"])))
        job = storage.safe_id(str(row["job_id"]))
        opts = self.context.storage
        add_output(row, "edited_fg_atlas", previews.write_png(fg.atlas, storage.join_url(
            base, f"{job}-stablevideo-fg-atlas.png"), opts))
        if bg_edited:
            add_output(row, "edited_bg_atlas", previews.write_png(bg_atlas, storage.join_url(
                base, f"{job}-stablevideo-bg-atlas.png"), opts))
        for kf in fg.keyframes:
            h, w = kf.source.shape[:2]
            start = kf.start if kf.start is not None else np.zeros_like(kf.source)
            edit = np.clip(np.rint(kf.edit * 255), 0, 255).astype(np.uint8)
            gap = np.full((h, 2, 3), 255, np.uint8)
            strip = np.concatenate([kf.source, gap, start, gap, edit], 1)
            if h < 64:
                strip = cv2.resize(strip, (strip.shape[1] * 64 // h, 64), interpolation=cv2.INTER_NEAREST)
            add_output(row, f"keyframe_{kf.frame}", previews.write_png(strip, storage.join_url(
                base, f"{job}-stablevideo-keyframe-{kf.frame:04d}.png"), opts))
