"""The foreground edit: keyframes edited with ControlNet-canny, each from the previous one's atlas,
scattered into keyframe atlases and merged.

For each keyframe k (in the row's order):

1. crop: the box around ``alpha >= alpha_threshold`` (:func:`.keyframes.crop_box`); its pixels
   are the frame times alpha (black background), as the release;
2. canvas: the crop resized so its short side is ``image_resolution`` (multiples of
   ``size_multiple``); hint = Canny(``canny_low``, ``canny_high``) of that;
3. the first keyframe is sampled from seeded noise; every later one starts from the previous
   keyframe's atlas alone, sampled through this crop's foreground UVs, VAE-encoded and SDEdited
   at ``strength`` (:func:`.sampling.sdedit`);
4. the decoded edit is resized back to the crop, multiplied by alpha and scattered into an atlas
   of the fit's resolution (:func:`.atlas_ops.scatter`) from the pixels with
   ``alpha >= scatter_min_alpha``.

The keyframe atlases are merged by :func:`.atlas_ops.covered_median` (optionally refined by the
aggregation net); texels no keyframe covered keep the fitted atlas (``uncovered: original``) or
are black (``black``, the release).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from stages.atlas.artifacts import AtlasFit
from stages.edit.stablevideo import sampling
from stages.edit.stablevideo.aggregate import KeyframeTarget, fit_aggregation_net
from stages.edit.stablevideo.atlas_ops import covered_median, mask_box, sample_atlas, scatter
from stages.edit.stablevideo.config import StableVideoConfig
from stages.edit.stablevideo.keyframes import canny_hint, canvas_size, crop_box, resize

log = logging.getLogger(__name__)


class Diffuser(Protocol):
    """What the edit needs from the actor's models (:class:`.stage.StableVideoStage`)."""

    device: torch.device

    def encode_image(self, image: np.ndarray, generator: torch.Generator) -> torch.Tensor: ...

    def decode_image(self, latents: torch.Tensor) -> np.ndarray: ...

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int, int]: ...

    def eps_fn(self, control: str, hint: np.ndarray, prompt: str, config: StableVideoConfig) -> Any: ...

    def scheduler(self) -> Any: ...


@dataclass
class Keyframe:
    """One keyframe's crop and its edit."""

    frame: int
    box: tuple[int, int, int, int]  # (y0, x0, y1, x1) in frame pixels
    source: np.ndarray  # uint8 [h, w, 3]: the frame x alpha crop
    start: np.ndarray | None  # uint8 [h, w, 3]: the previous keyframe's atlas through this crop (None for the first)
    edit: np.ndarray  # float32 [h, w, 3] in [0, 1]: the edit x alpha
    tex: np.ndarray  # [h, w, 2] foreground texture coordinates
    keep: np.ndarray  # bool [h, w]: pixels scattered into the atlas


@dataclass
class ForegroundEdit:
    atlas: np.ndarray  # uint8 [R, R, 3]: the edited foreground atlas
    keyframes: list[Keyframe]
    covered: np.ndarray  # bool [R, R]: texels some keyframe covered
    net_losses: list[float]


def keyframe_crop(frames: np.ndarray, fit: AtlasFit, k: int, config: StableVideoConfig
                  ) -> tuple[tuple[int, int, int, int], np.ndarray, np.ndarray, np.ndarray]:
    """(box, uint8 crop of frame x alpha [h, w, 3], alpha [h, w], tex [h, w, 2]) of keyframe ``k``."""
    box = crop_box(fit.alpha[k], config.alpha_threshold, config.crop_border, config.crop_min_size)
    y0, x0, y1, x1 = box
    alpha = fit.alpha[k, y0:y1, x0:x1].astype(np.float32)
    source = np.clip(np.rint(frames[k, y0:y1, x0:x1].astype(np.float32) * alpha[..., None]), 0, 255)
    return box, source.astype(np.uint8), alpha, fit.uv_fg[k, y0:y1, x0:x1]


def edit_keyframe(diffuser: Diffuser, source: np.ndarray, start: np.ndarray | None, prompt: str,
                  config: StableVideoConfig, generator: torch.Generator) -> np.ndarray:
    """uint8 [h, w, 3]: one keyframe crop edited (from noise when ``start`` is None, else SDEdit of
    ``start``), at the crop's own size."""
    h, w = source.shape[:2]
    ch, cw = canvas_size(h, w, config.image_resolution, config.size_multiple)
    hint = canny_hint(resize(source, ch, cw), config.canny_low, config.canny_high)
    eps = diffuser.eps_fn("controlnet_canny", hint, prompt, config)
    if start is None:
        noise = torch.randn(diffuser.latent_shape(ch, cw), generator=generator)
        latents = sampling.sample(eps, noise.to(diffuser.device), diffuser.scheduler(), config.num_inference_steps)
    else:
        steps, _ = sampling.sdedit_timesteps(diffuser.scheduler(), config.num_inference_steps, config.strength)
        if not steps:  # strength 0: nothing to redo
            return start
        clean = diffuser.encode_image(resize(start, ch, cw), generator)
        noise = torch.randn(clean.shape, generator=generator)
        latents = sampling.sdedit(eps, clean, noise.to(diffuser.device), diffuser.scheduler(),
                                  config.num_inference_steps, config.strength)
    return resize(diffuser.decode_image(latents), h, w)


def edit_foreground(diffuser: Diffuser, frames: np.ndarray, fit: AtlasFit, keyframes: list[int], prompt: str,
                    config: StableVideoConfig, generator: torch.Generator) -> ForegroundEdit:
    """The edited foreground atlas from ``keyframes`` (see the module doc)."""
    r = fit.fg_atlas.shape[0]
    done: list[Keyframe] = []
    atlases, covers = [], []
    previous: np.ndarray | None = None
    for k in keyframes:
        box, source, alpha, tex = keyframe_crop(frames, fit, k, config)
        start = None
        if previous is not None:
            start = np.clip(np.rint(sample_atlas(previous, tex) * 255), 0, 255).astype(np.uint8)
        edited = edit_keyframe(diffuser, source, start, prompt, config, generator)
        edit = edited.astype(np.float32) / 255.0 * alpha[..., None]
        keep = alpha >= config.scatter_min_alpha
        atlas, cover = scatter(edit, tex, keep, r)
        log.info("keyframe %d: crop %s, %d texels covered", k, box, int(cover.sum()))
        done.append(Keyframe(k, box, source, start, edit, tex, keep))
        atlases.append(atlas)
        covers.append(cover)
        previous = atlas
    merged, covered = covered_median(np.stack(atlases), np.stack(covers))
    losses: list[float] = []
    if config.aggregate == "net" and covered.any():
        y0, x0, y1, x1 = mask_box(covered)
        box = (max(y0 - 1, 0), max(x0 - 1, 0), min(y1 + 1, r), min(x1 + 1, r))
        targets = [KeyframeTarget(kf.edit, kf.tex, kf.keep) for kf in done]
        merged, losses = fit_aggregation_net(merged, targets, box, config.net_iterations, config.net_lr,
                                             config.net_momentum, diffuser.device, config.seed)
        log.info("aggregation net: L1 %.4f -> %.4f in %d iterations", losses[0], losses[-1], len(losses))
    fill = fit.fg_atlas.astype(np.float32) / 255.0 if config.uncovered == "original" else 0.0
    final = np.where(covered[..., None], merged, fill)
    return ForegroundEdit(np.clip(np.rint(final * 255), 0, 255).astype(np.uint8), done, covered, losses)
