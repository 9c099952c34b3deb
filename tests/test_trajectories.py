"""ReVideo trajectory math and the trajectory stage (no Ray)."""

from __future__ import annotations

import io
import json

import cv2
import numpy as np
import pytest

from pipeline import storage
from pipeline.config import ConfigError, from_dict
from pipeline.stage import RunContext, run_stage
from stages.motion_conditions import (
    c_mot_from_record,
    displacement_impulses,
    gaussian_kernel,
    gaussian_smooth,
    grid_points,
    length_threshold,
    motion_conditions,
    path_lengths,
    rasterise_motion,
    sample_tracks,
    selection_probabilities,
    video_seed,
)
from stages.trajectories import TrajectoryConfig, TrajectoryStage


def test_grid_stride_size_and_mask():
    pts = grid_points(48, 64, stride=16)
    assert pts.dtype == np.float32 and pts.shape == (12, 2)
    assert np.array_equal(np.unique(pts[:, 0]), [8, 24, 40, 56]) and np.array_equal(np.unique(pts[:, 1]), [8, 24, 40])
    assert tuple(pts[1]) == (24, 8)  # x varies fastest
    pts = grid_points(32, 64, size=4)
    assert pts.shape == (16, 2)
    assert np.allclose(np.unique(pts[:, 0]), [7.5, 23.5, 39.5, 55.5]) and np.allclose(np.unique(pts[:, 1]),
                                                                                       [3.5, 11.5, 19.5, 27.5])
    mask = np.zeros((48, 64), bool)
    mask[:, 32:] = True
    masked = grid_points(48, 64, stride=16, mask=mask)
    assert len(masked) == 6 and masked[:, 0].min() == 40
    assert len(grid_points(48, 64, stride=16, size=2)) == 12  # stride wins
    with pytest.raises(ValueError, match="mask shape"):
        grid_points(48, 64, stride=16, mask=np.ones((10, 10), bool))


def test_path_length_counts_visible_steps_only():
    # point 0: 3-4-5 steps (5 px each); point 1 same motion but hidden in frame 2
    steps = np.array([[0, 0], [3, 4], [6, 8], [9, 12]], np.float32)
    tracks = np.stack([steps, steps + 10], 1)  # [4, 2, 2]
    vis = np.ones((4, 2), bool)
    vis[2, 1] = False
    lengths = path_lengths(tracks, vis)
    assert lengths.dtype == np.float32
    assert np.allclose(lengths, [15.0, 5.0])  # steps 1->2 and 2->3 of point 1 do not count
    assert np.allclose(path_lengths(tracks), [15.0, 15.0])


def test_mean_threshold_keeps_strictly_longer_tracks():
    lengths = np.array([0.0, 1.0, 2.0, 3.0, 10.0], np.float32)
    assert length_threshold(lengths) == pytest.approx(3.2)
    kept, p = selection_probabilities(lengths)
    assert kept.tolist() == [4] and p.tolist() == [1.0]
    kept, p = selection_probabilities(np.array([1.0, 4.0, 5.0, 6.0]))  # mean 4: 4.0 is not longer
    assert kept.tolist() == [2, 3] and np.allclose(p, [5 / 11, 6 / 11])
    assert len(selection_probabilities(np.full(5, 2.0))[0]) == 0  # no motion variety: nothing kept


def test_sampling_frequencies_follow_normalised_lengths():
    lengths = np.array([0.5, 0.2, 8.0, 4.0, 2.0, 6.0, 1.0], np.float32)  # mean 3.1: keep 8, 4, 6
    kept, p = selection_probabilities(lengths)
    assert kept.tolist() == [2, 3, 5]
    # independent values: 8, 4, 6 normalised by their sum 18
    expected = np.array([4 / 9, 2 / 9, 1 / 3])
    assert np.allclose(p, expected)
    trials = 6000
    counts = np.zeros(len(lengths))
    for s in range(trials):
        idx = sample_tracks(lengths, np.random.default_rng(video_seed(f"vid{s}")), 1, 1)
        counts[idx] += 1
    freq = counts / trials
    assert freq[[0, 1, 4, 6]].sum() == 0  # short tracks are never sampled
    sigma = np.sqrt(expected * (1 - expected) / trials)
    assert np.all(np.abs(freq[kept] - expected) < 4 * sigma), (freq[kept], expected)
    # two draws without replacement: a track is left out only when the other two are drawn, in
    # either order; worked by hand: P(out) = 13/63, 22/45, 32/105, so inclusion is
    incl = np.array([50 / 63, 23 / 45, 73 / 105])
    assert incl.sum() == pytest.approx(2.0)  # two tracks are drawn
    counts[:] = 0
    for s in range(trials):
        idx = sample_tracks(lengths, np.random.default_rng(video_seed(f"two{s}")), 2, 2)
        assert len(set(idx.tolist())) == 2
        counts[idx] += 1
    freq = counts[kept] / trials
    assert np.all(np.abs(freq - incl) < 4 * np.sqrt(incl * (1 - incl) / trials)), (freq, incl)


def test_sampling_count_range_and_seed_from_video_id():
    lengths = np.arange(40, dtype=np.float32)  # 20 tracks above the mean
    sizes = {len(sample_tracks(lengths, np.random.default_rng(video_seed(f"v{s}")), 1, 10)) for s in range(300)}
    assert sizes == set(range(1, 11))
    a = sample_tracks(lengths, np.random.default_rng(video_seed("abc")), 1, 10)
    b = sample_tracks(lengths, np.random.default_rng(video_seed("abc")), 1, 10)
    assert np.array_equal(a, b)
    assert video_seed("abc") != video_seed("abd") and video_seed("abc", 1) != video_seed("abc", 0)
    assert len(sample_tracks(np.array([1.0, 5.0]), np.random.default_rng(0), 3, 3)) == 1  # capped at kept


def test_rasterise_values_at_exact_pixels():
    h, w = 20, 30
    tracks = np.array([
        [[10.4, 5.6], [3.0, 3.0], [0.0, 0.0]],
        [[12.6, 6.4], [3.0, 3.0], [-4.0, 25.0]],  # point 2 leaves the frame: clipped to (0, 19)
        [[12.6, 6.4], [5.2, 3.0], [-4.0, 25.0]],
    ], np.float32)
    maps = rasterise_motion(tracks, h, w)
    assert maps.shape == (3, 2, h, w) and maps.dtype == np.float32
    assert not maps[0].any()
    assert maps[1, 0, 6, 13] == pytest.approx(2.2, abs=1e-5) and maps[1, 1, 6, 13] == pytest.approx(0.8, abs=1e-5)
    assert maps[1, 0, 19, 0] == pytest.approx(-4.0) and maps[1, 1, 19, 0] == pytest.approx(25.0)
    assert np.count_nonzero(maps[1, 0]) == 2  # point 1 does not move in frame 1: writes zero
    assert maps[2, 0, 3, 5] == pytest.approx(2.2, abs=1e-5) and maps[2, 1, 3, 5] == 0
    assert np.count_nonzero(maps[2]) == 1
    # visibility: a step is drawn only when visible at t-1 and t
    vis = np.ones((3, 3), bool)
    vis[1, 0] = False
    masked = rasterise_motion(tracks, h, w, vis)
    assert masked[1, :, 6, 13].tolist() == [0.0, 0.0] and masked[1, 0, 19, 0] == pytest.approx(-4.0)
    # two points on one pixel: the later one wins
    dup = np.array([[[1.0, 1.0], [2.0, 2.0]], [[4.0, 4.0], [4.2, 3.9]]], np.float32)
    ys, xs, d = displacement_impulses(dup, h, w)[1]
    assert (ys.tolist(), xs.tolist()) == ([4], [4]) and np.allclose(d, [[2.2, 1.9]])


def test_channel_order_swaps_dx_dy():
    tracks = np.array([[[5.0, 5.0]], [[8.0, 4.0]]], np.float32)  # dx = 3, dy = -1
    dxdy = rasterise_motion(tracks, 10, 10, channel_order="dx,dy")
    dydx = rasterise_motion(tracks, 10, 10, channel_order="dy,dx")
    assert dxdy[1, :, 4, 8].tolist() == [3.0, -1.0]
    assert dydx[1, :, 4, 8].tolist() == [-1.0, 3.0]
    with pytest.raises(ValueError, match="channel_order"):
        rasterise_motion(tracks, 10, 10, channel_order="xy")


def test_gaussian_peak_equals_displacement_and_normalised_option():
    k = gaussian_kernel(51, 10.0)
    assert k.shape == (51, 51) and k[25, 25] == pytest.approx(1.0) and k.max() == k[25, 25]
    assert k[25, 35] == pytest.approx(np.exp(-0.5))
    tracks = np.array([[[60.0, 40.0]], [[63.0, 36.0]]], np.float32)  # d = (3, -4), lands at (63, 36)
    c = motion_conditions(tracks, 100, 120, kernel=k)
    assert c[1, 0].max() == pytest.approx(3.0) and c[1, 1].min() == pytest.approx(-4.0)
    assert np.unravel_index(np.argmax(c[1, 0]), c[1, 0].shape) == (36, 63)
    kn = gaussian_kernel(51, 10.0, normalise=True)
    cn = motion_conditions(tracks, 100, 120, kernel=kn)
    assert cn[1, 0].sum() == pytest.approx(3.0, rel=1e-4) and cn[1, 0].max() < 0.01


def test_kernel_splatting_equals_filtering_including_borders():
    rng = np.random.default_rng(3)
    tracks = rng.uniform([-5, -5], [70, 50], size=(5, 12, 2)).astype(np.float32)
    vis = rng.random((5, 12)) > 0.2
    k = gaussian_kernel(21, 4.0)
    for order in ("dx,dy", "dy,dx"):
        ref = gaussian_smooth(rasterise_motion(tracks, 48, 64, vis, order), k)
        fast = motion_conditions(tracks, 48, 64, vis, k, order)
        assert np.allclose(ref, fast, atol=1e-4)
    assert motion_conditions(tracks, 48, 64, vis, k, dtype=np.float16).dtype == np.float16


def _moving_texture(t_len=6, h=64, w=96, shift=(1.5, 0.5), seed=0):
    rng = np.random.default_rng(seed)
    base = cv2.GaussianBlur((rng.random((h + 40, w + 40, 3)) * 255).astype(np.float32), (0, 0), 2.0)
    frames = []
    for t in range(t_len):
        m = np.float32([[1, 0, shift[0] * t - 20], [0, 1, shift[1] * t - 20]])
        frames.append(cv2.warpAffine(base, m, (w, h), flags=cv2.INTER_LINEAR))
    return np.clip(np.stack(frames), 0, 255).astype(np.uint8)


def _ctx(tmp_path):
    return RunContext(output_url=str(tmp_path / "out"), cache_url=str(tmp_path / "cache"))


def test_stage_writes_consistent_row(tmp_path):
    frames = _moving_texture()
    cfg = from_dict(TrajectoryConfig, {"num_frames": 5, "grid_stride": 16, "kernel_size": 11, "sigma": 3.0,
                                       "c_mot": "array", "store_grid_tracks": True})
    stage = TrajectoryStage(cfg, _ctx(tmp_path))
    stage.setup()
    row = run_stage(stage, {"job_id": "j1", "video_id": "clip", "frames": frames, "fps": 8.0, "status": "pending"})
    assert row["status"] == "pending", row.get("error")
    assert row["tracks"].shape == (5, 24, 2) and row["visibility"].shape == (5, 24) and row["n_init"] == 24
    assert row["num_frames"] == 5 and row["c_mot"].shape == (5, 2, 64, 96) and row["c_mot"].dtype == np.float16
    assert not row["c_mot"][0].any()
    kept, _ = selection_probabilities(row["path_lengths"])
    assert set(row["sampled_index"].tolist()) <= set(kept.tolist()) and 1 <= row["n_sampled"] <= 10
    expect = motion_conditions(row["tracks"][:, row["sampled_index"]], 64, 96,
                               row["visibility"][:, row["sampled_index"]], gaussian_kernel(11, 3.0))
    assert np.allclose(row["c_mot"].astype(np.float32), expect, atol=1e-2)
    # uniform translation of (1.5, 0.5) px/frame: visible tracks move by it
    vis = row["visibility"]
    err = np.abs(np.diff(row["tracks"], axis=0)[vis[1:] & vis[:-1]] - [1.5, 0.5])
    assert np.median(err) < 0.05 and np.percentile(err, 90) < 0.2 and vis.mean() > 0.8
    assert {"tracks_overlay", "c_mot_preview"} <= set(row["outputs"])
    assert storage.exists(row["outputs"]["tracks_overlay"]) and row["outputs"]["tracks_overlay"].endswith(".webp")
    # the sparse default keeps what rebuilds c_mot bit for bit, and writes no preview for a row not picked
    again = run_stage(stage, {"job_id": "j2", "video_id": "clip", "frames": frames, "status": "pending",
                              "make_previews": False})
    assert np.array_equal(again["sampled_index"], row["sampled_index"])  # seeded from the video id
    rebuilt = c_mot_from_record(again["sampled_tracks"], again["sampled_visibility"], 64, 96,
                                json.loads(again["c_mot_params"]))
    assert rebuilt.dtype == np.float16 and np.array_equal(rebuilt, row["c_mot"])
    assert "outputs" not in again or "tracks_overlay" not in again["outputs"]
    sparse = TrajectoryStage(from_dict(TrajectoryConfig, {"num_frames": 5, "grid_stride": 16}), _ctx(tmp_path))
    light = run_stage(sparse, {"job_id": "j3", "video_id": "clip", "frames": frames, "status": "pending",
                               "make_previews": False})
    assert "c_mot" not in light and "tracks" not in light
    assert light["sampled_tracks"].shape == (5, light["n_sampled"], 2)


def test_stage_short_clip_mask_and_uri(tmp_path):
    frames = _moving_texture(t_len=4)
    cfg = TrajectoryConfig(num_frames=6, grid_stride=16, previews=False)
    stage = TrajectoryStage(cfg, _ctx(tmp_path))
    row = run_stage(stage, {"job_id": "j", "video_id": "v", "frames": frames, "status": "pending"})
    assert row["status"] == "error" and row["error_stage"] == "trajectories"
    assert row["error"].startswith("ClipTooShortError: clip has 4 frames") and "needs 6" in row["error"]
    mask = np.zeros((64, 96), bool)
    mask[:, :48] = True
    cfg = TrajectoryConfig(num_frames=4, grid_stride=16, previews=False, c_mot="uri", keep_frames=False)
    stage = TrajectoryStage(cfg, _ctx(tmp_path))
    row = run_stage(stage, {"job_id": "j", "video_id": "../v", "frames": frames, "mask": mask, "status": "pending"})
    assert row["status"] == "pending", row.get("error")
    assert row["n_init"] == 12 and row["sampled_tracks"][0, :, 0].max() < 48 and "frames" not in row
    assert "c_mot" not in row
    assert row["c_mot_uri"].startswith(str(tmp_path / "out" / "c_mot")) and ".." not in row["c_mot_uri"]
    arr = np.load(io.BytesIO(storage.read_bytes(row["c_mot_uri"])), allow_pickle=False)
    assert arr.shape == (4, 2, 64, 96) and arr.dtype == np.float16


def test_config_validation():
    with pytest.raises(ConfigError, match="kernel_size"):
        from_dict(TrajectoryConfig, {"kernel_size": 50})
    with pytest.raises(ConfigError, match="max_samples"):
        from_dict(TrajectoryConfig, {"min_samples": 5, "max_samples": 2})
    with pytest.raises(ConfigError, match="channel_order"):
        from_dict(TrajectoryConfig, {"channel_order": "xy"})
    with pytest.raises(ConfigError, match="backend"):
        from_dict(TrajectoryConfig, {"tracking": {"backend": "raft"}})


def test_stage_is_usable_in_the_edit_pipeline():
    from jobs.edit_videos import EditJobConfig, stage_configs

    config = from_dict(EditJobConfig, {"stages": {"trajectories": {"grid_size": 8, "previews": False}}})
    specs = stage_configs(config, set(), "cfg")
    assert [s.stage_cls for s in specs] == [TrajectoryStage] and specs[0].config.grid_size == 8
