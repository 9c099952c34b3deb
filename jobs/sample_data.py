"""Synthetic sample videos with exact ground truth (numpy + OpenCV only, no downloads).

A clip is two textured planes: a background texture, larger than the frame, panning by a
subpixel translation per frame, and an elliptical foreground object with its own texture
that translates, rotates and scales along a smooth trajectory, composited with a hard mask.
Every pixel is rendered by bilinear sampling of a texture at the exact inverse-mapped
position, so the ground truth (tracks, visibility, masks, depth, per-frame affines) is
exactly consistent with the pixels.

Conventions: coordinates are ``(x, y)`` in pixels with pixel centres at integers (the
top-left pixel is centred on ``(0, 0)``); an affine ``[2, 3]`` maps ``(x, y, 1)`` to
``(x', y')``. Foreground colours are warm (red > blue in every pixel) and background
colours cool (blue > red), so a colour test separates the layers exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

FG_DEPTH_M = 2.0  # foreground plane depth at frame 0, metres
BG_DEPTH_M = 6.0  # background plane depth, metres
_BG_RANGE = np.array([[20, 110], [70, 190], [130, 235]], np.float32)  # per-channel [lo, hi]
_FG_RANGE = np.array([[175, 250], [70, 200], [10, 100]], np.float32)


@dataclass(frozen=True)
class SamplePreset:
    """Size and length of a sample clip; duration = num_frames / fps seconds."""

    name: str
    width: int
    height: int
    num_frames: int
    fps: float = 12.0


PRESETS: dict[str, SamplePreset] = {
    "square": SamplePreset("square", 256, 256, 36),  # 3.0 s
    "landscape": SamplePreset("landscape", 320, 192, 24),  # 2.0 s
    "portrait": SamplePreset("portrait", 192, 320, 48),  # 4.0 s
}


def parse_size(spec: str) -> SamplePreset:
    """A preset by name (``square``, ``landscape``, ``portrait``) or ``WxH`` (3 s at 12 fps)."""
    if spec in PRESETS:
        return PRESETS[spec]
    parts = spec.lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise ValueError(f"size {spec!r} is neither a preset {sorted(PRESETS)} nor WxH")
    w, h = int(parts[0]), int(parts[1])
    if not (64 <= w <= 4096 and 64 <= h <= 4096):
        raise ValueError(f"size {spec!r} must be between 64 and 4096 pixels per side")
    return SamplePreset(f"{w}x{h}", w, h, 36)


@dataclass(frozen=True)
class SampleClip:
    """A rendered clip and its ground truth (T frames, N query points defined at frame 0)."""

    frames: np.ndarray  # uint8 [T, H, W, 3] RGB
    masks: np.ndarray  # bool [T, H, W], True = foreground
    tracks: np.ndarray  # float32 [T, N, 2] (x, y) pixels
    visibility: np.ndarray  # bool [T, N]
    is_foreground: np.ndarray  # bool [N]
    depth: np.ndarray  # float32 [T, H, W] metres
    fg_depth: np.ndarray  # float32 [T] metres (nearer when the object is larger)
    bg_depth: np.ndarray  # float32 [T] metres (constant)
    fg_affine: np.ndarray  # float64 [T, 2, 3] frame-0 coords -> frame-t coords, foreground layer
    bg_affine: np.ndarray  # float64 [T, 2, 3] same for the background layer
    fg_center: np.ndarray  # float64 [T, 2] object centre (x, y) pixels
    fg_angle: np.ndarray  # float64 [T] object rotation, radians (positive = clockwise on screen, y down)
    fg_scale: np.ndarray  # float64 [T] object scale (1 = texture size)
    fg_axes: tuple[float, float]  # ellipse semi-axes (a, b) in object pixels, before scale
    fps: float
    seed: int


def bilinear_sample(image: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Sample ``image`` [H, W, C] at float positions ``x``, ``y`` (same shape S, pixels).

    Returns float32 [*S, C]. Positions are clamped to the image (edge replicate).
    """
    h, w = image.shape[:2]
    x = np.clip(np.asarray(x, np.float64), 0, w - 1)
    y = np.clip(np.asarray(y, np.float64), 0, h - 1)
    x0 = np.minimum(np.floor(x).astype(np.int64), w - 2)
    y0 = np.minimum(np.floor(y).astype(np.int64), h - 2)
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]
    img = image.astype(np.float32, copy=False)
    top = img[y0, x0] * (1 - fx) + img[y0, x0 + 1] * fx
    bottom = img[y0 + 1, x0] * (1 - fx) + img[y0 + 1, x0 + 1] * fx
    return (top * (1 - fy) + bottom * fy).astype(np.float32)


def value_noise(height: int, width: int, rng: np.random.Generator,
                cells: tuple[int, ...] = (64, 32, 16, 8, 4), persistence: float = 0.75) -> np.ndarray:
    """Multi-octave value noise, float32 [height, width] normalised to [0, 1].

    Each octave is a random grid with ``cell``-pixel spacing, upsampled bicubically.
    """
    out = np.zeros((height, width), np.float32)
    amp = 1.0
    for cell in cells:
        gh, gw = height // cell + 3, width // cell + 3
        grid = rng.random((gh, gw), dtype=np.float32)
        up = cv2.resize(grid, (gw * cell, gh * cell), interpolation=cv2.INTER_CUBIC)
        oy, ox = (int(v) for v in rng.integers(0, cell, 2))
        out += amp * up[oy:oy + height, ox:ox + width]
        amp *= persistence
    return _normalise(out)


def _normalise(a: np.ndarray) -> np.ndarray:
    lo, hi = float(a.min()), float(a.max())
    return ((a - lo) / max(hi - lo, 1e-6)).astype(np.float32)


def make_texture(height: int, width: int, rng: np.random.Generator, ranges: np.ndarray,
                 stripe_period: float = 0.0) -> np.ndarray:
    """A coloured procedural texture, float32 [height, width, 3] in 0..255.

    Channel ``c`` spans ``ranges[c] = [lo, hi]``: a per-channel mix of three noise fields and
    a sinusoid mixture (plus oriented stripes of ``stripe_period`` pixels when > 0).
    """
    fields = [value_noise(height, width, rng) for _ in range(3)]
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    waves = np.zeros((height, width), np.float32)
    for _ in range(3):
        angle, period, phase = rng.uniform(0, np.pi), rng.uniform(18, 40), rng.uniform(0, 2 * np.pi)
        waves += np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period + phase)
    fields.append(_normalise(waves))
    if stripe_period > 0:
        angle = rng.uniform(0, np.pi)
        along = xx * np.cos(angle) + yy * np.sin(angle)
        fields.append(0.5 + 0.5 * np.sin(2 * np.pi * along / stripe_period))
    stack = np.stack(fields, -1)
    tex = np.empty((height, width, 3), np.float32)
    for c in range(3):
        weights = rng.uniform(0.2, 1.0, stack.shape[-1]).astype(np.float32)
        weights[c % 3] += 1.0  # each channel leans on its own noise field: colour varies in 2-D
        mix = _normalise(stack @ weights)
        tex[..., c] = ranges[c, 0] + (ranges[c, 1] - ranges[c, 0]) * mix
    return tex


def object_to_frame(center: np.ndarray, angle: float, scale: float, tex_center: float) -> np.ndarray:
    """3x3 affine from object-texture pixels to frame pixels: ``x = s R(angle) (u - c) + center``."""
    cos, sin = math.cos(angle) * scale, math.sin(angle) * scale
    rot = np.array([[cos, -sin], [sin, cos]])
    out = np.eye(3)
    out[:2, :2] = rot
    out[:2, 2] = np.asarray(center, np.float64) - rot @ np.array([tex_center, tex_center])
    return out


def ellipse_radius(x: np.ndarray, y: np.ndarray, frame_to_object: np.ndarray, tex_center: float,
                   axes: tuple[float, float]) -> np.ndarray:
    """Normalised elliptic radius of frame positions (x, y) in the object (<= 1 means inside)."""
    u = frame_to_object[0, 0] * x + frame_to_object[0, 1] * y + frame_to_object[0, 2] - tex_center
    v = frame_to_object[1, 0] * x + frame_to_object[1, 1] * y + frame_to_object[1, 2] - tex_center
    return np.sqrt((u / axes[0]) ** 2 + (v / axes[1]) ** 2)


@dataclass(frozen=True)
class _Motion:
    bg_offset: np.ndarray  # float64 [T, 2] background translation, pixels
    center: np.ndarray  # float64 [T, 2]
    angle: np.ndarray  # float64 [T] radians
    scale: np.ndarray  # float64 [T]


def _make_motion(width: int, height: int, num_frames: int, axes: tuple[float, float],
                 rng: np.random.Generator) -> _Motion:
    """Smooth trajectories keeping the whole object inside the frame."""
    tau = np.linspace(0.0, 1.0, num_frames)
    direction = rng.uniform(0, 2 * np.pi)
    speed = rng.uniform(0.35, 0.7)  # px per frame
    t = np.arange(num_frames, dtype=np.float64)
    wobble = 3.0 * np.sin(np.pi * tau)
    bg = np.stack([speed * t * np.cos(direction) - wobble * np.sin(direction),
                   speed * t * np.sin(direction) + wobble * np.cos(direction)], -1)
    scale = 1.0 + 0.12 * np.sin(2 * np.pi * rng.uniform(0.5, 1.0) * tau + rng.uniform(0, 2 * np.pi))
    reach = axes[0] * 1.12 + 4.0  # object radius at the largest scale, plus a margin
    amp_x, amp_y = max(0.0, width / 2 - reach) * 0.85, max(0.0, height / 2 - reach) * 0.85
    fx, fy = rng.uniform(0.5, 1.0, 2)
    px, py = rng.uniform(0, 2 * np.pi, 2)
    center = np.stack([(width - 1) / 2 + amp_x * np.sin(2 * np.pi * fx * tau + px),
                       (height - 1) / 2 + amp_y * np.sin(2 * np.pi * fy * tau + py)], -1)
    angle = rng.uniform(0, np.pi) + rng.choice([-1.0, 1.0]) * 0.9 * tau + 0.15 * np.sin(2 * np.pi * tau)
    return _Motion(bg, center, angle, scale)


def _grid_points(width: int, height: int, count: int, keep) -> np.ndarray:
    """``count`` integer (x, y) positions spread over a grid, filtered by ``keep(x, y)``: [count, 2]."""
    step = max(2, int(math.sqrt(width * height / count)))
    while step >= 1:
        ys, xs = np.mgrid[step // 2:height:step, step // 2:width:step]
        xs, ys = xs.ravel().astype(np.float64), ys.ravel().astype(np.float64)
        ok = keep(xs, ys)
        if ok.sum() >= count:
            idx = np.flatnonzero(ok)[np.linspace(0, ok.sum() - 1, count).round().astype(int)]
            return np.stack([xs[idx], ys[idx]], -1)
        step -= 1
    raise ValueError(f"cannot place {count} query points")


def generate_sample(width: int = 256, height: int = 256, num_frames: int = 36, fps: float = 12.0,
                    seed: int = 0, *, n_fg: int = 32, n_bg: int = 32) -> SampleClip:
    """Render a clip and its ground truth, deterministically from ``seed``."""
    if width < 64 or height < 64 or num_frames < 2:
        raise ValueError(f"need at least 64x64 pixels and 2 frames, got {width}x{height}x{num_frames}")
    rng = np.random.default_rng(seed)
    side = min(width, height)
    axes = (0.22 * side * rng.uniform(0.9, 1.1), 0.16 * side * rng.uniform(0.9, 1.1))
    motion = _make_motion(width, height, num_frames, axes, rng)
    margin = int(np.ceil(np.abs(motion.bg_offset).max())) + 4
    bg_tex = make_texture(height + 2 * margin, width + 2 * margin, rng, _BG_RANGE)
    size = 2 * int(np.ceil(axes[0])) + 8
    tex_c = (size - 1) / 2
    fg_tex = make_texture(size, size, rng, _FG_RANGE, stripe_period=rng.uniform(9, 14))

    obj = np.stack([object_to_frame(motion.center[t], motion.angle[t], motion.scale[t], tex_c)
                    for t in range(num_frames)])
    inv = np.linalg.inv(obj)
    bg_mat = np.tile(np.eye(3), (num_frames, 1, 1))
    bg_mat[:, :2, 2] = motion.bg_offset - margin  # background texture pixels -> frame pixels
    fg_affine = (obj @ inv[0])[:, :2]
    bg_affine = (bg_mat @ np.linalg.inv(bg_mat[0]))[:, :2]

    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    frames = np.empty((num_frames, height, width, 3), np.uint8)
    masks = np.empty((num_frames, height, width), bool)
    for t in range(num_frames):
        layer = bilinear_sample(bg_tex, xs - bg_mat[t, 0, 2], ys - bg_mat[t, 1, 2])
        inside = ellipse_radius(xs, ys, inv[t], tex_c, axes) <= 1.0
        fu = inv[t, 0, 0] * xs[inside] + inv[t, 0, 1] * ys[inside] + inv[t, 0, 2]
        fv = inv[t, 1, 0] * xs[inside] + inv[t, 1, 1] * ys[inside] + inv[t, 1, 2]
        layer[inside] = bilinear_sample(fg_tex, fu, fv)
        frames[t] = np.clip(np.rint(layer), 0, 255).astype(np.uint8)
        masks[t] = inside

    r0 = lambda x, y: ellipse_radius(x, y, inv[0], tex_c, axes)  # noqa: E731
    fg_q = _grid_points(width, height, n_fg, lambda x, y: r0(x, y) <= 0.7)
    bg_q = _grid_points(width, height, n_bg, lambda x, y: (r0(x, y) >= 1.3) & (x >= 3) & (y >= 3)
                        & (x <= width - 4) & (y <= height - 4))
    is_fg = np.r_[np.ones(n_fg, bool), np.zeros(n_bg, bool)]
    tracks = np.concatenate([fg_q @ fg_affine[:, :, :2].transpose(0, 2, 1) + fg_affine[:, None, :, 2],
                             bg_q @ bg_affine[:, :, :2].transpose(0, 2, 1) + bg_affine[:, None, :, 2]], 1)
    px, py = tracks[..., 0], tracks[..., 1]
    in_frame = (px >= 0) & (px <= width - 1) & (py >= 0) & (py <= height - 1)
    covered = np.stack([ellipse_radius(px[t], py[t], inv[t], tex_c, axes) <= 1.0 for t in range(num_frames)])
    visibility = in_frame & (is_fg[None] | ~covered)

    fg_depth = (FG_DEPTH_M * motion.scale[0] / motion.scale).astype(np.float32)
    bg_depth = np.full(num_frames, BG_DEPTH_M, np.float32)
    depth = np.where(masks, fg_depth[:, None, None], bg_depth[:, None, None]).astype(np.float32)
    return SampleClip(frames=frames, masks=masks, tracks=tracks.astype(np.float32), visibility=visibility,
                      is_foreground=is_fg, depth=depth, fg_depth=fg_depth, bg_depth=bg_depth,
                      fg_affine=fg_affine, bg_affine=bg_affine, fg_center=motion.center,
                      fg_angle=motion.angle, fg_scale=motion.scale, fg_axes=(float(axes[0]), float(axes[1])),
                      fps=float(fps), seed=int(seed))


def generate_preset(preset: SamplePreset | str, seed: int = 0) -> SampleClip:
    """:func:`generate_sample` at a preset's size, length and rate."""
    p = parse_size(preset) if isinstance(preset, str) else preset
    return generate_sample(p.width, p.height, p.num_frames, p.fps, seed)


def gt_arrays(clip: SampleClip) -> dict[str, np.ndarray]:
    """The ground-truth arrays saved in ``gt.npz`` (plain dtypes, no objects)."""
    return {"masks": clip.masks, "tracks": clip.tracks, "visibility": clip.visibility,
            "is_foreground": clip.is_foreground, "depth": clip.depth, "fg_depth": clip.fg_depth,
            "bg_depth": clip.bg_depth, "fg_affine": clip.fg_affine, "bg_affine": clip.bg_affine,
            "fg_center": clip.fg_center, "fg_angle": clip.fg_angle, "fg_scale": clip.fg_scale}


def make_overlay(size: int = 128, seed: int = 0) -> np.ndarray:
    """A five-pointed star logo with an anti-aliased outline, uint8 [size, size, 4] RGBA.

    Straight (not premultiplied) alpha; colour is a radial yellow-to-magenta gradient, dark
    outline; deterministic from ``seed`` (rotation and hue shift).
    """
    if size < 16:
        raise ValueError(f"overlay size must be >= 16, got {size}")
    rng = np.random.default_rng(seed)
    ss = 4  # supersampling factor for anti-aliasing
    big = size * ss
    turn = rng.uniform(-0.3, 0.3) - np.pi / 2
    k = np.arange(10)
    radius = np.where(k % 2 == 0, 0.46, 0.19) * big
    pts = np.stack([big / 2 + radius * np.cos(turn + k * np.pi / 5),
                    big / 2 + radius * np.sin(turn + k * np.pi / 5)], -1)
    poly = [np.round(pts * 16).astype(np.int32)]  # 4 fractional bits (shift=4)
    fill = np.zeros((big, big), np.uint8)
    cv2.fillPoly(fill, poly, 255, cv2.LINE_8, shift=4)
    line = np.zeros_like(fill)
    cv2.polylines(line, poly, True, 255, thickness=max(1, int(0.035 * big)), lineType=cv2.LINE_8, shift=4)
    alpha = cv2.resize(np.maximum(fill, line), (size, size), interpolation=cv2.INTER_AREA)
    edge = cv2.resize(line, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    r = np.clip(np.hypot(xx - (size - 1) / 2, yy - (size - 1) / 2) / (0.46 * size), 0, 1)[..., None]
    inner = np.array([255, 230, 40], np.float32)
    outer = np.array([230, 40, 160], np.float32) + rng.uniform(-20, 20, 3).astype(np.float32)
    rgb = inner * (1 - r) + outer * r
    rgb = rgb * (1 - edge[..., None]) + np.array([40, 20, 60], np.float32) * edge[..., None]
    return np.dstack([np.clip(np.rint(rgb), 0, 255).astype(np.uint8), alpha])
