"""``jobs.train_lamd`` on Ray Train with 2 CPU workers (gloo) and tiny models: each phase stopped after a few
steps and resumed from its checkpoint (the resumed MCD-VAE equals an uninterrupted run's), synthetic clips for
the MCD-VAE and the sample manifest's decoded windows for the DMG, metrics files, an existing run refused
without --resume, and exports the ``lamd`` method loads."""

from __future__ import annotations

import json
import os

import pytest
import torch
import yaml

from jobs import train_lamd
from pipeline.stage import RunContext, run_stage
from stages.edit.lamd import LamdConfig, LamdStage
from stages.edit.lamd.dmg import MotionGenerator
from stages.edit.lamd.mcd_vae import MCDVAE
from tests.lamd_fixtures import TINY_DMG, TINY_VAE, save_tiny_text

pytestmark = pytest.mark.slow

TRAIN = {"num_workers": 2, "cpus_per_worker": 0.5, "checkpoint_every": 2, "log_every": 1, "seed": 3,
         "max_failures": 0}  # half a CPU each: Ray Data decodes the manifest windows on the rest
DMG_MODEL = {k: TINY_DMG[k] for k in ("block_out_channels", "down_block_types", "up_block_types", "layers_per_block",
                                     "cross_attention_dim", "attention_head_dim", "norm_num_groups")}
CONFIG = {
    "num_cpus": 2,
    "data": {"size": TINY_VAE["sample_size"], "num_frames": TINY_VAE["num_frames"]},
    "vae": {"batch_size": 2, "learning_rate": 1e-3, "gan_weight": 0.1, "gan_start_step": 1,
            "model": {k: TINY_VAE[k] for k in ("latent_channels", "content_channels", "block_out_channels",
                                               "norm_num_groups")} | {"disc_channels": [8, 16]},
            "train": TRAIN},
    "dmg": {"batch_size": 2, "learning_rate": 1e-3, "model": DMG_MODEL, "train": TRAIN},
}


def _rows(out: str, name: str) -> list[dict]:
    with open(os.path.join(out, "metrics", f"{name}.jsonl")) as handle:
        return [json.loads(line) for line in handle]


def _train(out: str, config: str, phase: str, steps: int, *extra: str, data: str | None = None) -> int:
    source = ["--data", data] if data else ["--synthetic"]
    return train_lamd.main([*source, "--output", out, "--config", config, "--phase", phase,
                            "--set", f"{phase}.train.steps={steps}", *extra])


def test_both_phases_train_stop_and_resume_on_ray_train(ray_local, sample_dir, tmp_path):
    config = tmp_path / "train_lamd.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    straight, broken = str(tmp_path / "straight"), str(tmp_path / "broken")

    assert _train(straight, str(config), "vae", 4) == 0
    assert _train(broken, str(config), "vae", 2) == 0  # a run that stops after its step-2 checkpoint ...
    assert _train(broken, str(config), "vae", 4) == train_lamd.EXIT_PREFLIGHT  # ... is not silently overwritten
    assert _train(broken, str(config), "vae", 4, "--resume") == 0  # ... and continues from it to step 4
    rows = _rows(broken, "lamd-vae")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert "g_adv" not in rows[0] and {"l1", "kl", "g_adv", "d_loss"} <= set(rows[1])  # GAN after its warm-up
    a = MCDVAE.from_pretrained(os.path.join(straight, "model", "mcd_vae"))
    b = MCDVAE.from_pretrained(os.path.join(broken, "model", "mcd_vae"))
    assert a.config.num_frames == TINY_VAE["num_frames"]
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))

    # phase dmg on the sample manifest's videos (decoded 4-frame windows at 16 x 16 through Ray Data) and
    # their prompts, through a tiny CLIP text encoder
    manifest = os.path.join(sample_dir, "manifest.csv")
    text = save_tiny_text(tmp_path / "clip")
    assert _train(broken, str(config), "dmg", 2, "--set", f"dmg.text_model={text}", data=manifest) == 0
    assert _train(broken, str(config), "dmg", 3, "--resume", "--set", f"dmg.text_model={text}", data=manifest) == 0
    assert [r["step"] for r in _rows(broken, "lamd-dmg")] == [1, 2, 3]
    dmg = MotionGenerator.from_pretrained(os.path.join(broken, "model", "dmg"))
    assert (dmg.config.sample_size, dmg.config.latent_channels, dmg.config.content_channels,
            dmg.config.text_embed_dim) == (4, 2, 8, 32)
    # the exported folder is the lamd method's model, text encoder included
    stage = LamdStage(LamdConfig(model=os.path.join(broken, "model"), num_inference_steps=2),
                      RunContext(output_url=str(tmp_path / "gen"), cache_url=str(tmp_path / "gen")))
    stage.preflight()
    stage.setup()
    row = run_stage(stage, {"job_id": "j", "video_id": "v", "method": "lamd", "status": "pending", "fps": 8.0,
                            "frames": (torch.rand(1, 16, 16, 3) * 255).to(torch.uint8).numpy(), "prompt": "a disc"})
    assert row["status"] == "pending" and row["edited_frames"].shape == (4, 16, 16, 3)
    checkpoints = os.listdir(os.path.join(broken, "ray_train", "lamd-dmg"))
    assert any(name.startswith("step_00000003") for name in checkpoints), checkpoints


def test_dmg_phase_without_a_trained_vae_is_a_preflight_error(ray_local, tmp_path):
    config = tmp_path / "train_lamd.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    assert _train(str(tmp_path / "none"), str(config), "dmg", 1) == train_lamd.EXIT_PREFLIGHT
