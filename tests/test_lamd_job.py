"""End to end: ``jobs.edit_videos --method lamd`` animates the sample's first frames inside the Ray pipeline
with a tiny MCD-VAE + DMG trained for a few steps; rows without a decodable first frame are error rows."""

from __future__ import annotations

import json
import os

import pandas as pd
import pytest
import torch
import yaml

from jobs import edit_videos
from pipeline import media
from stages.edit.lamd.data import synthetic_batches
from stages.edit.lamd.training import DmgTrainer, VaeLossWeights, VaeTrainer
from tests.lamd_fixtures import TINY_VAE, one_thread, save_tiny_lamd, tiny_dmg, tiny_vae  # noqa: F401 - autouse

pytestmark = pytest.mark.slow
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_production_yaml_validates():
    from pipeline.config import load_config

    path = os.path.join(ROOT, "jobs", "configs", "lamd.yaml")
    config = load_config(edit_videos.EditJobConfig, path)
    lamd = edit_videos.method_configs(config, path)["lamd"]
    assert (lamd.num_inference_steps, lamd.eta, lamd.resources.num_gpus) == (200, 1.0, 1)


def trained_tiny_model(folder) -> str:
    """A tiny MCD-VAE and DMG trained for a few steps on synthetic 16 x 16 clips, saved as ``lamd`` loads them."""
    batches = synthetic_batches(100, 0, 1, 2, TINY_VAE["sample_size"], TINY_VAE["num_frames"])
    vae_trainer = VaeTrainer(tiny_vae(), VaeLossWeights(), 2e-3, seed=0)
    vae_losses = [vae_trainer.step(next(batches))["l1"] for _ in range(4)]
    assert vae_losses[-1] < vae_losses[0]
    dmg_trainer = DmgTrainer(tiny_dmg(), vae_trainer.vae, 2e-3, seed=0)
    for _ in range(2):
        dmg_trainer.step(next(batches))
    torch.manual_seed(0)
    return save_tiny_lamd(folder, vae_trainer.vae.eval(), dmg_trainer.dmg.eval())


def test_edit_job_runs_lamd_on_ray(ray_local, sample_dir, tmp_path):
    model = trained_tiny_model(tmp_path / "model")
    videos = pd.read_csv(os.path.join(sample_dir, "manifest.csv")).to_dict(orient="records")
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video")
    rows = [
        {**videos[0], "video_id": "square", "params": json.dumps({"num_samples": 2})},
        {**videos[1], "video_id": "landscape", "first_frame_uri": videos[2]["mask_uri"]},
        {**videos[0], "video_id": "corrupt", "video_uri": str(corrupt)},
        {**videos[0], "video_id": "no_image", "first_frame_uri": str(tmp_path / "missing.png")},
    ]
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame([{**r, "method": ""} for r in rows]).to_csv(manifest, index=False)
    half = {"num_cpus": 0.5, "min_actors": 1, "max_actors": 1}
    config = {
        "run": {"method": "lamd", "max_failure_fraction": 1.0, "flush_rows": 1},
        "decode": {"max_frames": 1, "resources": half},
        "encode": {"preset": "ultrafast", "resources": half},
        "methods": {"lamd": {"model": model, "num_inference_steps": 3, "fps": 8.0, "resources": half}},
    }
    config_path = tmp_path / "lamd.yaml"
    config_path.write_text(yaml.safe_dump(config))
    out = str(tmp_path / "out")
    code = edit_videos.main(["--manifest", str(manifest), "--output", out, "--config", str(config_path),
                             "--method", "lamd"])
    assert code == 0
    result = pd.read_parquet(os.path.join(out, "manifest")).set_index("video_id")
    for name in ("square", "landscape"):
        row = result.loc[name]
        assert row.status == "ok", (name, row.error)
        frames, fps, _ = media.decode(row.output_uri)
        assert frames.shape == (4, 16, 16, 3) and fps == pytest.approx(8.0)
        assert os.path.getsize(row.preview_uri) > 0
    outputs = json.loads(result.loc["square", "outputs"])
    assert media.decode(outputs["sample_1"])[0].shape == (4, 16, 16, 3)
    assert result.loc["corrupt", "error_stage"] == "decode"
    assert result.loc["corrupt", "error"].startswith("VideoDecodeError: not a readable video container")
    assert result.loc["no_image", "error_stage"] == "edit:lamd"
    assert result.loc["no_image", "error"].startswith("RowFieldError: first_frame_uri")
