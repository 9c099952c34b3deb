"""bench/atlas_quality.py's video run: sizes, the time limit that stops a fit, and a clip with no object."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

from bench.atlas_quality import config_for, fit_clip, parse_size, video_run
from jobs.sample_data import generate_sample
from pipeline import media
from stages.atlas.flow import dense_flow


def test_size_is_a_square_or_width_by_height():
    assert parse_size("384") == (384, 384) and parse_size("768x432") == (768, 432)
    for bad in ("wide", "768x", "8", "1x2x3"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_size(bad)


def test_a_time_limited_fit_stops_early_and_is_still_evaluated():
    clip = generate_sample(64, 64, 4, 12.0, 0)
    flow = dense_flow(clip.frames)
    config = config_for(5000, 256)
    fit = fit_clip(clip.frames, clip.masks, flow, config, torch.device("cpu"), time_limit_s=0.5)
    assert 0 < fit["iterations"] < 5000 and fit["seconds"] >= 0.5
    assert len(fit["psnr"]) == 4 and np.isfinite(fit["psnr"]).all()
    assert fit["ev"]["alpha"].shape == (4, 64, 64)


def test_a_clip_without_a_moving_object_is_reported_not_fitted(tmp_path):
    still = np.repeat(generate_sample(64, 64, 2, 12.0, 0).frames[:1], 5, axis=0)
    path = str(tmp_path / "still.mp4")
    media.encode(still, path, 12.0)
    row = video_run(path, None, (64, 64), 5, 1, 10, 256, False)
    assert row["segmentation"].startswith("NoObjectError") and "mask_uri" in row["segmentation"]
    assert "psnr_mean_db" not in row and row["mask_fraction"] is None
