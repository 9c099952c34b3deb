"""LK tracking backend and the tracker interface."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from pipeline.config import ConfigError, from_dict
from stages.tracking import LKConfig, TrackingConfig, check_inputs, make_tracker
from stages.tracking.lk import LKTracker, neighbour_motion


def translated_clip(t_len: int, shift: tuple[float, float], h: int = 96, w: int = 128, seed: int = 0,
                    pad: int = 64) -> np.ndarray:
    """A blurred-noise texture moving by ``shift`` (dx, dy) px per frame, bilinear: uint8 [T, H, W, 3]."""
    rng = np.random.default_rng(seed)
    base = cv2.GaussianBlur((rng.random((h + 2 * pad, w + 2 * pad, 3)) * 255).astype(np.float32), (0, 0), 1.5)
    base = (base - base.min()) / (base.max() - base.min()) * 255
    out = []
    for t in range(t_len):
        m = np.float32([[1, 0, shift[0] * t - pad], [0, 1, shift[1] * t - pad]])
        out.append(cv2.warpAffine(base, m, (w, h), flags=cv2.INTER_LINEAR))
    return np.clip(np.rint(np.stack(out)), 0, 255).astype(np.uint8)


def test_lk_recovers_subpixel_translation():
    shift = (0.37, -0.61)
    frames = translated_clip(8, shift)
    ys, xs = np.mgrid[20:80:12, 20:110:12]
    queries = np.stack([np.zeros(xs.size), xs.ravel(), ys.ravel()], 1).astype(np.float32)
    tracks, vis = LKTracker().track(frames, queries)
    assert tracks.shape == (8, len(queries), 2) and tracks.dtype == np.float32 and vis.dtype == bool
    expected = queries[None, :, 1:] + np.arange(8)[:, None, None] * np.array(shift, np.float32)
    err = np.linalg.norm(tracks - expected, axis=-1)
    assert vis.all()
    assert err.max() < 0.5, err.max()
    assert np.median(err) < 0.1


def test_lk_point_leaving_the_frame_is_not_visible():
    frames = translated_clip(10, (6.0, 0.0))
    queries = np.array([[0, 100, 40], [0, 20, 50]], np.float32)  # the first reaches x > 127 at t = 5
    tracks, vis = LKTracker().track(frames, queries)
    assert vis[:4, 0].all() and not vis[5:, 0].any()
    assert vis[:, 1].all()
    assert np.allclose(tracks[:, 1, 0], 20 + 6.0 * np.arange(10), atol=0.5)


def test_lk_tracks_backward_from_later_query_frames():
    shift = (1.25, 0.75)
    frames = translated_clip(7, shift)
    queries = np.array([[4, 60, 50], [0, 40, 30], [6, 70, 40]], np.float32)
    tracks, vis = LKTracker().track(frames, queries)
    t = np.arange(7)[:, None]
    expected = queries[None, :, 1:] + (t - queries[None, :, 0])[..., None] * np.array(shift, np.float32)
    assert vis.all()
    assert np.abs(tracks - expected).max() < 0.5
    assert np.array_equal(tracks[4, 0], queries[0, 1:]) and np.array_equal(tracks[6, 2], queries[2, 1:])


def test_lk_occlusion_loses_the_point_and_neighbours_carry_it():
    frames = translated_clip(8, (1.0, 0.0), seed=1, h=192, w=256).copy()
    frames[4:, 30:60, 30:60] = 255  # a flat white occluder appears at frame 4 over point 0
    queries = np.array([[0, 44, 44], [0, 190, 20], [0, 200, 150], [0, 150, 100]], np.float32)
    tracks, vis = LKTracker(LKConfig(neighbours=3)).track(frames, queries)
    assert vis[:4, 0].all() and not vis[4:, 0].any()
    assert vis[:, 1:].all()
    assert np.allclose(tracks[:, 0, 0], 44 + np.arange(8), atol=0.6)  # moved with its neighbours


def test_neighbour_motion_uses_nearest_points():
    ref = np.array([[0, 0], [1, 0], [100, 100]], np.float32)
    motion = np.array([[1, 1], [1, 1], [9, 9]], np.float32)
    out = neighbour_motion(np.array([[0.5, 0.5]], np.float32), ref, motion, k=2)
    assert out.tolist() == [[1.0, 1.0]]
    assert neighbour_motion(np.ones((2, 2), np.float32), ref[:0], motion[:0], 3).tolist() == [[0, 0], [0, 0]]


def test_interface_validation_and_config():
    frames = np.zeros((3, 10, 12, 3), np.uint8)
    with pytest.raises(ValueError, match="query positions"):
        check_inputs(frames, np.array([[0, 12.5, 3]], np.float32))
    with pytest.raises(ValueError, match="query frames"):
        check_inputs(frames, np.array([[3, 1, 1]], np.float32))
    with pytest.raises(ValueError, match="uint8"):
        check_inputs(frames.astype(np.float32), np.zeros((0, 3), np.float32))
    with pytest.raises(ConfigError, match="win_size"):
        from_dict(TrackingConfig, {"lk": {"win_size": 10}})
    tracker = make_tracker(from_dict(TrackingConfig, {"lk": {"win_size": 15, "fb_threshold": None}}))
    assert isinstance(tracker, LKTracker) and tracker.config.win_size == 15
    tracks, vis = tracker.track(translated_clip(3, (0.5, 0.5)), np.zeros((0, 3), np.float32))
    assert tracks.shape == (3, 0, 2) and vis.shape == (3, 0)


def test_lk_on_synthetic_sample_meets_delta_target():
    from bench.tracking import evaluate, synthetic_clips

    clip = synthetic_clips(count=1, width=160, height=128, num_frames=16)[0]
    metrics = evaluate(make_tracker(TrackingConfig()), clip)
    assert metrics["delta_avg"] >= 0.8, metrics
    assert metrics["occlusion_accuracy"] >= 0.8, metrics


def test_forward_backward_error_reports_survivors_and_all_points():
    from bench.tracking import fb_summary, forward_backward_error, synthetic_clips

    clip = synthetic_clips(count=1, width=96, height=80, num_frames=8)[0]
    fb = forward_backward_error(make_tracker(TrackingConfig()), clip.frames, grid=8)
    assert fb["n_points"] == 64 == len(fb["all"]) and 0 < fb["n_survivors"] == len(fb["survivors"]) <= 64
    assert np.isfinite(fb["all"]).all()
    # survivors are a subset of all points: their errors appear among all points' errors
    assert np.isin(fb["survivors"], fb["all"]).all()
    text = fb_summary([fb])
    assert f"(n={fb['n_survivors']}/64)" in text and "|" in text
    assert fb_summary([]) == "n/a"
