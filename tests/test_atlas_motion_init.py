"""Motion-compensated initialisation: frame-t -> atlas affines that keep every layer inside the atlas."""

from __future__ import annotations

import numpy as np
import pytest

from stages.atlas.motion_init import carry, compensation, fit_to_atlas, frame_to_reference, layer_points


def pan(t_n: int, px_per_frame: float) -> np.ndarray:
    """[T, 2, 3] frame-0 -> frame-t pixel affines of a horizontal pan (content moves left)."""
    out = np.zeros((t_n, 2, 3))
    out[:, 0, 0] = out[:, 1, 1] = 1.0
    out[:, 0, 2] = -px_per_frame * np.arange(t_n)
    return out


def carried_extent(comp: np.ndarray, shape, masks=None) -> tuple[np.ndarray, np.ndarray]:
    t_n, h, w = shape
    pts = layer_points(shape, (max(h, w) - 1) / 2.0, masks)
    allp = np.concatenate([carry(a, p) for a, p in zip(comp, pts) if len(p)])
    return allp.min(0), allp.max(0)


def test_frame_to_reference_undoes_the_motion():
    shape = (5, 65, 65)
    half = 32.0
    ref = frame_to_reference(pan(5, 4.0), half)
    # pixel (40, 10) of frame 4 is pixel (56, 10) of frame 0 (the content moved 16 px left)
    net = lambda x, y: np.array([x / half - 1, y / half - 1, 1.0])  # noqa: E731
    np.testing.assert_allclose(ref[4] @ net(40, 10), net(56, 10), atol=1e-12)
    np.testing.assert_allclose(ref[0], np.eye(3), atol=1e-12)
    assert len(layer_points(shape, half, None)) == 5


def test_small_motion_is_left_alone():
    comp, scales = compensation(np.stack([pan(4, 0.0), pan(4, 0.0)]), (4, 33, 33))
    assert scales.tolist() == [1.0, 1.0]
    np.testing.assert_allclose(comp[1].numpy(), np.tile(np.eye(3), (4, 1, 1)), atol=1e-6)


def test_a_long_pan_is_shrunk_to_fit_the_atlas():
    shape = (30, 65, 65)
    motions = np.stack([pan(30, 0.0), pan(30, 6.0)])  # background pans 174 px: 2.7 frame widths
    comp, scales = compensation(motions, shape)
    fg_scale, bg_scale = scales.tolist()
    assert fg_scale == 1.0
    expected = 2.0 / ((64 + 6 * 29) / 32.0)  # atlas side / panorama width in network units
    assert bg_scale == pytest.approx(expected, rel=1e-6)
    lo, hi = carried_extent(comp[1].numpy().astype(np.float64), shape)
    assert lo.min() >= -1 - 1e-5 and hi.max() <= 1 + 1e-5  # nothing clamped at the atlas border
    assert hi[0] - lo[0] == pytest.approx(2.0, rel=1e-5)  # and the atlas width is used
    # a point fixed in the scene lands on the same atlas place in every frame
    half = 32.0
    p0 = np.array([40 / half - 1, 20 / half - 1])
    for t in (0, 10, 29):
        px = np.array([(40 - 6.0 * t) / half - 1, 20 / half - 1])
        a, a0 = comp[1, t].numpy().astype(np.float64), comp[1, 0].numpy().astype(np.float64)
        np.testing.assert_allclose(carry(a, px[None]), carry(a0, p0[None]), atol=1e-5)


def test_foreground_is_bounded_by_its_mask_only():
    shape = (3, 33, 33)
    masks = np.zeros(shape, bool)
    masks[:, 10:20, 10:20] = True
    affines = np.tile(np.eye(3), (3, 1, 1))
    affines[2, 0, 2] = 5.0  # the object's last frame carried 5 network units right: must be brought back
    out, scale = fit_to_atlas(affines, layer_points(shape, 16.0, masks))
    assert scale < 1.0
    lo, hi = carried_extent(out, shape, masks)
    assert lo.min() >= -1 - 1e-9 and hi.max() <= 1 + 1e-9
