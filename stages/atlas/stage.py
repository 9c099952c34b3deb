"""AtlasStage: fit (or reuse) a Neural Layered Atlas per video.

Reads ``frames`` and ``content_hash`` (and the row's optional ``mask_uri``); writes
``atlas_dir`` (the fit's directory, see :mod:`stages.atlas.artifacts`), ``atlas_psnr`` (mean
reconstruction PSNR, dB), ``atlas_cached`` and ``atlas_mask_source``, and records the atlas
images, weights, PSNR and previews in ``outputs``. A fit is cached under
``storage.artifact_dir(cache, "atlas", content_hash, key)``, where ``key`` hashes the fit's
config, the decoded frames and the mask, so every edit of the same video at the same
settings reuses it.

A clip longer than ``max_frames`` (or above ``max_pixels``) is, with ``long_clips: window``
(the default), fitted as overlapping windows (:mod:`stages.atlas.windows`): each window an
ordinary fit in ``w000/``, ``w001/``, ... under the row's atlas directory, reused one by one
after a crash, and the directory's own ``meta.json`` lists them (``windows``; see
:func:`stages.atlas.artifacts.load_windows`). Its ``psnr.json`` and previews are those of the
cross-faded reconstruction of the whole clip. With ``long_clips: refuse`` such a clip is a row
error (``AtlasLimitError``).
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
from stages.atlas.flow import FlowField, dense_flow
from stages.atlas.masks import layer_motions, row_masks
from stages.atlas.render import atlas_image, coverage, evaluate, frame_psnr
from stages.atlas.windows import blend, default_overlap, plan_windows

log = logging.getLogger(__name__)

# settings that do not change a fit's result: left out of its cache key
RUNTIME_KEYS = ("resources", "apply_to", "device", "amp", "eval_chunk", "check_every", "previews",
                "max_frames", "max_pixels", "long_clips", "window_frames", "window_overlap")
# (a windowed fit's key adds its window plan, which is all that these limits change about it)


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


def check_limits(shape: tuple[int, ...], config: AtlasConfig) -> None:
    """Refuse a clip of ``shape`` (T, H, W, ...) over the frame or pixel budget, or too short to fit.

    AtlasLimitError; this is ``long_clips: refuse`` (see :func:`window_plan`).
    """
    t, h, w = shape[:3]
    if t < 2:
        raise AtlasLimitError(f"an atlas needs at least 2 frames, the video has {t}")
    if t > config.max_frames:
        raise AtlasLimitError(f"video has {t} frames, more than atlas.max_frames={config.max_frames}; "
                              "shorten it (decode.max_frames, decode.stride) or raise atlas.max_frames")
    if t * h * w > config.max_pixels:
        raise AtlasLimitError(f"video is {t}x{w}x{h} = {t * h * w} pixels, more than atlas.max_pixels="
                              f"{config.max_pixels}; lower decode.width/height or raise the budget")


def window_plan(shape: tuple[int, ...], config: AtlasConfig) -> list[tuple[int, int]] | None:
    """The windows a clip of ``shape`` (T, H, W, ...) is fitted in, or None when one fit holds it.

    A clip within ``max_frames`` and ``max_pixels`` is one ordinary fit (None). Otherwise, with
    ``long_clips: refuse`` it is refused (:func:`check_limits`); with ``window`` the windows hold
    at most ``frames_per_window`` frames and ``max_pixels`` pixels each, neighbours sharing
    ``window_overlap`` frames (by default 8, at most a third of a window): see
    :func:`stages.atlas.windows.plan_windows`. AtlasLimitError when the budget leaves a window too
    few frames for its overlaps.
    """
    t, h, w = shape[:3]
    if t < 2 or config.long_clips == "refuse":
        check_limits(shape, config)  # too short, or (refuse) over a limit: AtlasLimitError
    if t <= config.max_frames and t * h * w <= config.max_pixels:
        return None
    per_window = min(config.frames_per_window, config.max_pixels // (h * w))
    if per_window < 2:
        raise AtlasLimitError(f"two {w}x{h} frames are {2 * h * w} pixels, more than atlas.max_pixels="
                              f"{config.max_pixels} (the budget of one window); lower decode.width/height "
                              "or raise the budget")
    overlap = config.window_overlap or default_overlap(per_window)
    if 2 * overlap > per_window:
        raise AtlasLimitError(f"at {w}x{h} atlas.max_pixels={config.max_pixels} allows {per_window} frames per "
                              f"window, fewer than 2 x atlas.window_overlap ({overlap}); lower decode.width/height, "
                              "raise the budget or lower atlas.window_overlap")
    return plan_windows(t, per_window, overlap)


class AtlasStage(Stage):
    name = "atlas"
    config_class = AtlasConfig
    reads = ("frames", "content_hash")
    writes = ("atlas_dir", "atlas_psnr", "atlas_cached", "atlas_mask_source", "atlas_windows")

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
        plan = window_plan(frames.shape, cfg)
        if plan is not None:
            return self.process_windows(row, frames, plan)
        directory = storage.artifact_dir(self.context.cache_url, "atlas", str(row["content_hash"]),
                                         fit_key(cfg, frames, self.mask_digest(row)))
        options = self.context.storage
        cached = artifacts.is_complete(directory, options)
        meta = artifacts.read_meta(directory, options) if cached else self.fit(row, frames, directory)
        row.update(atlas_dir=directory, atlas_psnr=float(meta["psnr_mean"]), atlas_cached=cached,
                   atlas_mask_source=meta["mask_source"], atlas_windows=1)
        for name in ("fg_atlas.png", "bg_atlas.png", "weights.safetensors", "psnr.json"):
            add_output(row, f"atlas_{name.split('.')[0]}", artifacts.url(directory, name))
        for name in meta.get("previews", []):
            add_output(row, f"atlas_preview_{name.split('.')[0]}", artifacts.url(directory, f"previews/{name}"))
        log.info("atlas for %s: %s (%.2f dB)", row.get("video_id"), "cached" if cached else "fitted",
                 meta["psnr_mean"])
        return row

    def process_windows(self, row: dict, frames: np.ndarray, plan: list[tuple[int, int]]) -> dict:
        """Fit (or reuse) a long clip as the overlapping windows of ``plan``; the row as :meth:`process`."""
        cfg, options = self.config, self.context.storage
        digest = f"{self.mask_digest(row)}|windows={json.dumps(plan)}"
        directory = storage.artifact_dir(self.context.cache_url, "atlas", str(row["content_hash"]),
                                         fit_key(cfg, frames, digest))
        cached = artifacts.is_complete(directory, options)
        meta = artifacts.read_meta(directory, options) if cached else self.fit_windows(row, frames, plan, directory)
        row.update(atlas_dir=directory, atlas_psnr=float(meta["psnr_mean"]), atlas_cached=cached,
                   atlas_mask_source=meta["mask_source"], atlas_windows=len(meta["windows"]))
        add_output(row, "atlas_psnr", artifacts.url(directory, "psnr.json"))
        for i, win in enumerate(meta["windows"]):
            for name in ("fg_atlas.png", "bg_atlas.png"):
                add_output(row, f"atlas_{name.split('.')[0]}_w{i:03d}",
                           artifacts.url(artifacts.url(directory, win["dir"]), name))
        for name in meta.get("previews", []):
            add_output(row, f"atlas_preview_{name.split('.')[0]}", artifacts.url(directory, f"previews/{name}"))
        log.info("atlas for %s: %s in %d windows (%.2f dB)", row.get("video_id"), "cached" if cached else "fitted",
                 len(meta["windows"]), meta["psnr_mean"])
        return row

    def prepare(self, row: dict, frames: np.ndarray) -> tuple[FlowField, np.ndarray, str, float]:
        """(flow, bool masks [T, H, W], mask source, seconds) of a clip: the fit's supervision."""
        cfg, options = self.config, self.context.storage
        start = time.perf_counter()
        tracker = cfg.tracker if cfg.tracker.enabled else None
        flow = dense_flow(frames, cfg.flow, cfg.flow_consistency_px, tracker)
        masks, source = row_masks(row, flow, frames.shape[:3], cfg.mask_source, cfg.motion_threshold_px, options,
                                  cfg.segmentation, frames, tracker)
        return flow, masks, source, time.perf_counter() - start

    def fit(self, row: dict, frames: np.ndarray, directory: str) -> dict:
        """Fit, evaluate and write every artifact; returns the fit's meta (written last)."""
        flow, masks, source, prep_seconds = self.prepare(row, frames)
        return self.fit_clip(frames, flow, masks, source, directory, float(row.get("fps") or 12), prep_seconds)

    def fit_windows(self, row: dict, frames: np.ndarray, plan: list[tuple[int, int]], directory: str) -> dict:
        """Fit each window of ``plan`` not already complete, then write the whole clip's files; returns its meta.

        Flow and masks are computed once for the whole clip (a first-frame ``mask_uri`` is carried
        through all of it) and sliced per window; motion initialisation is per window.
        """
        options, fps = self.context.storage, float(row.get("fps") or 12)
        t, h, w = frames.shape[:3]
        prepared: tuple[FlowField, np.ndarray, str, float] | None = None
        windows, sources, recons, alphas = [], [], [], []
        fit_seconds = prep_seconds = 0.0
        for i, (start, stop) in enumerate(plan):
            name = f"w{i:03d}"
            sub = artifacts.url(directory, name)
            if artifacts.is_complete(sub, options):
                log.info("atlas %s window %d/%d (frames %d-%d): reused", row.get("video_id"), i + 1, len(plan),
                         start, stop - 1)
                meta = artifacts.read_meta(sub, options)
            else:
                if prepared is None:
                    prepared = self.prepare(row, frames)
                    prep_seconds = prepared[3]
                flow, masks, source, _ = prepared
                log.info("atlas %s window %d/%d (frames %d-%d): fitting", row.get("video_id"), i + 1, len(plan),
                         start, stop - 1)
                meta = self.fit_clip(frames[start:stop], slice_flow(flow, start, stop), masks[start:stop], source,
                                     sub, fps, 0.0, window=(start, stop, t))
                log.info("atlas %s window %d/%d: %.2f dB in %.0f s", row.get("video_id"), i + 1, len(plan),
                         meta["psnr_mean"], meta["fit_seconds"])
            fit_seconds += float(meta.get("fit_seconds", 0.0))
            windows.append({"start": start, "stop": stop, "dir": name, "psnr_mean": meta["psnr_mean"]})
            sources.append(meta["mask_source"])
            recons.append(artifacts.read_reconstruction(sub, options))
            alphas.append(artifacts.load_alpha(sub, options))
        recon = np.clip(np.rint(blend(recons, plan, t)), 0, 255).astype(np.uint8)
        alpha = blend(alphas, plan, t)
        psnr = frame_psnr(recon, frames)
        storage.write_bytes(artifacts.url(directory, "psnr.json"), json.dumps(
            {"per_frame_db": psnr, "mean_db": float(np.mean(psnr)),
             "windows_db": [win["psnr_mean"] for win in windows]}).encode(), options)
        names = self.write_clip_previews(directory, frames, recon, alpha, fps) if self.config.previews else []
        cfg = self.config
        meta = {"shape": [t, h, w], "psnr_mean": float(np.mean(psnr)), "psnr_min": float(np.min(psnr)),
                "mask_source": sources[0], "windows": windows, "fit_seconds": round(fit_seconds, 2),
                "prep_seconds": round(prep_seconds, 2), "encoding": cfg.encoding, "atlas_resolution":
                cfg.atlas_resolution, "config": to_dict(cfg), "config_hash": config_hash(cfg), "previews": names}
        storage.write_bytes(artifacts.url(directory, artifacts.META), json.dumps(meta, indent=1).encode(), options)
        return meta

    def fit_clip(self, frames: np.ndarray, flow: FlowField, masks: np.ndarray, source: str, directory: str,
                 fps: float, prep_seconds: float, window: tuple[int, int, int] | None = None) -> dict:
        """Fit one clip (a whole video or one window of it), evaluate it and write every artifact.

        ``window``: (start, stop, frames of the whole clip) when this is a window; its meta then
        records it and the directory also keeps its reconstruction (for the cross-fade).
        Returns the fit's meta (written last).
        """
        cfg, options = self.config, self.context.storage
        t, h, w = frames.shape[:3]
        if self.device is None:
            self.setup()
        device = self.device
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
        if window is not None:
            put(artifacts.RECONSTRUCTION, artifacts.encode_reconstruction(ev["rgb"]))
        names = self.write_previews(directory, frames, ev, fg_img, bg_img, fg_cov, bg_cov, fps)
        meta = {"shape": [t, h, w], "psnr_mean": float(np.mean(psnr)), "psnr_min": float(np.min(psnr)),
                "mask_source": source, "iterations": result.iterations, "fit_seconds": round(result.seconds, 2),
                "prep_seconds": round(prep_seconds, 2), "device": device.type, "encoding": cfg.encoding,
                "atlas_resolution": res, "config": to_dict(cfg), "config_hash": config_hash(cfg),
                "final_losses": result.final_losses, "previews": names}
        if window is not None:
            meta["window"] = {"start": window[0], "stop": window[1], "clip_frames": window[2]}
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
        recon = np.round(ev["rgb"] * 255).astype(np.uint8)
        return ["atlases.png", *self.write_clip_previews(directory, frames, recon, ev["alpha"], fps)]

    def write_clip_previews(self, directory: str, frames: np.ndarray, recon: np.ndarray, alpha: np.ndarray,
                            fps: float) -> list[str]:
        """``previews/alpha.gif`` (alpha [T, H, W] in [0, 1]) and ``previews/reconstruction.gif`` (frames beside
        their reconstruction, uint8 [T, H, W, 3] each); their names."""
        options = self.context.storage
        matte = np.repeat(np.round(alpha * 255).astype(np.uint8)[..., None], 3, -1)
        previews.write_animation(matte, artifacts.url(directory, "previews/alpha.gif"), fps, options=options)
        previews.write_animation(previews.side_by_side(frames, recon),
                                 artifacts.url(directory, "previews/reconstruction.gif"), fps, width=512,
                                 options=options)
        return ["alpha.gif", "reconstruction.gif"]


def slice_flow(flow: FlowField, start: int, stop: int) -> FlowField:
    """The flow of frames ``start .. stop - 1`` of a clip: its [stop - start - 1] frame pairs."""
    return FlowField(flow.forward[start:stop - 1], flow.backward[start:stop - 1],
                     flow.forward_valid[start:stop - 1], flow.backward_valid[start:stop - 1])


def load_weights_into(model: torch.nn.Module, data: bytes) -> None:
    """Load ``weights.safetensors`` bytes into a model built from the same config."""
    from safetensors.torch import load

    model.load_state_dict(load(data))
