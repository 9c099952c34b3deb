"""Homography motion initialisation: a rotating perspective camera over a textured plane.

The clip is rendered from known per-frame homographies (``K R_t K^-1``: a camera panning and
tilting 2.5 / 1 degrees a frame with a 60 degree field of view), so the background's true
frame-0 -> frame-t motion is known exactly. Measured on this clip (80 x 80, 8 frames, the
project's DIS flow): the chained RANSAC homographies put frame t's corners back in frame 0
within 9 px at t = 7 (the similarity chain: 20 px; the flow's own error is ~0.1 px a pixel but
spatially smooth, so the fitted perspective drifts ~1 px a pair at the corners), and at
initialisation a scene point lands on one atlas place in every frame within 0.8 px (the
similarity init: 2.3 px).
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from stages.atlas.config import AtlasConfig
from stages.atlas.flow import FlowField, dense_flow
from stages.atlas.masks import apply, corners, homography_ok, layer_motions
from stages.atlas.motion_init import compensation
from stages.atlas.networks import LayeredAtlas

SIZE, FRAMES = 80, 8


def rotation(yaw: float, pitch: float) -> np.ndarray:
    cy, sy, cp, sp = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch)
    return np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]]) @ np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])


def rotating_camera(t_n: int = FRAMES, size: int = SIZE, focal: float = 70.0, seed: int = 0
                    ) -> tuple[np.ndarray, np.ndarray]:
    """uint8 [T, size, size, 3] frames of a textured plane and float64 [T, 3, 3] frame-0 -> frame-t px homographies."""
    rng = np.random.default_rng(seed)
    big = 4 * size
    tex = np.zeros((big, big, 3), np.float32)
    for cell, amp in ((2, 0.5), (6, 0.3), (16, 0.2)):
        noise = rng.random((big // cell + 1, big // cell + 1, 3)).astype(np.float32)
        tex += amp * cv2.resize(noise, (big, big), interpolation=cv2.INTER_CUBIC)[:big, :big]
    tex = np.clip(tex * 255, 0, 255).astype(np.uint8)
    k = np.array([[focal, 0, (size - 1) / 2], [0, focal, (size - 1) / 2], [0, 0, 1]])
    to_texture = np.array([[1, 0, 1.5 * size], [0, 1, 1.5 * size], [0, 0, 1.0]])  # frame-0 px -> texture px
    truth, frames = [], []
    for t in range(t_n):
        h = k @ rotation(np.radians(2.5) * t, np.radians(1.0) * t) @ np.linalg.inv(k)
        truth.append(h / h[2, 2])
        frames.append(cv2.warpPerspective(tex, to_texture @ np.linalg.inv(truth[-1]), (size, size),
                                          flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP))
    return np.stack(frames), np.stack(truth)


@pytest.fixture(scope="module")
def clip():
    frames, truth = rotating_camera()
    return frames, truth, dense_flow(frames)


def back_to_frame0_error(motions: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per frame, the largest px distance between frame t's corners carried back to frame 0 by motions and truth."""
    c = corners((SIZE, SIZE))
    return np.array([np.abs(apply(np.linalg.inv(m), c) - apply(np.linalg.inv(g), c)).max()
                     for m, g in zip(motions, truth)])


def init_uv_spread(motions: tuple[np.ndarray, np.ndarray], truth: np.ndarray, points: np.ndarray) -> float:
    """Largest spread (frame-0 px) of the init bg uv of fixed scene points over the frames."""
    masks = np.zeros((FRAMES, SIZE, SIZE), bool)
    comp, scales = compensation(np.stack(motions), (FRAMES, SIZE, SIZE), masks)
    assert comp.shape == (2, FRAMES, 3, 3)
    model = LayeredAtlas(AtlasConfig(), FRAMES, comp, scales)
    half = (SIZE - 1) / 2
    worst = 0.0
    for p in points:
        px = np.stack([apply(g, p[None])[0] for g in truth])  # where the scene point is in each frame
        xyt = torch.tensor(np.c_[px / half - 1, np.linspace(-1, 1, FRAMES)], dtype=torch.float32)
        with torch.no_grad():
            uv = model.uv_bg(xyt).double().numpy()
        worst = max(worst, float(np.abs(uv - uv[0]).max()) * half / (model.scale * model.layer_scale_values[1]))
    return worst


def test_chained_homographies_follow_a_rotating_camera(clip):
    frames, truth, flow = clip
    masks = np.zeros(frames.shape[:3], bool)
    _, bg = layer_motions(flow, masks, bg_model="homography")
    _, bg_affine = layer_motions(flow, masks, bg_model="affine")
    assert bg.shape == (FRAMES, 3, 3)
    assert np.abs(bg[1:, 2, :2]).max() > 1e-4  # projective, not an affine
    hom, aff = back_to_frame0_error(bg, truth), back_to_frame0_error(bg_affine, truth)
    assert hom[1] < 1.0  # one pair: under a pixel at the corners
    assert hom.max() < 10.0  # frame 7's corners: 40 px of true motion, fitted within 10 px
    assert aff.max() > 1.8 * hom.max()  # the similarity chain cannot follow the perspective


def test_init_sends_a_scene_point_to_one_atlas_place(clip):
    frames, truth, flow = clip
    masks = np.zeros(frames.shape[:3], bool)
    points = np.array([[20.0, 30.0], [60.0, 50.0], [40.0, 40.0], [30.0, 60.0]])  # frame-0 px, visible throughout
    hom = init_uv_spread(layer_motions(flow, masks, bg_model="homography"), truth, points)
    aff = init_uv_spread(layer_motions(flow, masks, bg_model="affine"), truth, points)
    exact = init_uv_spread((truth, truth), truth, points)
    assert exact < 1e-3  # the compensation itself (projective, float32) is exact
    assert hom < 1.2
    assert aff > 2.0 * hom


def test_compensation_is_float32_under_autocast():
    masks = np.zeros((3, 33, 33), bool)
    motions = np.tile(np.eye(3), (2, 3, 1, 1))
    motions[1, 2] = [[1.0, 0.02, 1.0], [0.0, 1.0, 0.5], [2e-3, -1e-3, 1.0]]
    comp, scales = compensation(motions, (3, 33, 33), masks)
    model = LayeredAtlas(AtlasConfig(), 3, comp, scales)
    xyt = torch.tensor([[0.3, -0.2, 1.0], [0.9, 0.9, 1.0]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.compensate(xyt, 1)
    assert out.dtype == torch.float32
    m = comp[1, 2].double().numpy()
    np.testing.assert_allclose(out.double().numpy(), apply(m, xyt[:, :2].double().numpy()), atol=1e-6)


def homography_flow(step: np.ndarray, t_n: int = 4, size: int = 64, valid: np.ndarray | None = None) -> FlowField:
    """A FlowField whose every frame pair moves by the pixel map ``step`` [T - 1, 3, 3]."""
    ys, xs = np.mgrid[0:size, 0:size]
    p = np.stack([xs.ravel(), ys.ravel()], -1).astype(np.float64)
    fwd = np.stack([(apply(s, p) - p).reshape(size, size, 2) for s in step]).astype(np.float32)
    ok = np.ones((t_n - 1, size, size), bool) if valid is None else valid
    return FlowField(fwd, -fwd, ok, ok)


def test_degenerate_pairs_fall_back_to_the_affine():
    size, t_n = 64, 4
    good = np.array([[1.0, 0.01, 1.5], [-0.01, 1.0, 0.5], [2e-4, 1e-4, 1.0]])  # mild perspective
    horizon = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.012, 0.0, 1.0]])  # right edge 1.76x foreshortened
    steps = np.stack([good, horizon, good])
    valid = np.ones((t_n - 1, size, size), bool)
    valid[2] = False
    valid[2, 30:33, 20:30] = True  # 30 samples: too few inliers for a homography
    flow = homography_flow(steps, t_n, size, valid)
    masks = np.zeros((t_n, size, size), bool)
    _, bg = layer_motions(flow, masks, bg_model="homography")
    _, bg_affine = layer_motions(flow, masks, bg_model="affine")
    c = corners((size, size))
    # pair 0 is the true homography
    np.testing.assert_allclose(apply(bg[1], c), apply(good, c), atol=0.05)
    # pairs 1 and 2 fell back: their steps equal the similarity steps of the affine model
    for t in (1, 2):
        step = bg[t + 1] @ np.linalg.inv(bg[t])
        affine_step = bg_affine[t + 1] @ np.linalg.inv(bg_affine[t])
        np.testing.assert_allclose(step / step[2, 2], affine_step / affine_step[2, 2], atol=1e-6)
    assert np.all(np.isfinite(bg))


def test_homography_checks():
    shape = (64, 64)
    eye = np.eye(3)
    good = np.array([[1.0, 0.01, 1.5], [-0.01, 1.0, 0.5], [2e-4, 1e-4, 1.0]])
    assert homography_ok(good, eye, good, shape)
    flipped = np.diag([-1.0, 1.0, 1.0])
    assert not homography_ok(flipped, eye, flipped, shape)  # det <= 0: a mirror
    far = np.array([[1.0, 0, 0], [0, 1.0, 0], [0.02, 0, 1.0]])  # w from 1 to 2.3 across the frame
    assert not homography_ok(far, eye, far, shape)
    shifted = np.array([[1.0, 0, 12.0], [0, 1.0, 0], [0, 0, 1.0]])
    assert not homography_ok(shifted, eye, shifted, shape)  # 12 px from the pair's affine: > 10 % of 64
    # each step fine, but the chain sends frame t's far corners to the horizon
    step = np.array([[1.0, 0, 0], [0, 1.0, 0], [3e-3, 0, 1.0]])  # w up to 1.19 across the frame
    chain = np.linalg.matrix_power(step, 5)
    assert homography_ok(step, step, step, shape)
    assert not homography_ok(step, step, chain, shape)


def test_unknown_motion_model_is_refused():
    flow = homography_flow(np.stack([np.eye(3)]), 2, 16)
    with pytest.raises(ValueError, match="motion model"):
        layer_motions(flow, np.zeros((2, 16, 16), bool), bg_model="planes")


@pytest.mark.parametrize("relative", [False, True])
def test_rigidity_at_init_relative_to_the_compensation(clip, relative):
    """At initialisation the residual is zero: measured against the init, both rigidity terms sit at their minimum."""
    from stages.atlas.fit import FitData, Normaliser, training_losses

    frames, truth, flow = clip
    masks = np.zeros(frames.shape[:3], bool)
    data = FitData.build(frames, masks, flow, torch.device("cpu"), np.stack([truth, truth]))
    config = AtlasConfig(batch_pixels=512, rigidity_relative_to_init=relative)
    comp, scales = compensation(data.motions, frames.shape[:3], masks)
    model = LayeredAtlas(config, FRAMES, comp, scales)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        terms = training_losses(model, data, Normaliser(*frames.shape[:3]), config, 0, generator, torch.device("cpu"))
    eps = 1e-3
    rotation_minimum = np.sqrt(2) * (1 + eps) + np.sqrt(2) / (1 + eps)  # symmetric Dirichlet of a rotation
    w = config.weights
    rigidity_min = 2 * w.rigidity * rotation_minimum
    global_min = (w.global_rigidity_fg + w.global_rigidity_bg) * rotation_minimum
    if relative:
        assert float(terms["rigidity"]) == pytest.approx(rigidity_min, rel=1e-4)
        assert float(terms["global_rigidity"]) == pytest.approx(global_min, rel=1e-4)
    else:  # the whole mapping: the projective init is not an isometry, the terms pull it away
        assert float(terms["rigidity"]) > rigidity_min * 1.001
        assert float(terms["global_rigidity"]) > global_min * 1.005


def test_a_similarity_view_keeps_its_similarity():
    """Flow that a similarity explains (plus noise): the homography model adds no noise-fitted perspective."""
    size, t_n = 64, 5
    step = np.array([[1.01, -0.02, 1.5], [0.02, 1.01, -0.8], [0.0, 0.0, 1.0]])
    flow = homography_flow(np.stack([step] * (t_n - 1)), t_n, size)
    rng = np.random.default_rng(0)
    flow.forward[:] += rng.normal(0.0, 0.3, flow.forward.shape).astype(np.float32)
    masks = np.zeros((t_n, size, size), bool)
    _, bg = layer_motions(flow, masks, bg_model="homography")
    _, bg_affine = layer_motions(flow, masks, bg_model="affine")
    np.testing.assert_array_equal(bg, bg_affine)
