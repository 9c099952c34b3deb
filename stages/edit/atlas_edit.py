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

A long clip fitted in overlapping windows (``atlas.long_clips: window``) is edited window by
window and the edited frames cross-faded over each overlap, as the atlas stage cross-fades its
reconstruction. The overlay stays one object: the window holding ``anchor_frame`` (the one
weighted most there) places it as above; each next window, outwards from it, gets its
overlay-to-atlas affine by least squares from the frames it shares with the window before it
(:func:`transfer_matrix`: the overlay coordinates of the pixels the placed overlay covers there
against the next window's texture coordinates of the same pixels). ``anchor="atlas"`` and
``atlas_uri`` are row errors on a windowed fit: each window has its own atlas, so one set of
atlas coordinates, or one replacement atlas, means nothing across them.

``render="composite"`` (default) composites the overlay layer, warped into each frame through
the layer's UV map and weighted by alpha (foreground) or 1 - alpha (background), over the
original frame, so unedited pixels stay exactly as they were. ``render="atlas"`` re-renders
every pixel from the edited atlas images: ``alpha * fg(uv_fg) + (1 - alpha) * bg(uv_bg)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

import cv2
import numpy as np

from pipeline import previews, storage
from pipeline.config import ConfigError, Resources
from pipeline.stage import add_output
from stages.atlas.artifacts import AtlasFit, WindowFit, decode_image, load_windows
from stages.atlas.render import render_frames, sample_texture
from stages.atlas.windows import blend, crossfade_weights
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


def invert_affine(matrix: np.ndarray) -> np.ndarray:
    """The inverse of an affine [2, 3] (x' = A x + b), as [2, 3]."""
    inv = np.linalg.inv(matrix[:, :2])
    return np.concatenate([inv, (-inv @ matrix[:, 2])[:, None]], 1)


def transfer_matrix(matrix: np.ndarray, src: WindowFit, dst: WindowFit, overlay_shape: tuple[int, int],
                    foreground: bool, threshold: float = 0.5) -> np.ndarray:
    """The overlay-to-atlas affine [2, 3] of window ``dst`` that puts the overlay where ``src`` has it.

    ``matrix`` maps overlay pixels to ``src``'s atlas texture pixels. In every frame the two
    windows share, the pixels of the layer (alpha, or 1 - alpha, above ``threshold`` in both
    fits) that land inside the overlay's rectangle through ``src`` give correspondences: their
    overlay coordinates (``src``'s texture position mapped back through ``matrix``) against
    ``dst``'s texture pixel there. The affine is their least-squares fit. RowFieldError when the
    overlay covers too few such pixels to fit one.
    """
    oh, ow = overlay_shape
    inverse = invert_affine(matrix)
    res_a, res_b = src.fit.fg_atlas.shape[0], dst.fit.fg_atlas.shape[0]
    lo, hi = max(src.start, dst.start), min(src.stop, dst.stop)
    overlay_pts, atlas_pts = [], []
    for t in range(lo, hi):
        a, b = src.fit, dst.fit
        uv_a = (a.uv_fg if foreground else a.uv_bg)[t - src.start]
        uv_b = (b.uv_fg if foreground else b.uv_bg)[t - dst.start]
        w_a = a.alpha[t - src.start] if foreground else 1.0 - a.alpha[t - src.start]
        w_b = b.alpha[t - dst.start] if foreground else 1.0 - b.alpha[t - dst.start]
        texel = uv_a.reshape(-1, 2).astype(np.float64) * res_a - 0.5
        o = texel @ inverse[:, :2].T + inverse[:, 2]
        keep = ((o[:, 0] >= 0) & (o[:, 0] <= ow - 1) & (o[:, 1] >= 0) & (o[:, 1] <= oh - 1)
                & (w_a.reshape(-1) > threshold) & (w_b.reshape(-1) > threshold))
        overlay_pts.append(o[keep])
        atlas_pts.append(uv_b.reshape(-1, 2)[keep].astype(np.float64) * res_b - 0.5)
    o, dst_pts = np.concatenate(overlay_pts), np.concatenate(atlas_pts)
    design = np.concatenate([o, np.ones((len(o), 1))], 1)
    if len(o) < 6 or np.linalg.matrix_rank(design) < 3:
        raise RowFieldError(f"the overlay covers only {len(o)} pixels of the layer in frames {lo}-{hi - 1}, "
                            f"shared by the atlas windows [{src.start}, {src.stop}) and [{dst.start}, {dst.stop}); "
                            "it cannot be carried from one window to the next (place it on a part of the layer "
                            "visible there, or fit fewer, longer windows)")
    coef, *_ = np.linalg.lstsq(design, dst_pts, rcond=None)  # [3, 2]
    return coef.T


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
        windows = load_windows(row["atlas_dir"], self.context.storage)
        shape = (windows[-1].stop,) + windows[0].fit.alpha.shape[1:]
        if shape != frames.shape[:3]:
            raise ValueError(f"atlas fit at {row['atlas_dir']} is for {shape} frames, "
                             f"the row has {frames.shape[:3]}")
        replacing = isinstance(row.get("atlas_uri"), str) and row["atlas_uri"].strip()
        if len(windows) == 1:
            out, edited_atlas = self.edit_window(row, frames, windows[0].fit, config, None)
            self.save_atlas(row, config, edited_atlas, "edited_atlas")
            return out
        n = len(windows)
        if replacing:
            raise RowFieldError(f"atlas_uri (a replacement atlas) cannot edit {row['atlas_dir']}: the clip was "
                                f"fitted in {n} windows (atlas.long_clips: window), each with its own atlas; use "
                                "overlay_uri, or fit one atlas (a shorter decode, or a higher atlas.max_frames)")
        if config.anchor == "atlas":
            raise RowFieldError(f"anchor 'atlas' cannot place the overlay on {row['atlas_dir']}: the clip was fitted "
                                f"in {n} windows, each with its own atlas coordinates; use anchor 'frame' (a pixel "
                                "of anchor_frame), or fit one atlas")
        if not 0 <= config.anchor_frame < len(frames):
            raise RowFieldError(f"anchor_frame {config.anchor_frame} is outside the video's {len(frames)} frames")
        plan = [(w.start, w.stop) for w in windows]
        first = int(np.argmax(crossfade_weights(plan, len(frames))[:, config.anchor_frame]))
        overlay = self.read_image(row["overlay_uri"], "overlay_uri")
        foreground = config.layer == "foreground"
        local = replace(config, anchor_frame=config.anchor_frame - windows[first].start)
        matrices: dict[int, np.ndarray] = {
            first: overlay_matrix(windows[first].fit, local, overlay.shape[:2], windows[first].fit.fg_atlas.shape[0])}
        for order in (range(first + 1, n), range(first - 1, -1, -1)):
            for i in order:
                j = i - 1 if i > first else i + 1
                matrices[i] = transfer_matrix(matrices[j], windows[j], windows[i], overlay.shape[:2], foreground)
        parts = []
        for i, win in enumerate(windows):
            out, edited_atlas = self.edit_window(row, frames[win.start:win.stop], win.fit, config,
                                                 (overlay, matrices[i]))
            parts.append(out)
            self.save_atlas(row, config, edited_atlas, "edited_atlas" if i == first else f"edited_atlas_w{i:03d}",
                            "" if i == first else f"-w{i:03d}")
        return np.clip(np.rint(blend(parts, plan, len(frames))), 0, 255).astype(np.uint8)

    def edit_window(self, row: dict, frames: np.ndarray, fit: AtlasFit, config: AtlasEditConfig,
                    placed: tuple[np.ndarray, np.ndarray] | None) -> tuple[np.ndarray, np.ndarray]:
        """(edited frames uint8 [T, H, W, 3], edited atlas uint8 [R, R, 3]) of one fit and its frames.

        ``placed``: (overlay RGBA, overlay-to-atlas affine [2, 3]) already chosen (a window of a
        long clip); None: the row's ``atlas_uri``, or its ``overlay_uri`` placed by ``config``.
        """
        if fit.alpha.shape != frames.shape[:3]:
            raise ValueError(f"atlas fit at {row['atlas_dir']} is for {fit.alpha.shape} frames, "
                             f"the row has {frames.shape[:3]}")
        foreground = config.layer == "foreground"
        uv = fit.uv_fg if foreground else fit.uv_bg
        weight = fit.alpha if foreground else 1.0 - fit.alpha
        atlas = fit.fg_atlas if foreground else fit.bg_atlas
        res = atlas.shape[0]
        replacing = placed is None and isinstance(row.get("atlas_uri"), str) and row["atlas_uri"].strip()
        if replacing:
            new = self.read_image(row["atlas_uri"], "atlas_uri")
            if new.shape[:2] != atlas.shape[:2]:
                new = cv2.resize(new, atlas.shape[1::-1], interpolation=cv2.INTER_AREA)
            layer = new.astype(np.float32) / 255.0
            layer[..., 3] *= config.opacity
            layer[..., :3] *= layer[..., 3:4]
        else:
            if placed is None:
                overlay = self.read_image(row["overlay_uri"], "overlay_uri")
                matrix = overlay_matrix(fit, config, overlay.shape[:2], res)
            else:
                overlay, matrix = placed
            layer = place_overlay(overlay, matrix, res, config.opacity)
        edited_atlas = np.clip(np.rint(atlas * (1.0 - layer[..., 3:4]) + 255.0 * layer[..., :3]), 0, 255)
        edited_atlas = edited_atlas.astype(np.uint8)
        if config.render == "atlas":
            fg = edited_atlas if foreground else fit.fg_atlas
            bg = fit.bg_atlas if foreground else edited_atlas
            out = render_frames(fg, bg, fit.uv_fg, fit.uv_bg, fit.alpha)
        elif replacing:
            out = self.replace_layer(frames, atlas, edited_atlas, uv, weight)
        else:
            out = composite(frames, layer, uv, weight)
        return out, edited_atlas

    def save_atlas(self, row: dict, config: AtlasEditConfig, edited_atlas: np.ndarray, key: str,
                   suffix: str = "") -> None:
        """Write an edited atlas PNG under previews/ and record it as ``outputs[key]`` (when asked)."""
        if config.save_atlas and row.get("job_id") and row.get("video_id"):
            url = storage.join_url(self.context.output_url, "previews", storage.safe_id(str(row["video_id"])),
                                   f"{storage.safe_id(str(row['job_id']))}-edited-atlas{suffix}.png")
            add_output(row, key, previews.write_png(edited_atlas, url, self.context.storage))

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
