"""AtlasStage: fit (or reuse) a Neural Layered Atlas per video.

Reads ``frames`` and ``content_hash`` (and the row's optional ``mask_uri``); writes
``atlas_dir`` (the fit's directory, see :mod:`stages.atlas.artifacts`), ``atlas_psnr`` (mean
reconstruction PSNR, dB), ``atlas_cached`` and ``atlas_mask_source``, and records the atlas
images, weights, PSNR and previews in ``outputs``. A fit is cached under
``storage.artifact_dir(cache, "atlas", content_hash, key)``, where ``key`` hashes the fit's
config, the decoded frames and the mask, so every edit of the same video at the same
settings reuses it. Videos longer than ``max_frames`` (or above ``max_pixels``) are refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time

import numpy as np
import torch
from safetensors.torch import save as save_safetensors

from pipeline import devices, previews, storage
from pipeline.config import config_hash, to_dict
from pipeline.stage import Stage, add_output
from stages.atlas import artifacts
from stages.atlas.config import AtlasConfig
from stages.atlas.fit import FitData, fit_atlas
from stages.atlas.flow import dense_flow
from stages.atlas.masks import layer_motions, row_masks
from stages.atlas.render import atlas_image, coverage, evaluate, frame_psnr

log = logging.getLogger(__name__)

# settings that do not change a fit's result: left out of its cache key
RUNTIME_KEYS = ("resources", "apply_to", "device", "amp", "eval_chunk", "check_every", "previews",
                "max_frames", "max_pixels")


class AtlasLimitError(ValueError):
    """The video exceeds the atlas stage's frame or pixel budget."""


FIT_VERSION = 6  # bump when the fitting math changes, so fits made by older code are not reused


def fit_key(config: AtlasConfig, frames: np.ndarray, mask_digest: str) -> str:
    """16 hex digits identifying a fit: fitting code version, config (runtime settings excluded), frames, mask."""
    cfg = {k: v for k, v in to_dict(config).items() if k not in RUNTIME_KEYS}
    digest = hashlib.sha256(f"v{FIT_VERSION}".encode())
    digest.update(json.dumps(cfg, sort_keys=True).encode())
    digest.update(str(frames.shape).encode())
    digest.update(hashlib.sha256(np.ascontiguousarray(frames).data).digest())
    digest.update(mask_digest.encode())
    return digest.hexdigest()[:16]


def check_limits(frames: np.ndarray, config: AtlasConfig) -> None:
    """Refuse clips over the frame or pixel budget (AtlasLimitError), or too short to fit."""
    t, h, w = frames.shape[:3]
    if t < 2:
        raise AtlasLimitError(f"an atlas needs at least 2 frames, the video has {t}")
    if t > config.max_frames:
        raise AtlasLimitError(f"video has {t} frames, more than atlas.max_frames={config.max_frames}; "
                              "shorten it (decode.max_frames, decode.stride) or raise atlas.max_frames")
    if t * h * w > config.max_pixels:
        raise AtlasLimitError(f"video is {t}x{w}x{h} = {t * h * w} pixels, more than atlas.max_pixels="
                              f"{config.max_pixels}; lower decode.width/height or raise the budget")


class AtlasStage(Stage):
    name = "atlas"
    config_class = AtlasConfig
    reads = ("frames", "content_hash")
    writes = ("atlas_dir", "atlas_psnr", "atlas_cached", "atlas_mask_source")

    def __init__(self, config: AtlasConfig | None = None, context=None):
        super().__init__(config or AtlasConfig(), context)
        self.device: torch.device | None = None

    def preflight(self) -> None:
        devices.check_device(self.config.device, self.resources.num_gpus, self.name)

    def setup(self) -> None:
        self.device = devices.resolve_device(self.config.device, self.resources.num_gpus, self.name)

    def applies_to(self, row: dict) -> bool:
        if self.config.apply_to == "all":
            return True
        from stages.edit import row_needs

        return row_needs(row, "atlas")

    def mask_digest(self, row: dict) -> str:
        uri = row.get("mask_uri")
        if not isinstance(uri, str) or not uri.strip() or self.config.mask_source == "motion":
            return "motion"
        try:
            return hashlib.sha256(storage.read_bytes(uri.strip(), self.context.storage)).hexdigest()
        except FileNotFoundError:
            return f"missing:{uri}"

    def process(self, row: dict) -> dict:
        frames = np.asarray(row["frames"])
        cfg = self.config
        check_limits(frames, cfg)
        directory = storage.artifact_dir(self.context.cache_url, "atlas", str(row["content_hash"]),
                                         fit_key(cfg, frames, self.mask_digest(row)))
        options = self.context.storage
        cached = artifacts.is_complete(directory, options)
        meta = artifacts.read_meta(directory, options) if cached else self.fit(row, frames, directory)
        row.update(atlas_dir=directory, atlas_psnr=float(meta["psnr_mean"]), atlas_cached=cached,
                   atlas_mask_source=meta["mask_source"])
        for name in ("fg_atlas.png", "bg_atlas.png", "weights.safetensors", "psnr.json"):
            add_output(row, f"atlas_{name.split('.')[0]}", artifacts.url(directory, name))
        for name in meta.get("previews", []):
            add_output(row, f"atlas_preview_{name.split('.')[0]}", artifacts.url(directory, f"previews/{name}"))
        log.info("atlas for %s: %s (%.2f dB)", row.get("video_id"), "cached" if cached else "fitted",
                 meta["psnr_mean"])
        return row

    def fit(self, row: dict, frames: np.ndarray, directory: str) -> dict:
        """Fit, evaluate and write every artifact; returns the fit's meta (written last)."""
        cfg, options = self.config, self.context.storage
        t, h, w = frames.shape[:3]
        start = time.perf_counter()
        tracker = cfg.tracker if cfg.tracker.enabled else None
        flow = dense_flow(frames, cfg.flow, cfg.flow_consistency_px, tracker)
        masks, source = row_masks(row, flow, (t, h, w), cfg.mask_source, cfg.motion_threshold_px, options,
                                  cfg.segmentation, frames, tracker)
        if self.device is None:
            self.setup()
        device = self.device
        prep_seconds = time.perf_counter() - start
        motions = np.stack(layer_motions(flow, masks, cfg.motion_model, cfg.fg_motion_model))
        result = fit_atlas(FitData.build(frames, masks, flow, device, motions), cfg, device)
        model = result.model.eval()
        ev = evaluate(model, (t, h, w), device, cfg.eval_chunk, cfg.amp)
        psnr = frame_psnr(ev["rgb"], frames)
        res = cfg.atlas_resolution
        fg_img = atlas_image(model, "fg", res, device, cfg.eval_chunk)
        bg_img = atlas_image(model, "bg", res, device, cfg.eval_chunk)
        fg_cov = coverage(ev["uv_fg"], ev["alpha"], res)
        bg_cov = coverage(ev["uv_bg"], 1.0 - ev["alpha"], res)

        def put(name: str, data: bytes) -> None:
            storage.write_bytes(artifacts.url(directory, name), data, options)

        previews.write_png(fg_img, artifacts.url(directory, "fg_atlas.png"), options)
        previews.write_png(bg_img, artifacts.url(directory, "bg_atlas.png"), options)
        put("maps.npz", artifacts.encode_maps(ev["uv_fg"], ev["uv_bg"], ev["alpha"], fg_cov, bg_cov))
        state = {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()}
        put("weights.safetensors", save_safetensors(state, metadata={"config": json.dumps(to_dict(cfg))}))
        put("psnr.json", json.dumps({"per_frame_db": psnr, "mean_db": float(np.mean(psnr))}).encode())
        names = self.write_previews(directory, frames, ev, fg_img, bg_img, fg_cov, bg_cov, float(row.get("fps") or 12))
        meta = {"shape": [t, h, w], "psnr_mean": float(np.mean(psnr)), "psnr_min": float(np.min(psnr)),
                "mask_source": source, "iterations": result.iterations, "fit_seconds": round(result.seconds, 2),
                "prep_seconds": round(prep_seconds, 2), "device": device.type, "encoding": cfg.encoding,
                "atlas_resolution": res, "config": to_dict(cfg), "config_hash": config_hash(cfg),
                "final_losses": result.final_losses, "previews": names}
        put(artifacts.META, json.dumps(meta, indent=1).encode())
        return meta

    def write_previews(self, directory: str, frames: np.ndarray, ev: dict, fg_img: np.ndarray,
                       bg_img: np.ndarray, fg_cov: np.ndarray, bg_cov: np.ndarray, fps: float) -> list[str]:
        if not self.config.previews:
            return []
        options = self.context.storage

        def dim(image: np.ndarray, cover: np.ndarray) -> np.ndarray:
            return np.where(cover[..., None], image, (image.astype(np.float32) * 0.35).astype(np.uint8))

        both = np.concatenate([dim(fg_img, fg_cov), np.full((fg_img.shape[0], 4, 3), 255, np.uint8),
                               dim(bg_img, bg_cov)], 1)
        previews.write_png(both, artifacts.url(directory, "previews/atlases.png"), options)
        matte = np.repeat(np.round(ev["alpha"] * 255).astype(np.uint8)[..., None], 3, -1)
        previews.write_animation(matte, artifacts.url(directory, "previews/alpha.gif"), fps, options=options)
        recon = np.round(ev["rgb"] * 255).astype(np.uint8)
        previews.write_animation(previews.side_by_side(frames, recon),
                                 artifacts.url(directory, "previews/reconstruction.gif"), fps, width=512,
                                 options=options)
        return ["atlases.png", "alpha.gif", "reconstruction.gif"]


def load_weights_into(model: torch.nn.Module, data: bytes) -> None:
    """Load ``weights.safetensors`` bytes into a model built from the same config."""
    from safetensors.torch import load

    model.load_state_dict(load(data))
