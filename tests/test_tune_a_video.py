"""Tune-A-Video on a tiny SD 1.x stack (built from config, seeded, loaded through from_pretrained):
the inflated UNet, which parameters train, tuning, DDIM inversion, the stage's rows and errors."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
import torch

from pipeline.stage import RunContext, run_stage
from stages.decode import DecodeConfig, DecodeStage
from stages.edit.diffusion.inflate import TRAINABLE_MODULES, inflate_unet, trainable_parameters, video_unet_forward
from stages.edit.tune_a_video import TuneAVideoConfig, TuneAVideoStage, denoising_loss, tune_unet
from tests.diffusion_fixtures import TINY_CLIP, save_tiny_sd, tiny_unet

SOURCE, EDIT = "an orange disc", "a golden star"


def _clip(frames: int = 3, size: int = 32) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    return np.stack([np.stack([(xx * 8 + t * 10) % 256, yy * 8, np.full_like(xx, 128)], -1)
                     for t in range(frames)]).astype(np.uint8)


def _row(**extra) -> dict:
    row = {"job_id": "job-1", "video_id": "vid/1", "method": "tune_a_video", "status": "pending",
           "prompt": EDIT, "source_prompt": SOURCE, "frames": _clip(4, 40), "fps": 24.0}
    row.update(extra)
    return row


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory) -> str:
    return str(save_tiny_sd(tmp_path_factory.mktemp("tiny-sd")))


@pytest.fixture(scope="module")
def stage(tiny_sd, tmp_path_factory) -> TuneAVideoStage:
    out = str(tmp_path_factory.mktemp("out"))
    config = TuneAVideoConfig(model=tiny_sd, train_steps=2, gradient_checkpointing=False, **TINY_CLIP)
    s = TuneAVideoStage(config, RunContext(output_url=out, cache_url=os.path.join(out, "cache")))
    s.preflight()
    s.setup()
    yield s
    s.close()


def test_inflated_unet_with_one_frame_is_the_image_unet():
    image, video = tiny_unet().eval(), tiny_unet().eval()
    inflate_unet(video)
    g = torch.Generator().manual_seed(0)
    x, text = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 5, 32, generator=g)
    with torch.no_grad():
        ref = image(x, torch.tensor([10, 700]), encoder_hidden_states=text).sample
        out = video_unet_forward(video, x[:, :, None], torch.tensor([10, 700]), text)[:, :, 0]
    assert torch.allclose(out, ref, atol=1e-5)


def test_zero_initialised_temporal_attention_is_the_identity():
    unet = tiny_unet().eval()
    inflate_unet(unet)
    blocks = [m for m in unet.modules() if hasattr(m, "attn_temp")]
    assert blocks and all(not b.attn_temp.to_out[0].weight.any() for b in blocks)
    x = torch.randn(6, 7, blocks[0].norm_temp.normalized_shape[0])  # (b d) f c: 6 positions, 7 frames
    with torch.no_grad():
        assert not blocks[0].attn_temp(blocks[0].norm_temp(x)).any()
    with pytest.raises(ValueError, match="already inflated"):
        inflate_unet(unet)


def test_only_the_intended_parameters_receive_gradients():
    unet = tiny_unet()
    inflate_unet(unet)
    unet.requires_grad_(False)
    params = trainable_parameters(unet, TRAINABLE_MODULES)
    for p in params.values():
        p.requires_grad_(True)
    blocks = [n for n, m in unet.named_modules() if hasattr(m, "attn_temp")]
    expected = {f"{b}.{suffix}.{leaf}" for b in blocks for suffix, leaf in (
        ("attn1.to_q", "weight"), ("attn2.to_q", "weight"), ("attn_temp.to_q", "weight"),
        ("attn_temp.to_k", "weight"), ("attn_temp.to_v", "weight"), ("attn_temp.to_out.0", "weight"),
        ("attn_temp.to_out.0", "bias"))}
    assert blocks and set(params) == expected  # SD 1.x attention has no q/k/v bias; norm_temp stays frozen
    g = torch.Generator().manual_seed(0)
    latents, text = torch.randn(1, 4, 3, 8, 8, generator=g), torch.randn(1, 5, 32, generator=g)
    from tests.diffusion_fixtures import tiny_scheduler

    def backward() -> tuple[set[str], set[str]]:
        unet.zero_grad(set_to_none=True)
        noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(1))
        denoising_loss(unet, latents, text, tiny_scheduler(), noise, torch.tensor([500])).backward()
        named = list(unet.named_parameters())
        return ({n for n, p in named if p.grad is not None},
                {n for n, p in named if p.grad is not None and p.grad.abs().sum() > 0})

    reached, nonzero = backward()
    assert reached == set(params)
    # at the start the temporal attention's zero output projection blocks the gradient of its q/k/v
    assert nonzero == {n for n in params if ".attn_temp.to_" not in n or ".attn_temp.to_out" in n}
    with torch.no_grad():
        for name, p in params.items():
            if ".attn_temp.to_out" in name:
                p.add_(0.01 * torch.randn(p.shape, generator=g))
    reached, nonzero = backward()
    assert reached == nonzero == set(params)


def test_a_few_tuning_steps_lower_the_loss(stage):
    stage.restore_pristine()
    unet, sched = stage.models["unet"], stage.models["scheduler"]
    latents, text = stage.encode_frames(_clip()), stage.encode_text([SOURCE])
    g = torch.Generator().manual_seed(1)
    noise = torch.randn((4, *latents.shape[1:]), generator=g)
    t = torch.tensor([100, 300, 600, 900])

    def held_out() -> float:
        with torch.no_grad():
            return float(denoising_loss(unet, latents.expand(4, -1, -1, -1, -1), text.expand(4, -1, -1), sched,
                                        noise, t))

    before = held_out()
    config = dataclasses.replace(stage.config, train_steps=6, learning_rate=1e-2)
    try:
        losses = tune_unet(unet, list(stage.params.values()), latents, text, sched, config,
                           torch.Generator().manual_seed(0))
        after = held_out()
    finally:
        stage.restore_pristine()
    assert len(losses) == 6 and after < 0.98 * before
    assert held_out() == pytest.approx(before)  # restoring brings back the base model exactly


def test_inversion_then_sampling_reconstructs_the_latents(stage):
    """A random UNet is no denoiser: its noise prediction jumps as the latents move, and DDIM
    inversion (which evaluates it one step off) drifts. A trained model's prediction varies
    slowly along the DDIM path; damping the tiny UNet's output 100x gives that property."""
    unet = stage.models["unet"]
    weight, bias = unet.conv_out.weight.data.clone(), unet.conv_out.bias.data.clone()
    unet.conv_out.weight.data.mul_(0.01)
    unet.conv_out.bias.data.mul_(0.01)
    try:
        latents = stage.encode_frames(_clip())
        config = dataclasses.replace(stage.config, inversion_prompt=SOURCE, guidance_scale=1.0)
        inverted = stage.invert(latents, config)
        back = stage.sample(inverted, SOURCE, config)
        edited = stage.sample(inverted, EDIT, dataclasses.replace(config, guidance_scale=12.5))
    finally:
        unet.conv_out.weight.data, unet.conv_out.bias.data = weight, bias
    error = float((back - latents).norm() / latents.norm())
    assert error < 0.06
    assert float((inverted - latents).norm() / latents.norm()) > 0.3  # it did go somewhere
    assert float((edited - latents).norm() / latents.norm()) > 3 * error  # and the prompt matters


def test_row_edit_is_deterministic_and_saved_weights_reload(stage):
    config = dataclasses.replace(stage.config, save_weights=True)
    stage.config = config
    try:
        first = run_stage(stage, _row())
        assert first["status"] == "pending", first.get("error")
        edited = first["edited_frames"]
        assert edited.shape == (3, 32, 32, 3) and edited.dtype == np.uint8
        assert first["frames"].shape == (3, 32, 32, 3) and first["fps"] == 24.0
        url = first["outputs"]["tuned_weights"]
        assert url.startswith(stage.context.output_url + "/weights/") and url.endswith("/job-1.safetensors")
        assert os.path.exists(url)
        again = run_stage(stage, _row())
        assert np.array_equal(again["edited_frames"], edited)
        other_seed = run_stage(stage, _row(job_id="job-3", params={"seed": 7}))
        assert not np.array_equal(other_seed["edited_frames"], edited)
        reloaded = run_stage(stage, _row(job_id="job-2", tuned_weights_uri=url))
        assert reloaded["status"] == "pending", reloaded.get("error")
        assert np.array_equal(reloaded["edited_frames"], edited)
        assert "tuned_weights" not in (reloaded.get("outputs") or {})
    finally:
        stage.config = dataclasses.replace(config, save_weights=False)


@pytest.mark.parametrize("change, error", [
    ({"prompt": None}, "RowFieldError: method 'tune_a_video' needs row field 'prompt'"),
    ({"source_prompt": "  "}, "RowFieldError: method 'tune_a_video' needs row field 'source_prompt'"),
    ({"frames": _clip(2, 40)}, "VideoTooShortError: video has 2 frames; tune_a_video needs 3"),
    ({"params": {"dtype": "float16"}}, "RowFieldError: params may not override 'dtype'"),
    ({"tuned_weights_uri": "/nonexistent/w.safetensors"}, "FileNotFoundError: cannot read weights"),
])
def test_bad_rows_are_clear_row_errors(stage, change, error):
    out = run_stage(stage, _row(**change))
    assert out["status"] == "error" and out["error_stage"] == "edit:tune_a_video"
    assert out["error"].startswith(error), out["error"]
    assert "edited_frames" not in out and "frames" not in out


def test_unreadable_video_is_a_row_error_before_the_edit(stage, tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"this is not a video")
    context = stage.context
    row = run_stage(DecodeStage(DecodeConfig(), context), {"job_id": "j", "video_id": "broken", "status": "pending",
                                                          "video_uri": str(bad), "method": "tune_a_video",
                                                          "prompt": EDIT, "source_prompt": SOURCE})
    out = run_stage(stage, row)
    assert out["status"] == "error" and out["error_stage"] == "decode" and out["error"]
