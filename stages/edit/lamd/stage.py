"""The ``lamd`` editing method: image-to-video with a trained MCD-VAE and DMG, one row per actor call.

Per row: the first frame (the decoded frame 0, or the image at ``first_frame_uri``) at the
MCD-VAE's resolution -> content features (E_I) -> conditioning tokens (+ the row's ``prompt``
when the DMG was trained with text) -> ``num_samples`` motion latents, each from the K-step
sampler seeded with ``seed + i`` -> D_V decodes L frames per latent. Sample 0 is the row's
output video (``output_uri``, with the input|output preview of the encode stage); samples 1..
are MP4s ``outputs.sample_<i>``; with ``previews`` all samples side by side are
``outputs.lamd_samples``.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import fields
from types import SimpleNamespace

import cv2
import numpy as np
import torch

from pipeline import devices, media, previews, storage
from pipeline.config import ConfigError
from pipeline.stage import add_output
from stages.edit.base import EditStage, RowFieldError
from stages.edit.diffusion.loading import check_sources, load_components
from stages.edit.lamd.config import COMPONENTS, LOAD_FIELDS, TEXT_COMPONENTS, LamdConfig
from stages.edit.lamd.sampler import sample_motion
from stages.edit.lamd.text import encode_prompts
from stages.edit.revideo.inputs import read_image

log = logging.getLogger(__name__)


def square_frame(image: np.ndarray, size: int, resize: str) -> np.ndarray:
    """uint8 [size, size, 3] from an RGB image uint8 [H, W, 3]: stretched, or centre-cropped to a square first."""
    if resize == "crop":
        h, w = image.shape[:2]
        side = min(h, w)
        image = image[(h - side) // 2:(h - side) // 2 + side, (w - side) // 2:(w - side) // 2 + side]
    if image.shape[:2] == (size, size):
        return np.ascontiguousarray(image)
    interp = cv2.INTER_AREA if image.shape[0] * image.shape[1] > size * size else cv2.INTER_CUBIC
    return cv2.resize(image, (size, size), interpolation=interp)


def to_pixels(frame: np.ndarray) -> torch.Tensor:
    """uint8 [H, W, 3] -> float [1, 3, H, W] in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1)[None].float() / 127.5 - 1.0


def to_frames(video: torch.Tensor) -> np.ndarray:
    """float [3, L, H, W] in [-1, 1] -> uint8 [L, H, W, 3] (clamped, rounded)."""
    return video.float().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8).permute(1, 2, 3, 0).cpu().numpy()


class LamdStage(EditStage):
    method = "lamd"
    config_class = LamdConfig

    def __init__(self, config: LamdConfig, context):
        super().__init__(config, context)
        self.models: dict = {}
        self.device = torch.device("cpu")
        self.dtype = torch.float32

    def preflight(self) -> None:
        self.config.check_models()
        devices.check_device(self.config.device, self.resources.num_gpus, self.name)
        devices.resolve_dtype(self.config.dtype, torch.device("cpu"))
        check_sources(self.config, COMPONENTS)

    def setup(self) -> None:
        cfg = self.config
        cfg.check_models()
        self.device = devices.resolve_device(cfg.device, self.resources.num_gpus, self.name)
        self.dtype = devices.resolve_dtype(cfg.dtype, self.device)
        models = load_components(cfg, COMPONENTS)
        if models["dmg"].config.text_embed_dim:
            text_source = SimpleNamespace(model=cfg.dmg_folder(), text_encoder=cfg.text_encoder,
                                          tokenizer=cfg.tokenizer)
            models.update(load_components(text_source, TEXT_COMPONENTS))
        check_compatible(models["mcd_vae"], models["dmg"])
        for module in models.values():
            if isinstance(module, torch.nn.Module):
                module.to(self.device, self.dtype)
        self.models = models
        vae = models["mcd_vae"].config
        log.info("lamd: MCD-VAE %dx%d, %d frames, latent %d; DMG %s on %s in %s", vae.sample_size, vae.sample_size,
                 vae.num_frames, vae.latent_channels, models["dmg"].config.block_out_channels, self.device, self.dtype)

    def close(self) -> None:
        self.models = {}

    # --- per row -----------------------------------------------------------------------------

    def first_frame(self, row: dict) -> np.ndarray:
        """The row's first frame, uint8 [H, W, 3]: ``first_frame_uri`` when given, else decoded frame 0."""
        uri = row.get("first_frame_uri")
        if isinstance(uri, str) and uri.strip():
            return read_image(uri, "first_frame_uri", self.context.storage)
        frames = np.asarray(row.get("frames"))
        if frames.ndim != 4 or len(frames) == 0 or frames.shape[-1] != 3:
            raise RowFieldError(f"lamd needs a first frame: the video decoded to {frames.shape} and the row has "
                                "no first_frame_uri")
        return frames[0]

    def edit(self, row: dict, config: LamdConfig) -> np.ndarray:
        changed = [f.name for f in fields(config) if f.name in LOAD_FIELDS
                   and getattr(config, f.name) != getattr(self.config, f.name)]
        if changed:
            raise RowFieldError(f"params may not override {changed[0]!r} of 'lamd': the actor loaded its models "
                                "with the job's value")
        if not self.models:
            self.setup()
        vae = self.models["mcd_vae"]
        image = square_frame(self.first_frame(row), vae.config.sample_size, config.resize)
        samples = self.generate(image, row.get("prompt"), config)
        row["frames"] = np.repeat(image[None], len(samples[0]), 0)  # the input, for the before|after preview
        row["fps"] = float(config.fps or row.get("fps") or 8.0)
        if len(samples) > 1 and row.get("job_id") and row.get("video_id"):
            self.write_samples(row, samples, config)
        return samples[0]

    @torch.no_grad()
    def generate(self, image: np.ndarray, prompt: object, config: LamdConfig) -> list[np.ndarray]:
        """``num_samples`` clips uint8 [L, H, W, 3] animating ``image`` uint8 [H, W, 3]."""
        vae, dmg = self.models["mcd_vae"], self.models["dmg"]
        content = vae.encode_content(to_pixels(image).to(self.device, self.dtype))
        tokens = dmg.conditioning(content.latent, self.encode_prompt(prompt))
        h, w = content.latent.shape[-2:]
        out = []
        for i in range(config.num_samples):
            generator = torch.Generator("cpu").manual_seed(int(config.seed) + i)
            motion = sample_motion(dmg, tokens, config.num_inference_steps, generator, config.eta, (h, w))
            out.append(to_frames(vae.decode(motion.to(self.dtype), content)[0]))
        return out

    def encode_prompt(self, prompt: object) -> torch.Tensor | None:
        """CLIP text states [1, N, D] of the row's prompt for a text-conditioned DMG, else None."""
        if "text_encoder" not in self.models:
            return None
        text = prompt if isinstance(prompt, str) else ""
        return encode_prompts(self.models["text_encoder"], self.models["tokenizer"], [text]).to(self.dtype)

    def write_samples(self, row: dict, samples: list[np.ndarray], config: LamdConfig) -> None:
        vid, job = storage.safe_id(str(row["video_id"])), storage.safe_id(str(row["job_id"]))
        fps = row["fps"]
        for i, clip in enumerate(samples[1:], start=1):
            url = storage.join_url(self.context.output_url, "videos", vid, f"{job}-sample{i}.mp4")
            fd, tmp = tempfile.mkstemp(suffix=".mp4", prefix="vidflow-lamd-")
            os.close(fd)
            try:
                media.encode(clip, tmp, fps)
                storage.upload_file(tmp, url, self.context.storage)
            finally:
                os.unlink(tmp)
            add_output(row, f"sample_{i}", url)
        if config.previews:
            grid = samples[0]
            for clip in samples[1:]:
                grid = previews.side_by_side(grid, clip)
            url = storage.join_url(self.context.output_url, "previews", vid, f"{job}-lamd-samples.webp")
            add_output(row, "lamd_samples", previews.write_animation(
                grid, url, fps, width=min(config.preview_width * len(samples), grid.shape[2]),
                options=self.context.storage))


def check_compatible(vae, dmg) -> None:
    """ConfigError when the DMG was not trained on this MCD-VAE's latents (widths, latent size)."""
    v, d = vae.config, dmg.config
    h, w = vae.latent_size(v.sample_size, v.sample_size)
    if (v.latent_channels, v.content_channels) != (d.latent_channels, d.content_channels):
        raise ConfigError(f"lamd: the DMG takes latent/content widths {d.latent_channels}/{d.content_channels}, "
                          f"the MCD-VAE gives {v.latent_channels}/{v.content_channels}")
    if (h, w) != (d.sample_size, d.sample_size):
        raise ConfigError(f"lamd: the DMG samples {d.sample_size}x{d.sample_size} latents, the MCD-VAE's are {h}x{w}")
