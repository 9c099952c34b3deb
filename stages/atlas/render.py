"""Evaluate a fitted atlas model on every pixel, extract atlas images, and render frames from them.

Texture coordinates: the per-frame UV maps this stage stores are *texture* coordinates of the
layer's atlas image, ``tex = (uv + 1) / 2`` in ``[0, 1] ** 2`` with (0, 0) the top-left corner
of the image and (1, 1) the bottom-right one; texture pixel ``(i, j)`` has its centre at
``((j + 0.5) / R, (i + 0.5) / R)``. Both layers use the same convention, each with its own image.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from pipeline import devices
from stages.atlas.fit import Normaliser
from stages.atlas.networks import LayeredAtlas


@torch.no_grad()
def evaluate(model: LayeredAtlas, shape: tuple[int, int, int], device: torch.device, chunk: int = 65536,
             amp: bool | torch.dtype | None = False, pixels: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Model outputs at every pixel of a [T, H, W] clip (or at the flat pixel indices ``pixels`` [P]).

    ``amp``: True for the fit's autocast (bfloat16 on a CUDA device that has it), a dtype to
    force one (tests use CPU bfloat16), False/None for float32. UVs stay float32 either way.

    Returns float32 arrays: ``uv_fg``, ``uv_bg`` [T, H, W, 2] texture coordinates, ``alpha``
    [T, H, W] and ``rgb`` [T, H, W, 3] in [0, 1] (the reconstruction); with ``pixels`` the
    [H, W] axes are one [P] axis of those pixels, the same in every frame.
    """
    t_n, h, w = shape
    norm = Normaliser(t_n, h, w)
    flat = torch.arange(h * w, device=device) if pixels is None else torch.from_numpy(pixels).to(device)
    xs, ys = flat % w, flat // w
    p = len(flat)
    out = {"uv_fg": np.empty((t_n, p, 2), np.float32), "uv_bg": np.empty((t_n, p, 2), np.float32),
           "alpha": np.empty((t_n, p), np.float32), "rgb": np.empty((t_n, p, 3), np.float32)}
    amp_dtype = devices.autocast_dtype(device) if amp is True else (amp or None)
    for t in range(t_n):
        tt = torch.full_like(xs, t)
        for s in range(0, p, chunk):
            pts = norm.xyt(xs[s:s + chunk], ys[s:s + chunk], tt[s:s + chunk])
            with torch.autocast(device_type=device.type, dtype=amp_dtype or torch.float32,
                                enabled=amp_dtype is not None):
                res = model(pts)
            out["uv_fg"][t, s:s + chunk] = ((res["uv_fg"].float() + 1) / 2).cpu().numpy()
            out["uv_bg"][t, s:s + chunk] = ((res["uv_bg"].float() + 1) / 2).cpu().numpy()
            out["alpha"][t, s:s + chunk] = res["alpha"].float().cpu().numpy()
            out["rgb"][t, s:s + chunk] = res["rgb"].float().clamp(0, 1).cpu().numpy()
    if pixels is not None:
        return out
    return {"uv_fg": out["uv_fg"].reshape(t_n, h, w, 2), "uv_bg": out["uv_bg"].reshape(t_n, h, w, 2),
            "alpha": out["alpha"].reshape(t_n, h, w), "rgb": out["rgb"].reshape(t_n, h, w, 3)}


@torch.no_grad()
def atlas_image(model: LayeredAtlas, layer: str, resolution: int, device: torch.device,
                chunk: int = 65536) -> np.ndarray:
    """The ``"fg"`` or ``"bg"`` atlas as uint8 [R, R, 3], evaluated at texture pixel centres."""
    centres = (torch.arange(resolution, device=device, dtype=torch.float32) + 0.5) / resolution
    v, u = torch.meshgrid(centres, centres, indexing="ij")
    uv = torch.stack([u.reshape(-1), v.reshape(-1)], -1) * 2.0 - 1.0
    rows = [model.atlas_rgb(uv[s:s + chunk], layer).float().cpu() for s in range(0, uv.shape[0], chunk)]
    image = torch.cat(rows).reshape(resolution, resolution, 3).clamp(0, 1).numpy()
    return np.round(image * 255).astype(np.uint8)


def sample_texture(texture: np.ndarray, tex: np.ndarray, border: int = cv2.BORDER_REPLICATE) -> np.ndarray:
    """Bilinear lookup of texture [R, R(, C)] at texture coordinates tex [H, W, 2]: float32 [H, W(, C)]."""
    r_h, r_w = texture.shape[:2]
    map_x = (tex[..., 0] * r_w - 0.5).astype(np.float32)
    map_y = (tex[..., 1] * r_h - 0.5).astype(np.float32)
    return cv2.remap(texture.astype(np.float32), map_x, map_y, cv2.INTER_LINEAR, borderMode=border)


def render_frames(fg_atlas: np.ndarray, bg_atlas: np.ndarray, uv_fg: np.ndarray, uv_bg: np.ndarray,
                  alpha: np.ndarray) -> np.ndarray:
    """Frames uint8 [T, H, W, 3] = alpha * fg_atlas(uv_fg) + (1 - alpha) * bg_atlas(uv_bg).

    Atlases uint8 [R, R, 3]; uv_* [T, H, W, 2] texture coordinates; alpha [T, H, W].
    """
    out = np.empty(uv_fg.shape[:3] + (3,), np.uint8)
    for t in range(len(out)):
        a = alpha[t].astype(np.float32)[..., None]
        fg = sample_texture(fg_atlas, uv_fg[t].astype(np.float32))
        bg = sample_texture(bg_atlas, uv_bg[t].astype(np.float32))
        out[t] = np.clip(np.rint(a * fg + (1 - a) * bg), 0, 255).astype(np.uint8)
    return out


def coverage(tex: np.ndarray, weight: np.ndarray, resolution: int, threshold: float = 0.5) -> np.ndarray:
    """bool [R, R]: atlas texels that some pixel with ``weight > threshold`` maps to (tex [..., 2])."""
    keep = weight.reshape(-1) > threshold
    pts = tex.reshape(-1, 2)[keep]
    ij = np.clip(np.floor(pts * resolution).astype(np.int64), 0, resolution - 1)
    cover = np.zeros((resolution, resolution), np.uint8)
    cover[ij[:, 1], ij[:, 0]] = 1
    size = max(3, resolution // 128) | 1
    cover = cv2.morphologyEx(cover, cv2.MORPH_CLOSE, np.ones((size, size), np.uint8))
    return cover > 0


def frame_psnr(pred: np.ndarray, frames: np.ndarray) -> list[float]:
    """Per-frame PSNR in dB of pred (float [T, H, W, 3] in [0, 1], or uint8) against uint8 frames."""
    p = pred.astype(np.float64) / (255.0 if pred.dtype == np.uint8 else 1.0)
    f = frames.astype(np.float64) / 255.0
    mse = ((p - f) ** 2).reshape(len(f), -1).mean(1)
    return [float(-10 * np.log10(m)) if m > 0 else 99.0 for m in mse]
