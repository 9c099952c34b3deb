"""Depth geometry and normalisation, checked with a deterministic stand-in model.

The stand-in returns brightness as inverse depth, so these tests check *geometry* (the
letterbox/stretch canvas, mapping predictions back to the frame, normalisation, colour maps),
not that a depth model orders depth: no real depth weights ship with the tests. The tiny real
DPT is exercised in tests/test_depth.py.
"""

from __future__ import annotations

from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch

from jobs import sample_data
from stages.depth import (
    DepthEstimator,
    canvas_meta,
    colorize,
    denormalise,
    map_back,
    normalise,
    prepare_inputs,
)

SIZES = {"square": (40, 40), "landscape": (36, 84), "portrait": (84, 36)}  # (H, W)


class BrightnessDepth(torch.nn.Module):
    """Stand-in with DPT's interface: inverse depth = mean brightness, predicted at half resolution."""

    def forward(self, pixel_values):
        grey = pixel_values.float().mean(dim=1, keepdim=True)
        half = torch.nn.functional.avg_pool2d(grey, 2)
        return SimpleNamespace(predicted_depth=(half.squeeze(1) + 1.0) * 10.0)


def _standin(mode: str = "pad", size: int = 64) -> DepthEstimator:
    return DepthEstimator(BrightnessDepth(), None, input_size=size, resize_mode=mode)


def _two_planes(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """A near plane (a rectangle at 2 m) in front of a far one (6 m), as brightness = inverse depth."""
    depth = np.full((h, w), 6.0, np.float32)
    depth[h // 4: h // 2 + h // 8, w // 5: w // 2] = 2.0
    image = np.repeat((255 * 2.0 / depth).astype(np.uint8)[..., None], 3, axis=-1)
    return image, depth


@pytest.mark.parametrize("aspect", list(SIZES))
@pytest.mark.parametrize("mode", ["pad", "stretch"])
def test_letterbox_geometry_keeps_two_planes_in_place_with_a_brightness_standin(aspect, mode):
    h, w = (s * 3 for s in SIZES[aspect])
    image, depth = _two_planes(h, w)
    norm, stats = normalise(_standin(mode).predict_image(image))
    near = depth < 4
    kernel = np.ones((9, 9), np.uint8)  # away from the edge, which the half-resolution stand-in blurs
    inside, outside = cv2.erode(near.astype(np.uint8), kernel) > 0, cv2.dilate(near.astype(np.uint8), kernel) == 0
    assert norm[inside].mean() > 0.9 and norm[outside].mean() < 0.1  # nearer = larger inverse depth
    # the boundary lands where it is in the frame: thresholding recovers the near plane
    predicted = norm > 0.5
    iou = (predicted & near).sum() / (predicted | near).sum()
    assert iou > 0.9, f"IoU {iou:.3f}"
    assert stats["max"] > stats["min"] and norm.dtype == np.float16


@pytest.mark.parametrize("preset", ["landscape", "portrait"])
def test_map_back_geometry_follows_the_sample_layers_with_a_brightness_standin(preset):
    clip = sample_data.generate_preset(preset, seed=1)
    inv = 1.0 / clip.depth[::6]  # [T, H, W], two layers
    frames = np.repeat((255 * inv / inv.max()).astype(np.uint8)[..., None], 3, axis=-1)
    norm, _ = normalise(_standin(size=96).predict(frames, batch_size=3))
    assert norm.shape == clip.depth[::6].shape
    fg = clip.depth[::6] < sample_data.BG_DEPTH_M - 1e-3
    assert float(norm[fg].mean()) > float(norm[~fg].mean()) + 0.5
    corr = np.corrcoef(norm.astype(np.float32).ravel(), inv.ravel())[0, 1]
    assert corr > 0.95


def test_canvas_geometry_and_map_back_undo_each_other():
    meta = canvas_meta(100, 200, 32, "pad")
    assert (meta.top, meta.left, meta.inner_h, meta.inner_w) == (8, 0, 16, 32)
    assert (canvas_meta(200, 100, 32, "pad").left, canvas_meta(200, 100, 32, "pad").inner_w) == (8, 16)
    assert canvas_meta(100, 200, 32, "stretch").inner_h == 32
    yy, xx = np.mgrid[0:60, 0:90].astype(np.float32)
    smooth = ((np.sin(xx / 14) + np.cos(yy / 11) + 2) * 60).astype(np.uint8)
    frames = np.repeat(smooth[None, ..., None], 3, axis=-1)
    canvas, meta = prepare_inputs(frames, 48, "pad")
    assert canvas.shape == (1, 48, 48, 3)
    back = map_back(canvas[..., 0].astype(np.float32), meta)
    assert back.shape == (1, 60, 90)
    assert np.abs(back[0] - smooth).mean() < 3.0
    with pytest.raises(ValueError, match="uint8"):
        prepare_inputs(frames.astype(np.float32), 48)


def test_normalise_is_invertible_and_rejects_bad_values():
    raw = np.random.default_rng(0).uniform(100, 3000, (4, 8, 9)).astype(np.float32)
    norm, stats = normalise(raw)
    assert norm.dtype == np.float16 and norm.min() == 0 and norm.max() == 1
    assert stats["min"] == pytest.approx(raw.min()) and stats["p98"] <= stats["max"]
    np.testing.assert_allclose(denormalise(norm, stats), raw, atol=2e-3 * (raw.max() - raw.min()))
    flat, fstats = normalise(np.full((2, 3, 3), 5.0))
    assert not flat.any() and fstats["scale"] == 0
    with pytest.raises(ValueError, match="non-finite"):
        normalise(np.array([[np.nan, 1.0]]))


def test_colorize_makes_near_bright():
    ramp = np.linspace(0, 1, 16, dtype=np.float32)[None, None, :].repeat(4, axis=1)
    rgb = colorize(ramp)
    assert rgb.shape == (1, 4, 16, 3) and rgb.dtype == np.uint8
    assert rgb[0, 0, -1].astype(int).sum() > rgb[0, 0, 0].astype(int).sum() + 300
    with pytest.raises(ValueError, match="unknown colormap"):
        colorize(ramp, "rainbow")
