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

A long clip fitted in overlapping windows (``atlas.long_clips: window``) is a directory of
ordinary fits ``w000/``, ``w001/``, ... (each also keeping ``reconstruction.npz``, its
reconstruction as uint8 [T_w, H, W, 3], for the cross-fade), plus the clip's own ``psnr.json``
(of the cross-faded reconstruction), ``previews/alpha.gif`` and ``previews/reconstruction.gif``
(whole clip, cross-faded) and ``meta.json`` (written last) whose ``windows`` lists
``{start, stop, dir}`` (frames ``[start, stop)`` of the clip). :func:`load_windows` reads either
kind; :func:`load_fit` reads single fits only; :func:`load_alpha` gives either's alpha.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass

import cv2
import numpy as np

from pipeline import storage
from pipeline.storage import StorageOptions
from stages.atlas.windows import blend

META = "meta.json"
RECONSTRUCTION = "reconstruction.npz"
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


class WindowedFitError(ValueError):
    """A single fit was asked for, but the directory holds a long clip's windows."""


@dataclass
class WindowFit:
    """One window of a (possibly windowed) fit: frames ``[start, stop)`` of the clip."""

    start: int
    stop: int
    fit: AtlasFit


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
    if "windows" in meta:
        raise WindowedFitError(f"the atlas at {directory} is a long clip fitted in {len(meta['windows'])} windows, "
                               "not one fit (read it with load_windows)")
    with np.load(io.BytesIO(storage.read_bytes(url(directory, "maps.npz"), options)), allow_pickle=False) as z:
        uv_fg = z["uv_fg"].astype(np.float32) / UV_SCALE
        uv_bg = z["uv_bg"].astype(np.float32) / UV_SCALE
        alpha = z["alpha"].astype(np.float32)
    fg = decode_image(storage.read_bytes(url(directory, "fg_atlas.png"), options), "fg_atlas.png")
    bg = decode_image(storage.read_bytes(url(directory, "bg_atlas.png"), options), "bg_atlas.png")
    return AtlasFit(fg, bg, uv_fg, uv_bg, alpha, meta)


def load_windows(directory: str, options: StorageOptions | None = None) -> list[WindowFit]:
    """Every window of a fit, in frame order; a single fit is one window over the whole clip."""
    if not is_complete(directory, options):
        raise FileNotFoundError(f"no complete atlas fit at {directory}")
    meta = read_meta(directory, options)
    if "windows" not in meta:
        fit = load_fit(directory, options)
        return [WindowFit(0, fit.alpha.shape[0], fit)]
    return [WindowFit(int(w["start"]), int(w["stop"]), load_fit(url(directory, w["dir"]), options))
            for w in meta["windows"]]


def _maps_alpha(directory: str, options: StorageOptions | None) -> np.ndarray:
    """float32 [T, H, W]: the ``alpha`` of one fit's ``maps.npz``."""
    with np.load(io.BytesIO(storage.read_bytes(url(directory, "maps.npz"), options)), allow_pickle=False) as z:
        return z["alpha"].astype(np.float32)


def load_alpha(directory: str, options: StorageOptions | None = None) -> np.ndarray:
    """float32 [T, H, W] alpha of a fit; a windowed fit's windows cross-faded (linear ramps over overlaps)."""
    meta = read_meta(directory, options) if is_complete(directory, options) else {}
    if "windows" not in meta:
        return _maps_alpha(directory, options)
    parts = [_maps_alpha(url(directory, w["dir"]), options) for w in meta["windows"]]
    return blend(parts, [(int(w["start"]), int(w["stop"])) for w in meta["windows"]], int(meta["shape"][0]))


def encode_reconstruction(rgb: np.ndarray) -> bytes:
    """``reconstruction.npz`` bytes from a float reconstruction [T, H, W, 3] in [0, 1] (stored uint8)."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, rgb=np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8))
    return buffer.getvalue()


def read_reconstruction(directory: str, options: StorageOptions | None = None) -> np.ndarray:
    """uint8 [T, H, W, 3]: a window's reconstruction (``reconstruction.npz``)."""
    with np.load(io.BytesIO(storage.read_bytes(url(directory, RECONSTRUCTION), options)), allow_pickle=False) as z:
        return z["rgb"]
