"""The per-frame edit region of a DreamMotion row, on the clip's latent grid.

Where it comes from, in order (``mask_source`` may pin it; see :func:`mask_source`):

1. ``masks_uri``: an ``.npz`` holding one array [T, H, W] (bool, uint8 with 255 = inside, or
   float in [0, 1]; the key ``masks`` when there are several), or a mask video (grey > 127 =
   inside). One mask per decoded frame: exactly the row's frame count, at the decoded size or
   the same aspect ratio (resized, nearest). Anything else is a :class:`RowFieldError` naming
   ``masks_uri``.
2. the atlas alpha (``maps.npz`` of the fit in ``atlas_dir``) above ``atlas_alpha_threshold``,
   when the atlas stage ran on the row (``mask_source: atlas`` asks for it);
3. the whole frame, with a warning: unmasked V-DDS is the paper's failure case (colours bleed
   into the background, the picture over-saturates).

The clip's masks are taken with the clip's own frame selection and resize
(:func:`~stages.edit.diffusion.base.select_frames`), then reduced to the latent grid: a latent
cell is inside when any of its pixels is.
"""

from __future__ import annotations

import io
import logging
import os

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from pipeline import media, storage
from pipeline.storage import StorageOptions
from stages.atlas.artifacts import load_alpha
from stages.edit.base import RowFieldError
from stages.edit.diffusion.base import select_frames
from stages.edit.diffusion.config import DiffusionConfig

log = logging.getLogger(__name__)

MASK_SOURCES = ("auto", "masks_uri", "atlas", "frame")
VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".gif")


def _text(row: dict, key: str) -> str:
    value = row.get(key)
    return value.strip() if isinstance(value, str) else ""


def mask_source(row: dict) -> str:
    """The row's ``mask_source`` ("auto" when absent or empty); RowFieldError for an unknown value."""
    source = _text(row, "mask_source").lower() or "auto"
    if source not in MASK_SOURCES:
        raise RowFieldError(f"mask_source {row.get('mask_source')!r} is not one of {', '.join(MASK_SOURCES)}")
    if source == "masks_uri" and not _text(row, "masks_uri"):
        raise RowFieldError("mask_source is 'masks_uri' but the row has no 'masks_uri'")
    return source


def binarise(masks: np.ndarray, where: str) -> np.ndarray:
    """bool [T, H, W] from bool, uint8 (> 127) or float (> 0.5) masks; RowFieldError for other data."""
    masks = np.asarray(masks)
    if masks.ndim == 4 and masks.shape[-1] == 1:
        masks = masks[..., 0]
    if masks.ndim != 3:
        raise RowFieldError(f"{where} must be masks [T, H, W], got shape {masks.shape}")
    if masks.dtype == bool:
        return masks
    if masks.dtype == np.uint8:
        return masks > 127
    if np.issubdtype(masks.dtype, np.number):
        return masks.astype(np.float32) > 0.5
    raise RowFieldError(f"{where} holds {masks.dtype} data, not numbers")


def read_npz_masks(data: bytes, where: str) -> np.ndarray:
    """The mask array [T, H, W] of an ``.npz`` (never unpickles)."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            names = list(npz.files)
            if not names:
                raise RowFieldError(f"{where} holds no array")
            if len(names) > 1 and "masks" not in names:
                raise RowFieldError(f"{where} holds {names}; name the mask array 'masks'")
            return binarise(npz["masks" if "masks" in names else names[0]], where)
    except (ValueError, OSError, EOFError) as exc:
        if isinstance(exc, RowFieldError):
            raise
        raise RowFieldError(f"{where} is not a readable .npz: {exc}") from exc


def uri_is_video(uri: str) -> bool:
    return os.path.splitext(uri.lower().split("?")[0])[1] in VIDEO_EXTENSIONS


def read_mask_video(uri: str, num_frames: int, where: str, options: StorageOptions | None) -> np.ndarray:
    """bool [T, H, W] of a mask video's first ``num_frames + 1`` frames (grey > 127 = inside)."""
    try:
        with storage.local_copy(uri, options) as (local, _):
            frames, _, _ = media.decode(local, media.DecodeOptions(max_frames=num_frames + 1))
    except media.VideoDecodeError as exc:
        raise RowFieldError(f"{where} is not a decodable mask video: {exc}") from exc
    return frames.mean(-1) > 127


def read_masks(uri: str, shape: tuple[int, int, int], options: StorageOptions | None = None) -> np.ndarray:
    """bool [T, H, W] masks of ``masks_uri`` for decoded frames of ``shape`` (T, H, W).

    RowFieldError naming ``masks_uri`` when the file is missing or unreadable, holds another
    frame count, another aspect ratio, or no pixel inside.
    """
    t, h, w = shape
    where = f"masks_uri {uri!r}"
    try:
        if uri_is_video(uri):
            masks = read_mask_video(uri, t, where, options)
        else:
            masks = read_npz_masks(storage.read_bytes(uri, options), where)
    except FileNotFoundError as exc:
        raise RowFieldError(f"{where} not found") from exc
    if len(masks) != t:
        count = f"more than {t}" if len(masks) > t and uri_is_video(uri) else len(masks)
        raise RowFieldError(f"{where} has {count} frames, the decoded video {t}: give one mask per decoded frame")
    mh, mw = masks.shape[1:]
    if (mh, mw) != (h, w):
        if abs(mw / mh - w / h) > 0.01 * (w / h):
            raise RowFieldError(f"{where} is {mw}x{mh} but the frames are {w}x{h} (aspect ratios differ)")
        masks = np.stack([cv2.resize(m.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) > 0
                          for m in masks])
    if not masks.any():
        raise RowFieldError(f"{where} has no pixel inside the edit region")
    return masks


def atlas_masks(atlas_dir: str, shape: tuple[int, int, int], threshold: float,
                options: StorageOptions | None = None) -> np.ndarray:
    """bool [T, H, W]: the fitted atlas alpha above ``threshold`` (``maps.npz`` in ``atlas_dir``).

    A long clip fitted in overlapping windows gives its windows' alphas cross-faded
    (:func:`stages.atlas.artifacts.load_alpha`).
    """
    alpha = load_alpha(atlas_dir, options)
    if alpha.shape != tuple(shape):
        raise ValueError(f"atlas fit at {atlas_dir} is for {alpha.shape} frames, the row has {tuple(shape)}")
    masks = alpha > threshold
    if not masks.any():
        raise RowFieldError(f"the atlas alpha of {atlas_dir} has no foreground above {threshold}")
    return masks


def row_masks(row: dict, shape: tuple[int, int, int], threshold: float,
              options: StorageOptions | None = None) -> tuple[np.ndarray | None, str]:
    """(bool [T, H, W] masks or None for the whole frame, where they came from) for a row's decoded frames."""
    source = mask_source(row)
    uri = _text(row, "masks_uri")
    if source in ("auto", "masks_uri") and uri:
        return read_masks(uri, shape, options), "masks_uri"
    atlas_dir = _text(row, "atlas_dir")
    if source == "atlas" and not atlas_dir:
        raise RowFieldError("mask_source is 'atlas' but the atlas stage left no 'atlas_dir' on the row")
    if source in ("auto", "atlas") and atlas_dir:
        return atlas_masks(atlas_dir, shape, threshold, options), "atlas"
    if source == "auto":
        log.warning("dreammotion %s: no masks_uri and no atlas: V-DDS acts on the whole frame (the paper's "
                    "failure case: colours bleed and saturate); give masks_uri or mask_source: atlas",
                    row.get("job_id"))
    return None, "frame"


def latent_masks(masks: np.ndarray, config: DiffusionConfig, latent_hw: tuple[int, int]) -> torch.Tensor:
    """float32 {0, 1} [F, h, w] on the latent grid of the clip, from bool masks [T, H, W] of decoded frames.

    Frames and resize follow the clip's (``select_frames``); a latent cell is 1 when any pixel
    of it is inside. RowFieldError when the clip's frames hold no pixel inside.
    """
    pixels = np.repeat((masks.astype(np.uint8) * 255)[..., None], 3, axis=-1)
    clip = select_frames(pixels, config)[..., 0] > 127  # [F, height, width]
    if not clip.any():
        raise RowFieldError("the masks hold no pixel inside the edit region in the clip's frames "
                            f"(start_frame={config.start_frame}, frame_stride={config.frame_stride})")
    h, w = latent_hw
    t = torch.from_numpy(clip.astype(np.float32))[:, None]
    return F.adaptive_max_pool2d(t, (h, w))[:, 0]
