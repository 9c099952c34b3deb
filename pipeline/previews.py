"""Small animated previews (GIF/WebP) and PNG stills for reports.

Frames in are uint8 [T, H, W, 3] RGB (or [H, W, 3] for stills).
"""

from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image

from pipeline import storage
from pipeline.storage import StorageOptions


def resize_to_width(frames: np.ndarray, width: int) -> np.ndarray:
    """Resize [T, H, W, C] frames to ``width`` pixels wide, keeping the aspect ratio."""
    t, h, w = frames.shape[:3]
    if w == width:
        return frames
    height = max(2, int(round(h * width / w)))
    interp = cv2.INTER_AREA if width < w else cv2.INTER_LINEAR
    return np.stack([cv2.resize(f, (width, height), interpolation=interp) for f in frames])


def subsample(frames: np.ndarray, max_frames: int) -> tuple[np.ndarray, int]:
    """At most ``max_frames`` evenly spaced frames; returns them and the step used."""
    step = max(1, int(np.ceil(len(frames) / max_frames)))
    return frames[::step], step


def side_by_side(left: np.ndarray, right: np.ndarray, gap: int = 4) -> np.ndarray:
    """[T, H, W1+gap+W2, 3] from two clips (the right one resized to the left's height)."""
    t = min(len(left), len(right))
    left, right = left[:t], right[:t]
    if right.shape[1] != left.shape[1]:
        scale = left.shape[1] / right.shape[1]
        w = max(2, int(round(right.shape[2] * scale)))
        right = np.stack([cv2.resize(f, (w, left.shape[1])) for f in right])
    spacer = np.full((t, left.shape[1], gap, 3), 255, dtype=np.uint8)
    return np.concatenate([left, spacer, right], axis=2)


def animation_bytes(frames: np.ndarray, fps: float, fmt: str = "gif") -> bytes:
    """Encode frames as an animated GIF or WebP that loops forever."""
    images = [Image.fromarray(np.ascontiguousarray(f)) for f in frames]
    duration = int(round(1000.0 / max(fps, 1e-3)))
    buffer = io.BytesIO()
    kwargs = {"save_all": True, "append_images": images[1:], "duration": duration, "loop": 0}
    if fmt == "webp":
        kwargs["quality"] = 80
    images[0].save(buffer, format=fmt.upper(), **kwargs)
    return buffer.getvalue()


def write_animation(frames: np.ndarray, url: str, fps: float, *, width: int = 256, max_frames: int = 32,
                    options: StorageOptions | None = None) -> str:
    """Write a small looping preview of ``frames`` to ``url`` (.gif or .webp); returns ``url``."""
    small, step = subsample(frames, max_frames)
    small = resize_to_width(small, width)
    fmt = "webp" if url.lower().endswith(".webp") else "gif"
    return storage.write_bytes(url, animation_bytes(small, fps / step, fmt), options)


def png_bytes(image: np.ndarray) -> bytes:
    """PNG of an [H, W], [H, W, 3] RGB or [H, W, 4] RGBA uint8 image."""
    image = np.ascontiguousarray(image)
    if image.ndim == 3 and image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    elif image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_RGBA2BGRA)
    ok, data = cv2.imencode(".png", image)
    if not ok:
        raise ValueError("PNG encoding failed")
    return data.tobytes()


def write_png(image: np.ndarray, url: str, options: StorageOptions | None = None) -> str:
    return storage.write_bytes(url, png_bytes(image), options)
