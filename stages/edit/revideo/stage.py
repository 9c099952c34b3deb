"""The ``revideo`` editing method: SVD + ReVideo's control module, one row per actor call.

Per row (facts and sources in docs/revideo.md):

1. inputs, validated before any model work (:mod:`.inputs`): the edit region (``edit_box`` or
   ``mask_uri``), the motion (``trajectories`` or ``motion_source: track``) and the optional
   ``edited_first_frame_uri``, mapped into the clip (``num_frames`` = 14 frames, sized by
   ``max_area`` or ``width`` x ``height``);
2. conditions: region map M, content video (the clip with the region at -1), c_mot (the trajectory
   rasteriser, ``dy,dx``, Gaussian 51/10); the reference frame's CLIP image embedding and its VAE
   latent (mode of the posterior of ``ref + cond_aug * noise``, unscaled, repeated over frames);
3. EDM Euler sampling (:mod:`.sampling`) of the UNet with the control residuals, per-frame guidance
   1 -> 4 against the unconditional pass (zero image embedding, zero conditioning latents, same
   control inputs); VAE decode ``vae_batch`` frames at a time;
4. previews: the edited clip with the boxes and trajectories drawn, and the motion map.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from pipeline import previews, storage
from pipeline.stage import add_output
from stages.edit.base import RowFieldError
from stages.edit.diffusion.base import DiffusionEditStage
from stages.edit.revideo import sampling
from stages.edit.revideo.conditions import content_video, region_map
from stages.edit.revideo.config import COMPONENTS, REVIDEO_LOAD_FIELDS, ReVideoConfig
from stages.edit.revideo.denoise import sample_revideo
from stages.edit.revideo.inputs import RowInputs, check_motion_fields, motion_source, read_inputs
from stages.motion_conditions import gaussian_kernel, motion_conditions

log = logging.getLogger(__name__)


def added_time_ids(fps_id: int, motion_bucket_id: int, cond_aug: float) -> torch.Tensor:
    """SVD's added time ids, float32 [1, 3]: the sgm values as given (diffusers' pipeline passes
    ``fps - 1``; the release's conditioner takes ``fps_id`` itself)."""
    return torch.tensor([[float(fps_id), float(motion_bucket_id), float(cond_aug)]])


def enable_forward_chunking(module: torch.nn.Module, chunk_size: int = 1, dim: int = 1) -> None:
    """Feed-forward layers of every transformer block under ``module`` run in chunks along ``dim``."""
    for child in module.modules():
        if hasattr(child, "set_chunk_feed_forward"):
            child.set_chunk_feed_forward(chunk_size=chunk_size, dim=dim)


class ReVideoStage(DiffusionEditStage):
    method = "revideo"
    config_class = ReVideoConfig
    components = COMPONENTS  # type: ignore[assignment]
    load_fields = REVIDEO_LOAD_FIELDS
    optional_needs = ("trajectories",)  # only rows with motion_source: track
    needs_config = {"trajectories": {"store_grid_tracks": True, "channel_order": "dy,dx"}}

    @classmethod
    def row_needs(cls, row: dict) -> tuple[str, ...]:
        try:
            return ("trajectories",) if motion_source(row) == "track" else ()
        except RowFieldError:
            return ()  # the edit stage reports the bad field

    def __init__(self, config: ReVideoConfig, context):
        super().__init__(config, context)
        self._inputs: RowInputs | None = None

    def check_row(self, row: dict) -> None:
        check_motion_fields(row)

    def prepare_models(self, models: dict) -> None:
        if self.config.attention == "eager":
            from diffusers.models.attention_processor import AttnProcessor

            for name in ("unet", "controlnet"):
                models[name].set_attn_processor(AttnProcessor())
        if self.config.forward_chunking:
            for name in ("unet", "controlnet"):
                enable_forward_chunking(models[name])

    def component_dtype(self, name: str) -> torch.dtype:
        if name == "vae" and self.config.vae_float32:  # the release never runs its VAE in half precision
            return torch.float32
        return self.dtype

    def after_setup(self) -> None:
        unet, control, vae = self.models["unet"], self.models["controlnet"], self.models["vae"]
        control.to(self.device)  # used every step, even with cpu_offload
        vae_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        if control.downscale != vae_factor:
            raise ValueError(f"control stems downsample {control.downscale}x but the VAE {vae_factor}x")
        latent = unet.config.out_channels
        if unet.config.in_channels != 2 * latent or control.config.in_channels != unet.config.in_channels:
            raise ValueError(f"UNet/control take {unet.config.in_channels}/{control.config.in_channels} channels; "
                             f"SVD needs {2 * latent} (noisy + conditioning latents)")

    # --- per row -----------------------------------------------------------------------------

    def edit(self, row: dict, config: ReVideoConfig) -> np.ndarray:
        frames = np.asarray(row["frames"])
        if frames.ndim != 4:
            raise ValueError(f"frames must be [T, H, W, 3], got {frames.shape}")
        width, height = config.clip_size(*frames.shape[1:3])
        config = replace(config, width=width, height=height)
        self._inputs = read_inputs(row, config, frames.shape[1:3], self.context.storage)
        try:
            return super().edit(row, config)
        finally:
            self._inputs = None

    def edit_clip(self, row: dict, clip: np.ndarray, config: ReVideoConfig) -> np.ndarray:
        inputs = self._inputs
        if inputs is None:
            raise RuntimeError("ReVideoStage.edit_clip runs inside edit(), which reads the row's inputs")
        f, h, w = clip.shape[:3]
        region = region_map(inputs.boxes, h, w)
        content = content_video(clip, region)
        kernel = gaussian_kernel(config.kernel_size, config.kernel_sigma)
        c_mot = motion_conditions(inputs.tracks, h, w, inputs.visibility, kernel, "dy,dx")
        ref = inputs.first_frame if inputs.first_frame is not None else clip[0]
        fps_id = config.fps_id if config.fps_id is not None else (10 if len(inputs.boxes) == 1 else 6)
        latents = self.sample(ref, c_mot, content, region, fps_id, config)
        edited = self.decode_video(latents, config.vae_batch)
        if config.previews and row.get("job_id") and row.get("video_id"):
            self.write_previews(row, edited, inputs, c_mot, config)
        return edited

    # --- model passes ----------------------------------------------------------------------

    @torch.no_grad()
    def encode_image(self, image: np.ndarray) -> torch.Tensor:
        """CLIP image embedding [1, 1, D] of uint8 [H, W, 3] (antialiased bicubic resize to the
        processor's crop size, its mean/std normalisation, as diffusers' SVD pipeline)."""
        fe = self.models["feature_extractor"]
        crop = fe.crop_size
        size = (int(crop["height"]), int(crop["width"]))
        x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 255.0
        x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
        mean = torch.tensor(fe.image_mean).view(1, 3, 1, 1)
        std = torch.tensor(fe.image_std).view(1, 3, 1, 1)
        with self.on_device("image_encoder") as encoder:
            out = encoder(pixel_values=((x - mean) / std).to(self.device, self.dtype)).image_embeds
        return out[:, None].to(self.device, self.dtype)

    @torch.no_grad()
    def encode_latent(self, pixels: torch.Tensor) -> torch.Tensor:
        """Mode of the VAE posterior [1, C, h, w], unscaled (SVD's conditioning latent), of [1, 3, H, W]."""
        with self.on_device("vae") as vae:
            pixels = pixels.to(self.device, vae.dtype)
            return vae.encode(pixels).latent_dist.mode().to(self.device, self.dtype)

    @torch.no_grad()
    def decode_video(self, latents: torch.Tensor, chunk: int) -> np.ndarray:
        """uint8 [F, H, W, 3] of scaled latents [1, F, C, h, w], ``chunk`` frames per decoder call."""
        out = []
        with self.on_device("vae") as vae:
            z = latents[0].to(self.device, vae.dtype) / vae.config.scaling_factor
            for start in range(0, len(z), chunk):
                part = z[start:start + chunk]
                out.append(vae.decode(part, num_frames=len(part)).sample.float().cpu())
        video = torch.cat(out).clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)
        return video.permute(0, 2, 3, 1).numpy()

    @torch.no_grad()
    def sample(self, ref: np.ndarray, c_mot: np.ndarray, content: np.ndarray, region: np.ndarray, fps_id: int,
               config: ReVideoConfig) -> torch.Tensor:
        """Denoised latents [1, F, C, h, w] (float32, scaled) for one clip's conditions.

        Random draws from one CPU generator seeded with ``seed``: the reference frame's noise
        augmentation, then the initial latent noise (the release's order)."""
        dev, dt = self.device, self.dtype
        generator = self.generator(config.seed)
        frames, (height, width) = c_mot.shape[0], c_mot.shape[-2:]
        ref_t = torch.from_numpy(np.ascontiguousarray(ref)).permute(2, 0, 1)[None].float() / 127.5 - 1.0
        cond_latent = self.encode_latent(ref_t + config.cond_aug * torch.randn(ref_t.shape, generator=generator))
        noise = torch.randn((1, frames, *cond_latent.shape[1:]), generator=generator)
        region_t = torch.from_numpy(region)[None, None, None].expand(1, frames, 1, height, width)
        return sample_revideo(
            self.models["unet"], self.models["controlnet"], noise.to(dev),
            cond_latent[:, None].expand(-1, frames, -1, -1, -1).to(dt).contiguous(), self.encode_image(ref),
            added_time_ids(fps_id, config.motion_bucket_id, config.cond_aug).to(dev, dt),
            torch.from_numpy(c_mot)[None].to(dev, dt), torch.from_numpy(content)[None].to(dev, dt),
            region_t.to(dev, dt), sampling.karras_sigmas(config.num_inference_steps, config.sigma_min,
                                                         config.sigma_max, config.rho),
            sampling.frame_guidance(frames, config.min_guidance_scale, config.guidance_scale),
            cfg_batch=config.cfg_batch, conditioning_scale=config.conditioning_scale)

    # --- previews --------------------------------------------------------------------------

    def write_previews(self, row: dict, edited: np.ndarray, inputs: RowInputs, c_mot: np.ndarray,
                       config: ReVideoConfig) -> None:
        import cv2

        from stages.tracking import viz

        overlay = viz.draw_tracks(edited, inputs.tracks, inputs.visibility)
        for frame in overlay:
            for x0, y0, x1, y1 in inputs.boxes:
                cv2.rectangle(frame, (int(x0), int(y0)), (int(x1) - 1, int(y1) - 1), (255, 255, 255), 1)
        vid, job = storage.safe_id(str(row["video_id"])), storage.safe_id(str(row["job_id"]))
        base = storage.join_url(self.context.output_url, "previews", vid)
        fps = float(row.get("fps") or 8.0)
        opts = dict(width=min(config.preview_width, edited.shape[2]), options=self.context.storage)
        add_output(row, "revideo_overlay", previews.write_animation(
            overlay, storage.join_url(base, f"{job}-revideo.webp"), fps, **opts))
        add_output(row, "c_mot_preview", previews.write_animation(
            viz.motion_colour(c_mot, "dy,dx"), storage.join_url(base, f"{job}-c_mot.webp"), fps, **opts))
