"""CoTracker backend through the real torch.hub loading and windowing code, offline.

The test writes a local hub directory whose hubconf exposes small models with CoTracker's call
signatures (offline: ``model(video, queries=...)``; online: ``model(video_chunk=..., is_first_step=...,
queries=...)`` with ``model.step``). They "track" by a constant velocity held in a parameter that
only the checkpoint sets, and record every call, so loading, input format and windowing are checked.
"""

from __future__ import annotations

import textwrap

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from pipeline.config import ConfigError, from_dict  # noqa: E402
from stages.tracking import CoTrackerConfig, TrackingConfig, make_tracker  # noqa: E402
from stages.tracking.cotracker import CoTracker, check_config, window_frames_for  # noqa: E402

HUBCONF = textwrap.dedent('''
    import torch

    dependencies = ["torch"]
    CALLS = []


    def _positions(queries, stamps, velocity):
        # stamps [T]: each frame's original index, written by the test into pixel (0, 0), so a
        # time-reversed clip moves backwards as a real tracker would see it
        q_stamp = stamps[queries[0, :, 0].long().clamp(max=len(stamps) - 1)]  # [N] (online: may be unseen yet)
        dt = stamps[:, None] - q_stamp[None, :]                           # [T, N]
        return queries[0, None, :, 1:] + dt[..., None] * velocity         # [T, N, 2]


    class TinyOffline(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.velocity = torch.nn.Parameter(torch.zeros(2))

        def forward(self, video, queries=None, grid_size=0, backward_tracking=False):
            assert video.ndim == 5 and video.shape[0] == 1 and video.shape[2] == 3, video.shape
            CALLS.append({"shape": tuple(video.shape), "dtype": str(video.dtype), "max": float(video.max()),
                          "queries": queries.clone()})
            pos = _positions(queries, video[0, :, 0, 0, 0], self.velocity.detach())
            vis = torch.ones(pos.shape[:2] + (1,)) * 0.9                  # float [T, N, 1], like some versions
            return pos[None], vis[None]


    class TinyPredictor(torch.nn.Module):  # CoTracker predictors wrap the network in .model
        def __init__(self):
            super().__init__()
            self.model = TinyOffline()

        def forward(self, video, queries=None, **kwargs):
            return self.model(video, queries=queries, **kwargs)


    class TinyOnline(torch.nn.Module):
        def __init__(self, window_len=8):
            super().__init__()
            self.model = TinyOffline()
            self.step = window_len // 2

        def forward(self, video_chunk, is_first_step=False, queries=None, grid_size=0):
            CALLS.append({"shape": tuple(video_chunk.shape), "first": is_first_step})
            if is_first_step:
                self.queries, self.stamps = queries, video_chunk[0, :0, 0, 0, 0]
                return None, None
            new = video_chunk[0, :, 0, 0, 0] if not len(self.stamps) else video_chunk[0, self.step:, 0, 0, 0]
            self.stamps = torch.cat([self.stamps, new])
            pos = _positions(self.queries, self.stamps, self.model.velocity.detach())
            return pos[None], torch.ones(pos.shape[:2], dtype=torch.bool)[None]


    def cotracker2(*, pretrained=True, **kwargs):
        if pretrained:
            raise RuntimeError("tests never download weights")
        return TinyPredictor()


    def cotracker3_online(*, pretrained=True, **kwargs):
        if pretrained:
            raise RuntimeError("tests never download weights")
        return TinyOnline()
''')

VELOCITY = (1.5, -0.5)


@pytest.fixture()
def hub(tmp_path):
    hub_dir = tmp_path / "hub"
    hub_dir.mkdir()
    (hub_dir / "hubconf.py").write_text(HUBCONF)
    ckpt = tmp_path / "tiny.pth"
    torch.save({"model": {"velocity": torch.tensor(VELOCITY)}}, ckpt)  # wrapped like CoTracker's train ckpts
    online_ckpt = tmp_path / "tiny_online.pth"
    torch.save({"velocity": torch.tensor(VELOCITY)}, online_ckpt)
    return str(hub_dir), str(ckpt), str(online_ckpt)


def _expected(queries: np.ndarray, t_len: int) -> np.ndarray:
    t = np.arange(t_len, dtype=np.float32)[:, None]
    return queries[None, :, 1:] + (t - queries[None, :, 0])[..., None] * np.array(VELOCITY, np.float32)


def _frames(t_len=12, h=40, w=64):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (t_len, h, w, 3), dtype=np.uint8)
    frames[:, 0, 0, 0] = np.arange(t_len)  # the toy models read time from here
    return frames


def test_offline_loads_checkpoint_and_windows(hub):
    hub_dir, ckpt, _ = hub
    cfg = from_dict(TrackingConfig, {"backend": "cotracker", "cotracker": {
        "repo_or_dir": hub_dir, "source": "local", "model": "cotracker2", "checkpoint": ckpt,
        "window_frames": 5, "device": "cpu"}})
    tracker = make_tracker(cfg)
    assert isinstance(tracker, CoTracker)
    frames = _frames()
    queries = np.array([[0, 10, 20], [0, 30, 25], [6, 20, 30]], np.float32)
    tracks, vis = tracker.track(frames, queries)
    expected = _expected(queries, 12)
    assert np.allclose(tracks, expected, atol=1e-4)
    inside = (expected[..., 0] >= 0) & (expected[..., 0] <= 63) & (expected[..., 1] >= 0) & (expected[..., 1] <= 39)
    assert np.array_equal(vis, inside)  # float visibility 0.9 thresholded, outside-frame points hidden
    calls = tracker.model.model.forward.__globals__["CALLS"]
    assert all(c["shape"][1] <= 5 and c["shape"][2:] == (3, 40, 64) for c in calls)
    assert all(c["dtype"] == "torch.float32" and 200 < c["max"] <= 255 for c in calls)
    # forward windows [0,5) [4,9) [8,12) plus the time-reversed pass for the query at frame 6
    assert len(calls) >= 4
    second = calls[1]["queries"][0].numpy()
    assert np.allclose(second[:2, 0], 0) and np.allclose(second[:2, 1:], expected[4, :2], atol=1e-4)


def test_memory_budget_sets_the_window(hub):
    base = CoTrackerConfig(memory_budget_mb=1.0, min_window_frames=3)
    assert window_frames_for(base, 100, 320, 512, 1024) == 3
    assert window_frames_for(CoTrackerConfig(memory_budget_mb=1e6), 100, 320, 512, 1024) == 100
    assert window_frames_for(CoTrackerConfig(window_frames=7), 100, 320, 512, 1024) == 7
    hub_dir, ckpt, _ = hub
    tracker = CoTracker(CoTrackerConfig(repo_or_dir=hub_dir, source="local", model="cotracker2", checkpoint=ckpt,
                                        memory_budget_mb=0.05, min_window_frames=3, device="cpu"))
    queries = np.array([[0, 10, 20]], np.float32)
    tracks, _ = tracker.track(_frames(9), queries)
    assert np.allclose(tracks, _expected(queries, 9), atol=1e-4)
    calls = tracker.model.model.forward.__globals__["CALLS"]
    assert [c["shape"][1] for c in calls] == [3, 3, 3, 3]  # [0,3) [2,5) [4,7) [6,9)


def test_online_streams_chunks(hub):
    hub_dir, _, online_ckpt = hub
    tracker = CoTracker(CoTrackerConfig(repo_or_dir=hub_dir, source="local", model="cotracker3_online",
                                        checkpoint=online_ckpt, device="cpu"))
    frames = _frames(14)
    queries = np.array([[0, 5, 5], [3, 30, 20]], np.float32)
    tracks, vis = tracker.track(frames, queries)
    assert np.allclose(tracks, _expected(queries, 14), atol=1e-4)
    calls = tracker.model.forward.__globals__["CALLS"]
    assert calls[0]["first"] and all(c["shape"][1] <= 8 for c in calls)


def test_preflight_and_pretrained_flag(hub, tmp_path):
    hub_dir, ckpt, _ = hub
    with pytest.raises(ConfigError, match="hubconf"):
        check_config(CoTrackerConfig(repo_or_dir=str(tmp_path / "nowhere"), source="local"))
    with pytest.raises(ConfigError, match="checkpoint"):
        check_config(CoTrackerConfig(repo_or_dir=hub_dir, source="local", checkpoint=str(tmp_path / "x.pth")))
    tracker = CoTracker(CoTrackerConfig(repo_or_dir=hub_dir, source="local", model="cotracker2", device="cpu"))
    with pytest.raises(RuntimeError, match="never download"):  # no checkpoint: the hub entry's own weights
        tracker.load()
