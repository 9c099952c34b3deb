"""The ``lamd`` image-to-video stage on tiny models loaded through from_pretrained: the first frame from the
video or ``first_frame_uri``, seeded samples, extra samples as MP4s, preflight, and one error per bad input."""

from __future__ import annotations

import os

import cv2
import numpy as np
import pytest

from pipeline import media
from pipeline.config import ConfigError
from pipeline.stage import RunContext, run_stage
from stages.edit import get_method
from stages.edit.lamd import LamdConfig, LamdStage
from stages.edit.lamd.stage import square_frame
from tests.lamd_fixtures import one_thread, save_tiny_lamd, save_tiny_text, tiny_dmg  # noqa: F401 - autouse


def _video(frames: int = 3, height: int = 24, width: int = 32) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width]
    return np.stack([np.stack([(xx * 7 + t * 9) % 256, yy * 9, np.full_like(xx, 90)], -1)
                     for t in range(frames)]).astype(np.uint8)


def _row(**extra) -> dict:
    row = {"job_id": "job-1", "video_id": "vid/1", "method": "lamd", "status": "pending", "frames": _video(),
           "fps": 12.0, "prompt": "ignored by a DMG without text"}
    row.update(extra)
    return row


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    return save_tiny_lamd(tmp_path_factory.mktemp("lamd-model"))


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("out"))


@pytest.fixture(scope="module")
def stage(model, out) -> LamdStage:
    s = LamdStage(LamdConfig(model=model, num_inference_steps=2),
                  RunContext(output_url=out, cache_url=os.path.join(out, "cache")))
    s.preflight()
    s.setup()
    yield s
    s.close()


def test_registered_with_the_papers_sampling_defaults():
    assert get_method("lamd") is LamdStage
    c = LamdConfig()
    assert (c.num_inference_steps, c.eta, c.num_samples) == (200, 1.0, 1)
    with pytest.raises(ConfigError, match="eta"):
        LamdConfig(eta=1.5)


def test_generates_l_frames_from_the_first_frame_deterministically(stage):
    row = run_stage(stage, _row())
    assert row["status"] == "pending", row.get("error")
    clip = row["edited_frames"]
    assert clip.shape == (4, 16, 16, 3) and clip.dtype == np.uint8 and clip.std() > 0
    # the input, repeated, is the "before" of the encode stage's preview
    assert np.array_equal(row["frames"][1], square_frame(_video()[0], 16, "stretch"))
    again = run_stage(stage, _row(frames=np.concatenate([_video()[:1], 255 - _video()[1:]])))
    assert np.array_equal(again["edited_frames"], clip)  # only frame 0 of the video is read
    other = run_stage(stage, _row(params={"seed": 5}))
    assert not np.array_equal(other["edited_frames"], clip)


def test_first_frame_uri_replaces_the_video_frame(stage, tmp_path):
    image = 255 - _video()[0]
    path = tmp_path / "first.png"
    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    from_uri = run_stage(stage, _row(first_frame_uri=str(path)))["edited_frames"]
    from_video = run_stage(stage, _row(frames=image[None]))["edited_frames"]
    assert np.array_equal(from_uri, from_video)


def test_num_samples_writes_each_extra_sample_and_a_preview(stage, out):
    row = run_stage(stage, _row(params={"num_samples": 3}))
    assert row["status"] == "pending", row.get("error")
    outputs = row["outputs"]
    assert sorted(outputs) == ["lamd_samples", "sample_1", "sample_2"]
    frames, _, _ = media.decode(outputs["sample_2"])
    assert frames.shape == (4, 16, 16, 3) and outputs["sample_1"].startswith(out)
    assert os.path.getsize(outputs["lamd_samples"]) > 0
    single = run_stage(stage, _row())["edited_frames"]
    assert np.array_equal(row["edited_frames"], single)  # sample 0 has the row's seed


@pytest.mark.parametrize("extra, error", [
    ({"first_frame_uri": "/no/such/frame.png"}, "RowFieldError: first_frame_uri '/no/such/frame.png' cannot be read"),
    ({"frames": np.zeros((0, 24, 32, 3), np.uint8)}, "RowFieldError: lamd needs a first frame"),
    ({"params": {"model": "/elsewhere"}}, "RowFieldError: params may not override 'model'"),
    ({"params": {"num_samples": 0}}, "ConfigError: params: num_samples and num_inference_steps must be >= 1"),
])
def test_bad_inputs_are_errors_on_their_row(stage, extra, error):
    row = run_stage(stage, _row(**extra))
    assert row["status"] == "error" and row["error_stage"] == "edit:lamd"
    assert row["error"].startswith(error), row["error"]


def test_unreadable_first_frame_image_is_a_row_error(stage, tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(b"not a png")
    row = run_stage(stage, _row(first_frame_uri=str(path)))
    assert row["error"] == f"RowFieldError: first_frame_uri {str(path)!r} is not a readable image"


def test_a_text_conditioned_dmg_reads_the_prompt_from_its_own_text_encoder(tmp_path, out):
    folder = save_tiny_lamd(tmp_path / "text-model", dmg=tiny_dmg(text_embed_dim=32))
    save_tiny_text(tmp_path / "text-model" / "dmg")  # where jobs.train_lamd exports it
    stage = LamdStage(LamdConfig(model=folder, num_inference_steps=2), RunContext(output_url=out, cache_url=out))
    stage.setup()
    red, blue = (run_stage(stage, _row(prompt=p))["edited_frames"] for p in ("a red disc", "a blue disc"))
    assert red.shape == (4, 16, 16, 3) and not np.array_equal(red, blue)
    assert np.array_equal(run_stage(stage, _row(prompt="a red disc"))["edited_frames"], red)


def test_preflight_names_missing_and_mismatched_models(model, tmp_path, out):
    context = RunContext(output_url=out, cache_url=out)
    with pytest.raises(ConfigError, match="set 'model'"):
        LamdStage(LamdConfig(), context).preflight()
    with pytest.raises(ConfigError, match="does not exist"):
        LamdStage(LamdConfig(model=str(tmp_path / "none")), context).preflight()
    bad = save_tiny_lamd(tmp_path / "bad", dmg=tiny_dmg(content_channels=4))
    with pytest.raises(ConfigError, match="latent/content widths 2/4"):
        LamdStage(LamdConfig(model=bad), context).setup()


def test_training_yaml_validates_and_manifest_windows_decode(sample_dir):
    import pandas as pd

    from jobs.train_lamd import _windows
    from pipeline.config import load_config
    from stages.edit.lamd.train_config import LamdDataConfig, TrainLamdConfig

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    config = load_config(TrainLamdConfig, os.path.join(root, "jobs", "configs", "train_lamd.yaml"))
    assert (config.data.size, config.data.num_frames, config.vae.beta, config.vae.model.latent_channels,
            config.vae.model.content_channels, config.dmg.model.num_train_timesteps) == (64, 16, 1e-4, 4, 64, 1000)
    with pytest.raises(ConfigError, match="lpips_weights"):
        load_config(TrainLamdConfig, None, ["vae.lpips_weight=1.0"])
    video = pd.read_csv(os.path.join(sample_dir, "manifest.csv")).video_uri[0]  # 36 frames of 256 x 256
    data = LamdDataConfig(size=32, num_frames=8, frame_stride=2, max_windows_per_video=3)
    windows = _windows({"video_uri": video}, data, None)
    assert len(windows) == 2 and windows[0]["clip"].shape == (8, 32, 32, 3)  # 36 frames hold two 15-frame spans
    assert _windows({"video_uri": "/no/such.mp4"}, data, None) == []  # a bad video is skipped, not fatal


@pytest.mark.slow
def test_a_trajectory_runs_ok_videos_are_training_windows_with_their_captions(ray_local, sample_dir, tmp_path):
    import pandas as pd

    from jobs.train_lamd import trajectory_shard_files, window_dataset
    from jobs.trajectory_shards import ShardStore, shard_schema
    from stages.edit.lamd.train_config import LamdDataConfig

    video = pd.read_csv(os.path.join(sample_dir, "manifest.csv")).video_uri[0]
    run = str(tmp_path / "traj")
    store = ShardStore(run, "r1", shard_schema(), None, subdir="shards")
    store.write_part([{"job_id": "a", "video_uri": video, "caption": "a red square", "status": "ok", "attempt": 1},
                      {"job_id": "b", "video_uri": video, "caption": "failed row", "status": "error", "attempt": 1}])
    assert len(trajectory_shard_files(run, None)) == 1 and trajectory_shard_files(video, None) == []
    data = LamdDataConfig(size=16, num_frames=4, frame_stride=2, max_windows_per_video=2)
    windows = window_dataset(run, data, None).take_all()
    assert len(windows) == 2 and {w["prompt"] for w in windows} == {"a red square"}
    assert windows[0]["clip"].shape == (4, 16, 16, 3)
