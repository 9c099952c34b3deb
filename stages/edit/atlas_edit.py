"""``atlas_edit``: paint an image onto a fitted layered atlas and re-render the video through it.

Needs the ``atlas`` stage (stages/atlas/), which puts ``atlas_dir`` on the row. The row gives
either ``overlay_uri`` (an RGBA image, straight alpha) plus its placement, or ``atlas_uri`` (a
whole replacement atlas image for ``layer``; RGBA replaces only where its alpha is set).
Placement comes from the method config, overridable per row through ``params``:

* ``anchor="frame"`` (default): ``center`` is a pixel (x, y) of frame ``anchor_frame`` and
  ``size`` the overlay's width there, in pixels; it is mapped into the atlas through that
  frame's UV map and local Jacobian, so the overlay appears as placed in that frame and then
  follows the layer. Defaults: the point deepest inside the foreground (the peak of its distance
  transform, :func:`inner_point`) and half its equivalent diameter (foreground),
  the frame centre and a quarter of the frame (background).
* ``anchor="atlas"``: ``center`` in atlas texture coordinates ([0, 1] x [0, 1], origin top
  left) and ``size`` as a fraction of the atlas width.

``render="composite"`` (default) composites the overlay layer, warped into each frame through
the layer's UV map and weighted by alpha (foreground) or 1 - alpha (background), over the
original frame, so unedited pixels stay exactly as they were. ``render="atlas"`` re-renders
every pixel from the edited atlas images: ``alpha * fg(uv_fg) + (1 - alpha) * bg(uv_bg)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import cv2
import numpy as np

from pipeline import previews, storage
from pipeline.config import ConfigError, Resources
from pipeline.stage import add_output
from stages.atlas.artifacts import AtlasFit, decode_image, load_fit
from stages.atlas.render import render_frames, sample_texture
from stages.edit.base import EditStage, RowFieldError


@dataclass(frozen=True)
class AtlasEditConfig:
    layer: Literal["foreground", "background"] = "foreground"
    anchor: Literal["frame", "atlas"] = "frame"
    center: tuple[float, float] | None = None  # frame pixel (x, y), or atlas texture coords (u, v)
    anchor_frame: int = 0
    size: float | None = None  # overlay width: pixels of the anchor frame, or a fraction of the atlas
    opacity: float = 1.0
    render: Literal["composite", "atlas"] = "composite"
    save_atlas: bool = True  # write the edited atlas PNG as a preview
    resources: Resources = field(default_factory=lambda: Resources(num_cpus=1, min_actors=1, max_actors=1))

    def __post_init__(self) -> None:
        if not 0.0 <= self.opacity <= 1.0:
            raise ConfigError(f"opacity must be in [0, 1], got {self.opacity}")
        if self.size is not None and self.size <= 0:
            raise ConfigError(f"size must be positive, got {self.size}")


def bilinear(image: np.ndarray, x: float, y: float) -> np.ndarray:
    """image [H, W, C] at a subpixel (x, y): float64 [C]."""
    h, w = image.shape[:2]
    x, y = float(np.clip(x, 0, w - 1)), float(np.clip(y, 0, h - 1))
    x0, y0 = min(int(x), w - 2), min(int(y), h - 2)
    fx, fy = x - x0, y - y0
    p = image[y0:y0 + 2, x0:x0 + 2].astype(np.float64)
    return (p[0, 0] * (1 - fx) * (1 - fy) + p[0, 1] * fx * (1 - fy) + p[1, 0] * (1 - fx) * fy
            + p[1, 1] * fx * fy)


def inner_point(mask: np.ndarray) -> tuple[float, float]:
    """(x, y) of the pixel of bool mask [H, W] farthest from its outside: the distance transform's peak.

    Unlike a centroid, which can fall outside a non-convex or split shape, it is always well
    inside the largest region. Ties go to the one nearest the region's centroid.
    """
    dist = cv2.distanceTransform(np.pad(mask.astype(np.uint8), 1), cv2.DIST_L2, 5)[1:-1, 1:-1]
    ys, xs = np.nonzero(dist >= dist.max() - 1e-3)
    cy, cx = np.nonzero(mask)
    pick = int(np.argmin((xs - cx.mean()) ** 2 + (ys - cy.mean()) ** 2))
    return float(xs[pick]), float(ys[pick])


def local_affine(uv: np.ndarray, x: float, y: float, radius: float,
                 keep: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares affine fit of a UV map [H, W, 2] over the pixels within ``radius`` of (x, y).

    Returns (texture coords at (x, y) [2], Jacobian d(tex)/d(pixel) [2, 2], columns d/dx, d/dy).
    ``keep`` (bool [H, W]) restricts the fit to the layer's own pixels. A fit over the overlay's
    footprint places it more faithfully than a point derivative of a mapping that wobbles.
    """
    h, w = uv.shape[:2]
    ys, xs = np.mgrid[0:h, 0:w]
    near = (xs - x) ** 2 + (ys - y) ** 2 <= max(radius, 2.0) ** 2
    if keep is not None and (near & keep).sum() >= 6:
        near &= keep
    px = np.stack([xs[near] - x, ys[near] - y, np.ones(int(near.sum()))], -1).astype(np.float64)
    coef, *_ = np.linalg.lstsq(px, uv[near].astype(np.float64), rcond=None)  # [3, 2]
    return coef[2], coef[:2].T


def overlay_matrix(fit: AtlasFit, config: AtlasEditConfig, overlay_shape: tuple[int, int],
                   resolution: int) -> np.ndarray:
    """Affine [2, 3] from overlay pixels to atlas texture pixels for the configured placement."""
    oh, ow = overlay_shape
    centre_o = np.array([(ow - 1) / 2.0, (oh - 1) / 2.0])
    foreground = config.layer == "foreground"
    if config.anchor == "atlas":
        cu, cv = config.center if config.center is not None else (0.5, 0.5)
        k = resolution * (config.size or 0.25) / ow
        lin = np.eye(2) * k
        origin = np.array([cu, cv]) * resolution - 0.5
    else:
        t_n, h, w = fit.alpha.shape
        f = config.anchor_frame
        if not 0 <= f < t_n:
            raise RowFieldError(f"anchor_frame {f} is outside the video's {t_n} frames")
        fg = fit.alpha[f] > 0.5
        if config.center is None:
            if foreground and not fg.any():
                raise RowFieldError(
                    f"the atlas found no foreground in frame {f} (no pixel with alpha > 0.5) to place the overlay on; "
                    "give the row a mask_uri (a first-frame mask of the object) or use layer=background")
            cx, cy = inner_point(fg) if foreground else ((w - 1) / 2.0, (h - 1) / 2.0)
        else:
            cx, cy = map(float, config.center)
        if not (0 <= cx <= w - 1 and 0 <= cy <= h - 1):
            raise RowFieldError(f"placement center ({cx:g}, {cy:g}) is outside frame {f} ({w}x{h})")
        a = float(bilinear(fit.alpha[f][..., None], cx, cy)[0])
        if foreground and a < 0.5:
            raise RowFieldError(f"placement center ({cx:g}, {cy:g}) is not on the foreground in frame {f} "
                                f"(alpha {a:.2f}); use layer=background or another center")
        if config.size is not None:
            size = config.size
        elif foreground:
            size = 0.5 * 2.0 * np.sqrt(fg.sum() / np.pi)
        else:
            size = 0.25 * min(h, w)
        uv = fit.uv_fg[f] if foreground else fit.uv_bg[f]
        at, jac = local_affine(uv, cx, cy, 0.5 * size, fg if foreground else ~fg)
        lin = resolution * jac * (size / ow)
        origin = at * resolution - 0.5
    return np.concatenate([lin, (origin - lin @ centre_o)[:, None]], 1)


def place_overlay(overlay: np.ndarray, matrix: np.ndarray, resolution: int, opacity: float) -> np.ndarray:
    """Premultiplied RGBA float32 [R, R, 4] in [0, 1]: the overlay warped onto an empty atlas."""
    rgba = overlay.astype(np.float32) / 255.0
    rgba[..., :3] *= rgba[..., 3:4]
    shrink = np.sqrt(abs(np.linalg.det(matrix[:, :2])))
    if shrink < 0.5:  # pre-filter a strong reduction so the warp does not alias
        small = (max(2, int(round(rgba.shape[1] * shrink))), max(2, int(round(rgba.shape[0] * shrink))))
        sx, sy = small[0] / rgba.shape[1], small[1] / rgba.shape[0]
        rgba = cv2.resize(rgba, small, interpolation=cv2.INTER_AREA)
        pre = np.array([[1 / sx, 0, 0.5 / sx - 0.5], [0, 1 / sy, 0.5 / sy - 0.5]])
        matrix = np.concatenate([matrix[:, :2] @ pre[:, :2], (matrix[:, :2] @ pre[:, 2] + matrix[:, 2])[:, None]], 1)
    layer = cv2.warpAffine(rgba, matrix.astype(np.float64), (resolution, resolution), flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0, 0))
    return np.clip(layer * opacity, 0.0, 1.0)


def composite(frames: np.ndarray, layer: np.ndarray, uv: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """frames uint8 [T, H, W, 3] with a premultiplied RGBA atlas layer [R, R, 4] warped in through
    uv [T, H, W, 2] and weighted by weight [T, H, W]: uint8 [T, H, W, 3]."""
    out = np.empty_like(frames)
    for t in range(len(frames)):
        s = sample_texture(layer, uv[t], cv2.BORDER_CONSTANT)
        w = weight[t][..., None]
        edited = frames[t].astype(np.float32) * (1.0 - s[..., 3:4] * w) + 255.0 * s[..., :3] * w
        out[t] = np.clip(np.rint(edited), 0, 255).astype(np.uint8)
    return out


class AtlasEditStage(EditStage):
    method = "atlas_edit"
    config_class = AtlasEditConfig
    needs = ("atlas",)
    reads = ("frames", "fps", "atlas_dir")

    def check_row(self, row: dict) -> None:
        if not any(isinstance(row.get(k), str) and row[k].strip() for k in ("overlay_uri", "atlas_uri")):
            raise RowFieldError("method 'atlas_edit' needs row field 'overlay_uri' (an RGBA image, placed by "
                                "params layer/center/size) or 'atlas_uri' (a replacement atlas image)")

    def read_image(self, uri: str, field_name: str) -> np.ndarray:
        try:
            data = storage.read_bytes(uri.strip(), self.context.storage)
        except FileNotFoundError as exc:
            raise RowFieldError(f"{field_name} {uri!r} not found") from exc
        try:
            return decode_image(data, f"{field_name} {uri!r}", channels=4)
        except ValueError as exc:
            raise RowFieldError(str(exc)) from exc

    def edit(self, row: dict, config: AtlasEditConfig) -> np.ndarray:
        frames = np.asarray(row["frames"])
        fit = load_fit(row["atlas_dir"], self.context.storage)
        if fit.alpha.shape != frames.shape[:3]:
            raise ValueError(f"atlas fit at {row['atlas_dir']} is for {fit.alpha.shape} frames, "
                             f"the row has {frames.shape[:3]}")
        foreground = config.layer == "foreground"
        uv = fit.uv_fg if foreground else fit.uv_bg
        weight = fit.alpha if foreground else 1.0 - fit.alpha
        atlas = fit.fg_atlas if foreground else fit.bg_atlas
        res = atlas.shape[0]
        if isinstance(row.get("atlas_uri"), str) and row["atlas_uri"].strip():
            new = self.read_image(row["atlas_uri"], "atlas_uri")
            if new.shape[:2] != atlas.shape[:2]:
                new = cv2.resize(new, atlas.shape[1::-1], interpolation=cv2.INTER_AREA)
            layer = new.astype(np.float32) / 255.0
            layer[..., 3] *= config.opacity
            layer[..., :3] *= layer[..., 3:4]
        else:
            overlay = self.read_image(row["overlay_uri"], "overlay_uri")
            layer = place_overlay(overlay, overlay_matrix(fit, config, overlay.shape[:2], res), res,
                                  config.opacity)
        edited_atlas = np.clip(np.rint(atlas * (1.0 - layer[..., 3:4]) + 255.0 * layer[..., :3]), 0, 255)
        edited_atlas = edited_atlas.astype(np.uint8)
        if config.render == "atlas":
            fg = edited_atlas if foreground else fit.fg_atlas
            bg = fit.bg_atlas if foreground else edited_atlas
            out = render_frames(fg, bg, fit.uv_fg, fit.uv_bg, fit.alpha)
        elif isinstance(row.get("atlas_uri"), str) and row["atlas_uri"].strip():
            out = self.replace_layer(frames, atlas, edited_atlas, uv, weight)
        else:
            out = composite(frames, layer, uv, weight)
        if config.save_atlas and row.get("job_id") and row.get("video_id"):
            url = storage.join_url(self.context.output_url, "previews", storage.safe_id(str(row["video_id"])),
                                   f"{storage.safe_id(str(row['job_id']))}-edited-atlas.png")
            add_output(row, "edited_atlas", previews.write_png(edited_atlas, url, self.context.storage))
        return out

    @staticmethod
    def replace_layer(frames: np.ndarray, old: np.ndarray, new: np.ndarray, uv: np.ndarray,
                      weight: np.ndarray) -> np.ndarray:
        """frames + weight * (new(uv) - old(uv)): the layer's change, keeping the video's detail."""
        out = np.empty_like(frames)
        for t in range(len(frames)):
            delta = sample_texture(new, uv[t]) - sample_texture(old, uv[t])
            edited = frames[t].astype(np.float32) + weight[t][..., None] * delta
            out[t] = np.clip(np.rint(edited), 0, 255).astype(np.uint8)
        return out
