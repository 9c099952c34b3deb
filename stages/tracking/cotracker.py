"""CoTracker 2 / 3 (offline and online) through ``torch.hub.load``.

The model is called the way CoTracker expects: ``video`` float32 [B, T, 3, H, W] with values in
[0, 255], ``queries`` float32 [B, N, 3] as (t, x, y) pixels; it returns ``pred_tracks``
[B, T, N, 2] (x, y) px and ``pred_visibility`` [B, T, N] (bool, or float / [B, T, N, 1] in some
versions, thresholded here).

Offline models see the whole clip at once, so their memory grows with its length: the clip is
cut into windows of at most ``window_frames`` frames (by default as many as
``memory_budget_mb`` allows, see :func:`window_frames_for`), overlapping by one frame; a point
tracked through one window is queried again at its position in the next window's first frame.
Online models stream the clip in chunks of ``2 * model.step`` frames, as CoTracker's README does.
Queries are tracked forward from their own frame; points queried after frame 0 are also tracked
backward by running the same on the time-reversed clip.
"""

from __future__ import annotations

import logging
import os

import numpy as np

from pipeline import devices, storage
from pipeline.config import ConfigError
from stages.tracking import CoTrackerConfig, check_inputs, inside

log = logging.getLogger(__name__)

MODEL_RESOLUTION = (384, 512)  # CoTracker resizes every frame to this (H, W) internally
FEATURE_STRIDE = 4
LATENT_DIM = 128


def check_config(config: CoTrackerConfig) -> None:
    """Preflight: raise ConfigError for a missing local hub directory or checkpoint, or no torch."""
    try:
        import torch  # noqa: F401
    except ImportError as exc:
        raise ConfigError(f"the cotracker backend needs torch: {exc}") from exc
    if config.source == "local" and not os.path.isfile(os.path.join(config.repo_or_dir, "hubconf.py")):
        raise ConfigError(f"tracking.cotracker.repo_or_dir {config.repo_or_dir!r} has no hubconf.py")
    if config.checkpoint and not storage.exists(config.checkpoint):
        raise ConfigError(f"tracking.cotracker.checkpoint {config.checkpoint!r} does not exist")


def check_cached(config: CoTrackerConfig) -> None:
    """Preflight of an offline run (``HF_HUB_OFFLINE=1``): a github hub repo must already be in torch.hub's dir."""
    if config.source == "github" and _offline() and not cached_hub_repo(config.repo_or_dir):
        import torch

        raise ConfigError(f"tracking.cotracker: torch.hub repo {config.repo_or_dir!r} (model {config.model!r}) is not "
                          f"in {torch.hub.get_dir()!r} and HF_HUB_OFFLINE=1 forbids downloading it: fetch it "
                          "beforehand with `vidflow models download --config YOUR.yaml [--to DIR]` (then "
                          "TORCH_HOME=DIR/torch, or run.model_cache_url: DIR)")


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def cached_hub_repo(repo: str) -> str | None:
    """The folder torch.hub keeps ``owner/name[:ref]`` in (``{hub_dir}/owner_name_ref``), or None when absent."""
    import torch

    name, _, ref = repo.partition(":")
    owner, _, project = name.partition("/")
    for branch in ([ref] if ref else ["main", "master"]):
        path = os.path.join(torch.hub.get_dir(), f"{owner}_{project}_{branch.replace('/', '_')}")
        if os.path.isdir(path):
            return path
    return None


def estimate_bytes(frames: int, height: int, width: int, points: int) -> float:
    """Rough peak memory of one offline CoTracker call, bytes.

    Input video (float32) + the video resized to the model resolution + a 4-level feature pyramid
    (128 channels at stride 4) + per-point, per-frame tokens and correlation features (~2 KiB).
    """
    mh, mw = MODEL_RESOLUTION
    fmap = LATENT_DIM * (mh // FEATURE_STRIDE) * (mw // FEATURE_STRIDE) * (1 + 1 / 4 + 1 / 16 + 1 / 64)
    per_frame = 4 * (3 * height * width + 3 * mh * mw + fmap) + 2048 * points
    return frames * per_frame


def window_frames_for(config: CoTrackerConfig, length: int, height: int, width: int, points: int) -> int:
    """Frames per offline call: ``window_frames``, else the most that fit ``memory_budget_mb``
    (at least ``min_window_frames``, at most the clip length)."""
    if config.window_frames is not None:
        return max(2, min(length, config.window_frames))
    budget = config.memory_budget_mb * 1024 * 1024
    fit = int(budget // max(estimate_bytes(1, height, width, points), 1.0))
    return max(2, min(length, max(config.min_window_frames, fit)))


class CoTracker:
    """``track(frames, queries) -> (tracks, visibility)`` with a CoTracker hub model."""

    def __init__(self, config: CoTrackerConfig = CoTrackerConfig(), num_gpus: float = 1.0):
        self.config = config
        self.num_gpus = num_gpus  # GPUs granted to the caller (the stage passes its resources.num_gpus)
        self.model = None
        self.device = None

    def load(self) -> None:
        """Build the hub model (``pretrained`` unless a checkpoint is given), load the checkpoint."""
        if self.model is not None:
            return
        import torch

        cfg = self.config
        check_config(cfg)
        self.device = devices.resolve_device(cfg.device, self.num_gpus, "trajectories")  # before any download
        kwargs = {"source": cfg.source, "pretrained": cfg.checkpoint is None}
        if cfg.source == "github":
            kwargs["trust_repo"] = cfg.trust_repo
        model = torch.hub.load(cfg.repo_or_dir, cfg.model, **kwargs)
        if cfg.checkpoint:
            with storage.local_copy(cfg.checkpoint) as (path, _):
                state = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
                state = state["model"]
            target = getattr(model, "model", model)  # CoTracker predictors wrap the network in .model
            target.load_state_dict(state)
        self.model = model.to(self.device).eval()
        log.info("loaded CoTracker %s from %s (%s) on %s", cfg.model, cfg.repo_or_dir, cfg.source, self.device)

    def track(self, frames: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """frames uint8 [T, H, W, 3], queries float32 [N, 3] (t, x, y) -> tracks float32 [T, N, 2],
        visibility bool [T, N]."""
        frames, queries = check_inputs(frames, queries)
        self.load()
        t_len, h, w = frames.shape[:3]
        n = len(queries)
        tracks = np.zeros((t_len, n, 2), np.float32)
        visibility = np.zeros((t_len, n), bool)
        if not n:
            return tracks, visibility
        fwd_tracks, fwd_vis = self._forward(frames, queries)
        qt = queries[:, 0].astype(np.int64)
        after = np.arange(t_len)[:, None] >= qt[None, :]
        tracks[after] = fwd_tracks[after]
        visibility[after] = fwd_vis[after]
        if qt.max() > 0:
            flipped = queries.copy()
            flipped[:, 0] = t_len - 1 - qt
            back_tracks, back_vis = self._forward(frames[::-1], flipped)
            before = ~after
            tracks[before] = back_tracks[::-1][before]
            visibility[before] = back_vis[::-1][before]
        visibility &= inside(tracks, w, h)
        return tracks, visibility

    # -- forward-only tracking (frames at and after each query's frame are valid)

    def _forward(self, frames: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.config.is_online:
            return self._online(frames, queries)
        t_len, h, w = frames.shape[:3]
        n = len(queries)
        size = window_frames_for(self.config, t_len, h, w, n)
        tracks = np.zeros((t_len, n, 2), np.float32)
        visibility = np.zeros((t_len, n), bool)
        qt = queries[:, 0].astype(np.int64)
        start = 0
        while True:
            end = min(t_len, start + size)
            started = qt < start  # carried over from the previous window
            here = (qt >= start) & (qt < end)
            active = np.flatnonzero(started | here)
            if len(active):
                q = np.zeros((len(active), 3), np.float32)
                carried = started[active]
                q[carried, 1:] = tracks[start, active[carried]]
                q[~carried, 0] = qt[active[~carried]] - start
                q[~carried, 1:] = queries[active[~carried], 1:]
                q[:, 1] = np.clip(q[:, 1], 0, w - 1)  # carried points may have left the frame
                q[:, 2] = np.clip(q[:, 2], 0, h - 1)
                wt, wv = self._call_offline(frames[start:end], q)
                local_qt = q[:, 0].astype(np.int64)
                valid = np.arange(end - start)[:, None] >= local_qt[None, :]
                sub_t = tracks[start:end, active]
                sub_v = visibility[start:end, active]
                sub_t[valid] = wt[valid]
                sub_v[valid] = wv[valid]
                tracks[start:end, active] = sub_t
                visibility[start:end, active] = sub_v
            if end >= t_len:
                break
            start = end - 1
        return tracks, visibility

    def _video_tensor(self, frames: np.ndarray):
        import torch

        video = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)[None].float()
        return video.to(self.device)  # [1, T, 3, H, W] in [0, 255]

    def _outputs(self, pred_tracks, pred_vis, t_len: int) -> tuple[np.ndarray, np.ndarray]:
        tr = pred_tracks[0].detach().float().cpu().numpy()
        vis = pred_vis[0].detach().cpu()
        if vis.ndim == 3:
            vis = vis[..., 0]
        vis = vis.numpy()
        if vis.dtype != bool:
            vis = vis > self.config.visibility_threshold
        if tr.shape[0] < t_len:  # pad a short stream with the last estimate, not visible
            pad = t_len - tr.shape[0]
            tr = np.concatenate([tr, np.repeat(tr[-1:], pad, 0)], 0)
            vis = np.concatenate([vis, np.zeros((pad, vis.shape[1]), bool)], 0)
        return tr[:t_len].astype(np.float32), vis[:t_len].astype(bool)

    def _call_offline(self, frames: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import torch

        with torch.inference_mode():
            q = torch.from_numpy(queries)[None].to(self.device)
            pred_tracks, pred_vis = self.model(self._video_tensor(frames), queries=q)
        return self._outputs(pred_tracks, pred_vis, len(frames))

    def _online(self, frames: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import torch

        model = self.model
        step = int(getattr(model, "step", 4))
        t_len = len(frames)
        with torch.inference_mode():
            q = torch.from_numpy(queries)[None].to(self.device)
            model(video_chunk=self._video_tensor(frames[: 2 * step]), is_first_step=True, queries=q)
            pred_tracks = pred_vis = None
            for ind in range(0, max(1, t_len - step), step):
                chunk = self._video_tensor(frames[ind: ind + 2 * step])
                pred_tracks, pred_vis = model(video_chunk=chunk)
        return self._outputs(pred_tracks, pred_vis, t_len)
