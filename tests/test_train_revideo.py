"""ReVideo training pieces without Ray: sample building (region, trajectories, stage-2 composite, motion
map), conditions, the EDM loss and its weighting, overfitting one batch, stage 3's gradients, skipped rows,
the config."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from jobs.train_revideo import load_job_config
from pipeline import media
from pipeline.config import ConfigError
from pipeline.stage import RunContext
from pipeline.training import WorkerContext, resolve_precision
from stages.decode import DecodeConfig
from stages.edit.revideo.train_data import SampleJob, samples_from_rows
from stages.edit.revideo.train_loss import sample_sigmas, v_scalings, v_weighting
from stages.edit.revideo.train_samples import (
    ClipTracks,
    SampleConfig,
    build_sample,
    choose_tracks,
    content_condition,
    random_box,
    region_maps,
)
from stages.edit.revideo.train_task import ReVideoTrainConfig, build_revideo, revideo_loss
from stages.edit.revideo.training import stage3_parameters
from stages.motion_conditions import gaussian_kernel, motion_conditions
from tests.revideo_fixtures import one_thread, save_tiny_revideo, save_tiny_svd  # noqa: F401 - autouse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_SAMPLES = SampleConfig(min_region=8, kernel_size=7, kernel_sigma=2.0)


def _clip(seed: int, frames: int = 4, size: int = 32, points: int = 30) -> ClipTracks:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, (frames, size, size, 3), dtype=np.uint8)
    start = rng.uniform(0, size - 1, (1, points, 2))
    steps = rng.normal(0, 1.5, (frames - 1, points, 2)) * rng.uniform(0, 2, (1, points, 1))
    tracks = np.concatenate([start, start + np.cumsum(steps, 0)]).astype(np.float32)
    return ClipTracks(pixels, tracks, np.ones((frames, points), bool))


def test_random_box_respects_size_frame_and_anchor():
    rng = np.random.default_rng(0)
    for _ in range(200):
        anchor = tuple(rng.uniform(0, [512, 320]))
        x0, y0, x1, y1 = random_box(rng, 320, 512, 64, 1.0, anchor)
        assert 0 <= x0 < x1 <= 512 and 0 <= y0 < y1 <= 320 and x1 - x0 >= 64 and y1 - y0 >= 64
        assert x0 <= int(anchor[0]) < x1 and y0 <= int(anchor[1]) < y1
    with pytest.raises(ValueError, match="exceeds"):
        random_box(rng, 32, 32, 64)


def test_chosen_tracks_start_inside_the_region_and_number_1_to_10():
    clip = _clip(0, points=60)
    rng = np.random.default_rng(1)
    for _ in range(50):
        box = random_box(rng, 32, 32, 8)
        index = choose_tracks(clip.tracks, clip.visibility, box, rng, 1, 10)
        assert len(index) <= 10 and len(set(index.tolist())) == len(index)
        x, y = clip.tracks[0, index, 0], clip.tracks[0, index, 1]
        assert np.all((x >= box[0]) & (x < box[2]) & (y >= box[1]) & (y < box[3]))
    always = choose_tracks(clip.tracks, clip.visibility, np.array([0, 0, 32, 32]), rng, 3, 3)
    assert len(always) == 3


def test_samples_per_stage():
    a, b = _clip(0), _clip(1)
    s1 = build_sample(1, a, np.random.default_rng(5), TINY_SAMPLES)
    again = build_sample(1, a, np.random.default_rng(5), TINY_SAMPLES)
    assert all(np.array_equal(s1[k], again[k]) for k in s1)  # seeded
    assert s1["c_mot"].dtype == np.float16 and s1["c_mot"].shape == (4, 2, 32, 32)
    assert not s1["c_mot"][0].any() and s1["c_mot"][1:].any()  # frame 0 zero; the region's tracks move
    assert np.array_equal(s1["video"], a.frames)

    s2 = build_sample(2, a, np.random.default_rng(5), TINY_SAMPLES, other=b)
    x0, y0, x1, y1 = s2["box"]
    inside = np.zeros((32, 32), bool)
    inside[y0:y1, x0:x1] = True
    assert np.array_equal(s2["video"][:, inside], a.frames[:, inside])  # region and motion from V1 ...
    assert np.array_equal(s2["video"][:, ~inside], b.frames[:, ~inside])  # ... the rest from V2
    assert np.array_equal(s2["c_mot"], s1["c_mot"]) and np.array_equal(s2["box"], s1["box"])
    with pytest.raises(ValueError, match="second clip"):
        build_sample(2, a, np.random.default_rng(5), TINY_SAMPLES)

    # the motion map is the trajectory rasteriser on the chosen tracks (dy, dx; unnormalised Gaussian)
    rng = np.random.default_rng(5)
    from stages.edit.revideo.train_samples import pick_region

    box, index = pick_region(a, rng, TINY_SAMPLES)
    want = motion_conditions(a.tracks[:, index], 32, 32, a.visibility[:, index], gaussian_kernel(7, 2.0), "dy,dx",
                             np.float16)
    assert np.array_equal(s1["c_mot"], want) and np.array_equal(box, s1["box"])


def test_content_condition_per_stage():
    video = np.full((1, 2, 8, 8, 3), 255, np.uint8)
    region = region_maps(np.array([[2, 2, 6, 6]]), 8, 8)
    assert region.sum() == 16
    assert np.all(content_condition(video, region, 1) == -1.0)  # stage 1: no content
    c3 = content_condition(video, region, 3)
    assert c3.shape == (1, 2, 3, 8, 8) and np.all(c3[..., 2:6, 2:6] == -1.0) and c3[..., 0, 0].min() == 1.0


def test_edm_weighting_and_noise_levels():
    sigma = torch.tensor([0.5, 1.0, 4.0])
    assert torch.allclose(v_weighting(sigma), torch.tensor([5.0, 2.0, 17 / 16]))
    c_skip, c_out, c_in, c_noise = v_scalings(sigma)
    assert torch.allclose(c_skip + c_out ** 2, torch.ones(3))  # 1/(s^2+1) + s^2/(s^2+1)
    assert torch.allclose(c_noise, 0.25 * sigma.log())
    s = sample_sigmas(20000, 0.7, 1.6, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert abs(float(s.log().mean()) - 0.7) < 0.05 and abs(float(s.log().std()) - 1.6) < 0.05


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("train-models")
    return save_tiny_svd(root / "svd"), save_tiny_revideo(root / "rv", randomise=False)


def _setup(tiny_models, stage: int, lr: float = 1e-3):
    svd, ckpt = tiny_models
    config = ReVideoTrainConfig(model=svd, checkpoint=ckpt, stem_channels=(8, 8, 16), learning_rate=lr,
                                samples=TINY_SAMPLES, gradient_checkpointing=stage == 3, condition_dropout=0.0)
    cpu = torch.device("cpu")
    ctx = WorkerContext(0, 1, cpu, resolve_precision("auto", cpu), 0, options={"config": config, "stage": stage})
    torch.manual_seed(0)
    return build_revideo(ctx), ctx


def _batch(stage: int) -> dict:
    s = build_sample(stage, _clip(0), np.random.default_rng(0), TINY_SAMPLES, other=_clip(1))
    return {k: v[None] for k, v in s.items()}


def test_loss_on_one_repeated_batch_falls(tiny_models):
    setup, ctx = _setup(tiny_models, 1, lr=3e-3)
    batch, losses = _batch(1), []
    for _ in range(12):
        ctx.step = 0  # the same noise level and noise every time: a pure overfit
        setup.optimizer.zero_grad()
        loss, logs = revideo_loss(setup.models, batch, ctx, 0)
        loss.backward()
        setup.optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.6 * losses[0] and losses[-1] == min(losses), losses
    assert logs["sigma_mean"] > 0


def test_stage3_gives_gradients_only_to_the_selected_parameters(tiny_models):
    setup, ctx = _setup(tiny_models, 3)
    models = setup.models
    assert set(setup.params) == set(stage3_parameters(models.unet, models.control))
    loss, _ = revideo_loss(models, _batch(3), ctx, 0)
    loss.backward()
    with_grad = {f"unet.{n}" for n, p in models.unet.named_parameters() if p.grad is not None}
    with_grad |= {f"controlnet.{n}" for n, p in models.control.named_parameters() if p.grad is not None}
    assert with_grad == set(setup.params)
    assert any(float(p.grad.abs().sum()) > 0 for k, p in setup.params.items() if k.startswith("unet."))
    assert all(p.dtype == torch.float32 for p in setup.params.values())


def _shard_row(uri: str, job_id: str, frames: int = 4, size: int = 32) -> dict:
    tracks = _clip(0, frames, size).tracks
    return {"job_id": job_id, "video_id": job_id, "video_uri": uri, "status": "ok", "num_frames": frames,
            "width": size, "height": size, "n_init": tracks.shape[1], "n_sampled": 0,
            "tracks": tracks.ravel(), "visibility": np.ones(tracks.shape[:2], bool).ravel(),
            "sampled_tracks": None, "sampled_visibility": None}


def test_undecodable_and_mismatched_rows_are_skipped_and_recorded(tmp_path):
    video = media.encode(np.random.default_rng(0).integers(0, 255, (6, 32, 32, 3), dtype=np.uint8),
                         str(tmp_path / "v.mp4"), 8.0)
    (tmp_path / "corrupt.mp4").write_bytes(b"not a video")
    job = SampleJob(stage=1, seed=0, decode=DecodeConfig(max_frames=4, width=32, height=32, resize="crop"),
                    samples=TINY_SAMPLES, context=RunContext(output_url=str(tmp_path), cache_url=str(tmp_path)),
                    skipped_url=str(tmp_path / "skipped"))
    rows = [_shard_row(video, "good"), _shard_row(str(tmp_path / "missing.mp4"), "missing"),
            _shard_row(str(tmp_path / "corrupt.mp4"), "corrupt"), _shard_row(video, "other-window", size=64),
            {**_shard_row(video, "failed"), "status": "error"}]
    out = samples_from_rows(rows, job)
    assert list(out["job_id"]) == ["good"] and out["video"].shape == (1, 4, 32, 32, 3)
    records = {f: json.load(open(tmp_path / "skipped" / f)) for f in os.listdir(tmp_path / "skipped")}
    errors = {r["job_id"]: r["error"] for r in records.values()}
    assert set(errors) == {"missing", "corrupt", "other-window"}
    assert errors["missing"].startswith("FileNotFoundError")
    assert errors["other-window"].startswith("WindowMismatchError")
    pairs = samples_from_rows(rows[:1] + rows[:1], SampleJob(**{**job.__dict__, "stage": 2}))
    assert list(pairs["job_id"]) == ["good", "good"] and samples_from_rows(rows[:1], SampleJob(
        **{**job.__dict__, "stage": 2}))["video"].shape[0] == 0  # an unpaired row is left out


def test_config_file_and_bad_values(tmp_path):
    config = load_job_config(os.path.join(ROOT, "jobs", "configs", "train_revideo.yaml"), [])
    assert config.revideo.stage_steps == (40_000, 30_000, 20_000) and config.revideo.learning_rate == 3e-5
    assert (config.window.num_frames, config.window.width, config.window.height) == (14, 512, 320)
    assert config.revideo.samples.min_region == 64 and config.revideo.samples.max_trajectories == 10
    with pytest.raises(ConfigError, match="stage_steps"):
        load_job_config(None, ["train.steps=5"])
    for bad in ("revideo.learning_rate=0", "revideo.samples.min_trajectories=0", "revideo.nope=1",
                "revideo.stage_steps=[1,2]", "train.precision=fp8"):
        with pytest.raises(ConfigError):
            load_job_config(None, [bad])


def test_bench_smoke_measures_the_loader_ratio_and_every_stage():
    from bench.train_revideo import data_vs_trainer, run_gpu

    ratio = data_vs_trainer(smoke=True)
    assert ratio["data"]["samples_per_s"] > 0 and ratio["trainer"]["samples_per_s"] > 0
    assert ratio["ratio"] == pytest.approx(ratio["data"]["samples_per_s"] / ratio["trainer"]["samples_per_s"])
    gpu = run_gpu(smoke=True)
    assert set(gpu["stages"]) == {"stage1", "stage2", "stage3"} and gpu["headline"]
    assert gpu["stages"]["stage3"]["trainable_mparams"] < gpu["stages"]["stage1"]["trainable_mparams"]
    assert all(s["seconds_per_step"] > 0 for s in gpu["stages"].values())
