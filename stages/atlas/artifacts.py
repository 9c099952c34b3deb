"""The files of one atlas fit, under ``{cache}/atlas/{content_hash}-{key}/``.

==========================  ==========================================================
``fg_atlas.png``            foreground atlas, RGB, ``atlas_resolution`` square
``bg_atlas.png``            background atlas, RGB
``maps.npz``                ``uv_fg``, ``uv_bg``: uint16 [T, H, W, 2] texture coordinates
                            x 65535 (see :mod:`stages.atlas.render`); ``alpha``: float16
                            [T, H, W]; ``fg_coverage``, ``bg_coverage``: bool [R, R] texels
                            the video uses
``weights.safetensors``     the model's tensors; metadata ``config`` (JSON)
``psnr.json``               per-frame reconstruction PSNR (dB) and their mean
``previews/``               ``atlases.png``, ``alpha.gif``, ``reconstruction.gif``
``meta.json``               shape, config, timings, mask source; written last (its
                            presence marks a complete fit)
==========================  ==========================================================
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass

import cv2
import numpy as np

from pipeline import storage
from pipeline.storage import StorageOptions

META = "meta.json"
UV_SCALE = 65535.0


@dataclass
class AtlasFit:
    """A fit loaded back for editing."""

    fg_atlas: np.ndarray  # uint8 [R, R, 3]
    bg_atlas: np.ndarray  # uint8 [R, R, 3]
    uv_fg: np.ndarray  # float32 [T, H, W, 2] texture coordinates in [0, 1]
    uv_bg: np.ndarray
    alpha: np.ndarray  # float32 [T, H, W]
    meta: dict


def url(directory: str, name: str) -> str:
    return storage.join_url(directory, name)


def is_complete(directory: str, options: StorageOptions | None = None) -> bool:
    return storage.exists(url(directory, META), options)


def read_meta(directory: str, options: StorageOptions | None = None) -> dict:
    return json.loads(storage.read_bytes(url(directory, META), options).decode("utf-8"))


def encode_maps(uv_fg: np.ndarray, uv_bg: np.ndarray, alpha: np.ndarray, fg_coverage: np.ndarray,
                bg_coverage: np.ndarray) -> bytes:
    """``maps.npz`` bytes from float texture coordinates [T, H, W, 2] and alpha [T, H, W]."""
    def q(uv: np.ndarray) -> np.ndarray:
        return np.round(np.clip(uv, 0.0, 1.0) * UV_SCALE).astype(np.uint16)

    buffer = io.BytesIO()
    np.savez_compressed(buffer, uv_fg=q(uv_fg), uv_bg=q(uv_bg), alpha=alpha.astype(np.float16),
                        fg_coverage=fg_coverage, bg_coverage=bg_coverage)
    return buffer.getvalue()


def decode_image(data: bytes, where: str, channels: int = 3) -> np.ndarray:
    """uint8 RGB [H, W, 3] (``channels=3``) or RGBA [H, W, 4] (alpha 255 when absent) from bytes."""
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ValueError(f"{where} is not a readable image")
    if image.dtype != np.uint8:
        image = (image.astype(np.float32) / 257.0).round().astype(np.uint8)
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.shape[2] == 4:
        rgba = cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA)
    else:
        rgba = np.concatenate([cv2.cvtColor(image, cv2.COLOR_BGR2RGB),
                               np.full(image.shape[:2] + (1,), 255, np.uint8)], -1)
    return rgba if channels == 4 else np.ascontiguousarray(rgba[..., :3])


def load_fit(directory: str, options: StorageOptions | None = None) -> AtlasFit:
    """Read a complete fit; FileNotFoundError naming the directory when it is not there."""
    if not is_complete(directory, options):
        raise FileNotFoundError(f"no complete atlas fit at {directory}")
    meta = read_meta(directory, options)
    with np.load(io.BytesIO(storage.read_bytes(url(directory, "maps.npz"), options)), allow_pickle=False) as z:
        uv_fg = z["uv_fg"].astype(np.float32) / UV_SCALE
        uv_bg = z["uv_bg"].astype(np.float32) / UV_SCALE
        alpha = z["alpha"].astype(np.float32)
    fg = decode_image(storage.read_bytes(url(directory, "fg_atlas.png"), options), "fg_atlas.png")
    bg = decode_image(storage.read_bytes(url(directory, "bg_atlas.png"), options), "bg_atlas.png")
    return AtlasFit(fg, bg, uv_fg, uv_bg, alpha, meta)
