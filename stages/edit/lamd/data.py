"""Training clips for LaMD: the project's synthetic sample rendered on the fly, or decoded video windows.

A clip is float32 [3, L, H, W] in [-1, 1]. Synthetic clips come from
:func:`jobs.sample_data.generate_sample` (64 x 64, L = 16 by default; about 0.1 s each), seeded,
so a training run is reproducible and held-out seeds are never seen in training.
"""

from __future__ import annotations

from collections.abc import Iterator

import cv2
import numpy as np
import torch


def frames_to_clip(frames: np.ndarray) -> torch.Tensor:
    """uint8 [L, H, W, 3] -> float32 [3, L, H, W] in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2).float() / 127.5 - 1.0


def resize_frames(frames: np.ndarray, size: int) -> np.ndarray:
    """uint8 [T, H, W, 3] centre-cropped to a square and resized to ``size`` x ``size``."""
    h, w = frames.shape[1:3]
    side = min(h, w)
    frames = frames[:, (h - side) // 2:(h - side) // 2 + side, (w - side) // 2:(w - side) // 2 + side]
    if side == size:
        return np.ascontiguousarray(frames)
    interp = cv2.INTER_AREA if side > size else cv2.INTER_CUBIC
    return np.stack([cv2.resize(f, (size, size), interpolation=interp) for f in frames])


MIN_RENDER = 64  # the sample generator's smallest frame


def synthetic_clip(seed: int, size: int = 64, num_frames: int = 16) -> torch.Tensor:
    """The synthetic sample clip of ``seed``: float32 [3, num_frames, size, size] in [-1, 1]
    (rendered at ``max(size, 64)`` pixels and shrunk when smaller)."""
    from jobs.sample_data import generate_sample

    render = max(size, MIN_RENDER)
    return frames_to_clip(resize_frames(generate_sample(render, render, num_frames, seed=seed).frames, size))


def worker_seeds(first: int, rank: int, world: int) -> Iterator[int]:
    """Endless seeds of training worker ``rank`` of ``world``: first + rank, first + rank + world, ..."""
    seed = first + rank
    while True:
        yield seed
        seed += world


def synthetic_batches(first_seed: int, rank: int, world: int, batch_size: int, size: int,
                      num_frames: int, skip_batches: int = 0) -> Iterator[torch.Tensor]:
    """Endless batches [B, 3, L, size, size] of synthetic clips for one worker.

    ``skip_batches`` resumes the stream where a checkpoint left it (the seeds are skipped, not
    rendered), so a resumed run sees the clips the uninterrupted one would have.
    """
    seeds = worker_seeds(first_seed + skip_batches * batch_size * world, rank, world)
    while True:
        yield torch.stack([synthetic_clip(next(seeds), size, num_frames) for _ in range(batch_size)])


def video_windows(frames: np.ndarray, num_frames: int, stride: int, size: int) -> list[np.ndarray]:
    """Non-overlapping windows uint8 [num_frames, size, size, 3] of decoded frames [T, H, W, 3]
    taken every ``stride`` frames (a video shorter than one window gives none)."""
    span = (num_frames - 1) * stride + 1
    picked = [frames[start:start + span:stride] for start in range(0, len(frames) - span + 1, span)]
    return [resize_frames(w, size) for w in picked]


def decode_windows(uri: str, num_frames: int, stride: int, size: int, max_windows: int,
                   options=None) -> list[np.ndarray]:
    """Up to ``max_windows`` training windows uint8 [L, size, size, 3] of the video at ``uri``
    (any fsspec URL); raises what the decoder raises for an unreadable video."""
    from pipeline import media, storage

    with storage.local_copy(uri, options) as (local, _):
        frames, _, _ = media.decode(local)
    return video_windows(frames, num_frames, stride, size)[:max_windows]


def batch_prompts(batch, default: str) -> list[str]:
    """The prompts of a training batch: a Ray Data batch's ``prompt`` column, else ``default`` per clip."""
    if isinstance(batch, dict) and "prompt" in batch:
        return [str(p) if p is not None else "" for p in batch["prompt"]]
    return [default] * (len(batch["clip"]) if isinstance(batch, dict) else len(batch))


def batch_to_video(batch, device: torch.device) -> torch.Tensor:
    """A training batch -> float32 [B, 3, L, H, W] in [-1, 1] on ``device``: a tensor of synthetic
    clips as is, or a Ray Data batch ``{"clip": uint8 [B, L, H, W, 3]}`` of decoded windows."""
    if isinstance(batch, dict):
        clips = torch.from_numpy(np.ascontiguousarray(batch["clip"])).to(device)
        return clips.permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0
    return batch.to(device)
