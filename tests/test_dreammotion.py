"""DreamMotion on a tiny ZeroScope-layout stack (UNet3D, VAE, CLIP built from config, seeded, loaded
through from_pretrained): the three terms at equality, masking, where gradients go, which keys are
hooked, the shared draws, S-SSM descent, determinism, checkpointing, calibration and refusals."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
import torch

from pipeline.stage import RunContext, run_stage
from stages.edit.dreammotion import DreamMotionConfig, DreamMotionStage
from stages.edit.dreammotion import optimise as opt
from stages.edit.dreammotion.key_hooks import KeyRecorder, spatial_key_layers
from stages.edit.dreammotion.masks import latent_masks
from stages.edit.dreammotion.memory import checkpoint_blocks
from stages.edit.dreammotion.optimise import PromptEmbeddings, draw, iteration_losses, optimise_latents
from tests.dreammotion_fixtures import TINY_DREAMMOTION, save_tiny_zeroscope, tiny_unet3d

SOURCE, EDIT = "an orange disc", "a golden star"
SPATIAL_UP = ["up_blocks.1.attentions.0.transformer_blocks.0.attn1.to_k",
              "up_blocks.1.attentions.1.transformer_blocks.0.attn1.to_k"]


def _clip(frames: int = 3, size: int = 32) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    return np.stack([np.stack([(xx * 8 + t * 10) % 256, yy * 8, np.full_like(xx, 128)], -1)
                     for t in range(frames)]).astype(np.uint8)


@pytest.fixture(scope="module")
def tiny_t2v(tmp_path_factory) -> str:
    return str(save_tiny_zeroscope(tmp_path_factory.mktemp("tiny-t2v")))


@pytest.fixture(scope="module")
def stage(tiny_t2v, tmp_path_factory) -> DreamMotionStage:
    out = str(tmp_path_factory.mktemp("out"))
    config = DreamMotionConfig(model=tiny_t2v, **TINY_DREAMMOTION)
    s = DreamMotionStage(config, RunContext(output_url=out, cache_url=os.path.join(out, "cache")))
    s.preflight()
    s.setup()
    yield s
    s.close()


@pytest.fixture(scope="module")
def source(stage) -> torch.Tensor:
    return stage.encode_frames(_clip()).float()


def _prompts(stage, target: str = EDIT, source: str = SOURCE) -> PromptEmbeddings:
    return stage.prompt_embeddings(target, source)


def _terms(stage, latents, source, prompts, mask=None, t=600, seed=1, **changes):
    config = dataclasses.replace(stage.config, **changes)
    noise = torch.randn(source.shape, generator=torch.Generator().manual_seed(seed))
    alpha = float(stage.models["scheduler"].alphas_cumprod[t])
    return iteration_losses(stage.models["unet"], stage.recorder, latents, source, t, noise, alpha, prompts, mask,
                            config, stage.precision)


def test_equal_latents_and_prompts_give_exactly_zero_losses_and_gradient(stage, source):
    latents = source.clone().requires_grad_(True)
    terms = _terms(stage, latents, source, _prompts(stage, SOURCE, SOURCE))
    assert {k: float(v.detach()) for k, v in terms.items()} == {"vdds": 0.0, "s_ssm": 0.0, "t_ssm": 0.0, "total": 0.0}
    terms["total"].backward()
    assert latents.grad is not None and float(latents.grad.abs().max()) == 0.0


def test_zero_mask_gives_zero_vdds_gradient_and_a_full_mask_does_not(stage, source):
    prompts = _prompts(stage)
    grads = {}
    for name, mask in (("zero", torch.zeros(3, 8, 8)), ("full", torch.ones(3, 8, 8))):
        latents = source.clone().requires_grad_(True)
        _terms(stage, latents, source, prompts, mask, lambda_s=0.0, lambda_t=0.0)["total"].backward()
        grads[name] = latents.grad
    assert float(grads["zero"].abs().max()) == 0.0
    assert float(grads["full"].abs().max()) > 0.0


def test_gradients_reach_the_latents_and_no_model_parameter(stage, source):
    latents = (source + 0.2 * torch.randn(source.shape, generator=torch.Generator().manual_seed(3)))
    latents.requires_grad_(True)
    _terms(stage, latents, source, _prompts(stage), lambda_s=1.0, lambda_t=1.0)["total"].backward()
    assert float(latents.grad.norm()) > 0
    for name in ("unet", "vae", "text_encoder"):
        params = list(stage.models[name].parameters())
        assert not any(p.requires_grad for p in params) and all(p.grad is None for p in params), name


def test_only_spatial_self_attention_keys_are_hooked(stage, source):
    assert stage.recorder.layers == SPATIAL_UP
    unet = stage.models["unet"]
    everything = spatial_key_layers(unet, ["down_blocks", "mid_block", "up_blocks"])  # in module order
    assert everything == ["down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k", *SPATIAL_UP,
                          "mid_block.attentions.0.transformer_blocks.0.attn1.to_k"]
    assert not any("temp_attentions" in n or "transformer_in" in n for n in everything)
    with torch.no_grad(), stage.recorder.capture() as keys:
        opt.unet_eps(unet, source, 500, _prompts(stage).target, stage.precision)
    assert sorted(keys) == SPATIAL_UP
    assert getattr(unet.up_blocks[1].attentions[0].forward, "vidflow_checkpointed", False)  # config default
    assert [tuple(k.shape) for k in keys.values()] == [(3, 64, 16)] * 2  # [F, h*w tokens, channels]
    per_video = stage.recorder.per_video(keys, 3)
    assert len(per_video) == 1 and [tuple(k.shape) for k in per_video[0]] == [(3, 64, 16)] * 2


def test_temporal_or_unknown_key_layers_are_refused():
    unet = tiny_unet3d()
    with pytest.raises(ValueError, match="temporal attention"):
        spatial_key_layers(unet, ["up_blocks.1.temp_attentions"])
    with pytest.raises(ValueError, match="temporal attention"):
        spatial_key_layers(unet, ["transformer_in"])
    with pytest.raises(ValueError, match="selects no spatial"):
        spatial_key_layers(unet, ["up_blocks.0.attentions"])


def test_one_draw_per_iteration_is_shared_by_both_videos_and_all_terms(stage, source, monkeypatch):
    draws, calls = [], []
    real_draw = opt.draw

    def recording_draw(*args, **kwargs):
        out = real_draw(*args, **kwargs)
        draws.append(out)
        return out

    def record(module, args, kwargs):
        calls.append((args[0].detach().clone(), args[1].clone()))

    monkeypatch.setattr(opt, "draw", recording_draw)
    unet = stage.models["unet"]
    handle = unet.register_forward_pre_hook(record, with_kwargs=True)
    try:
        config = dataclasses.replace(stage.config, iterations=2)
        optimise_latents(unet, stage.recorder, source, _prompts(stage), stage.models["scheduler"].alphas_cumprod,
                         None, config, torch.Generator().manual_seed(0), stage.precision)
    finally:
        handle.remove()
    assert len(draws) == 2 and len(calls) == 8  # 4 UNet passes per iteration
    alphas = stage.models["scheduler"].alphas_cumprod
    for i, (t, noise) in enumerate(draws):
        passes = calls[4 * i:4 * i + 4]  # target cond, source cond, target uncond, source uncond
        assert all(int(ts.item()) == t for _, ts in passes)
        a = float(alphas[t])
        expected_source = a ** 0.5 * source + (1 - a) ** 0.5 * noise
        assert torch.allclose(passes[1][0], expected_source, atol=1e-6)
        assert torch.equal(passes[3][0], passes[1][0]) and torch.equal(passes[2][0], passes[0][0])
        target_clean = (passes[0][0] - (1 - a) ** 0.5 * noise) / a ** 0.5  # the target noised with the same eps
        if i == 0:
            assert torch.allclose(target_clean, source, atol=1e-5)
    assert draws[0][0] != draws[1][0] or not torch.equal(draws[0][1], draws[1][1])


def test_s_ssm_only_steps_lower_s_ssm(stage, source):
    prompts = _prompts(stage, SOURCE, SOURCE)
    perturbed = source + 0.5 * torch.randn(source.shape, generator=torch.Generator().manual_seed(7))
    zero = torch.zeros(3, 8, 8)  # V-DDS off: only S-SSM moves the latents
    config = dataclasses.replace(stage.config, iterations=6, lambda_s=1.0, lambda_t=0.0, optimizer="adam",
                                 learning_rate=0.05, t_min=300, t_max=301)
    result = optimise_latents(stage.models["unet"], stage.recorder, source, prompts,
                              stage.models["scheduler"].alphas_cumprod, zero, config,
                              torch.Generator().manual_seed(0), stage.precision, init=perturbed)
    before = float(_terms(stage, perturbed.clone(), source, prompts, zero, t=300, lambda_t=0.0)["s_ssm"])
    after = float(_terms(stage, result.latents.clone(), source, prompts, zero, t=300, lambda_t=0.0)["s_ssm"])
    assert before > 1e-4
    assert after < 0.7 * before


def _run(stage, source, seed, **changes):
    config = dataclasses.replace(stage.config, iterations=2, **changes)
    return optimise_latents(stage.models["unet"], stage.recorder, source, _prompts(stage),
                            stage.models["scheduler"].alphas_cumprod, torch.ones(3, 8, 8), config,
                            torch.Generator().manual_seed(seed), stage.precision)


def test_same_seed_same_result_other_seed_other_result(stage, source):
    a, b, c = _run(stage, source, 5), _run(stage, source, 5), _run(stage, source, 6)
    assert torch.equal(a.latents, b.latents) and a.history == b.history
    assert not torch.equal(a.latents, source) and not torch.equal(a.latents, c.latents)
    assert [h["t"] for h in a.history] == [float(draw(torch.Generator().manual_seed(5), (1,), 50, 949)[0]),
                                           a.history[1]["t"]]


def test_calibration_reports_each_terms_gradient_norm(stage, source):
    perturbed = source + 0.2 * torch.randn(source.shape, generator=torch.Generator().manual_seed(2))
    config = dataclasses.replace(stage.config, iterations=1)
    result = optimise_latents(stage.models["unet"], stage.recorder, source, _prompts(stage),
                              stage.models["scheduler"].alphas_cumprod, None, config,
                              torch.Generator().manual_seed(0), stage.precision, calibrate=True, init=perturbed)
    norms = result.gradient_norms
    assert set(norms) == {"vdds", "s_ssm", "t_ssm"} and all(v > 0 for v in norms.values())
    # V-DDS's gradient is analytic: loss_scale * |g| / (h * w), with |g| bounded by the guided predictions
    assert norms["vdds"] < config.loss_scale * 100


def test_block_checkpointing_gives_the_same_gradient():
    plain, checkpointed = tiny_unet3d().requires_grad_(False), tiny_unet3d().requires_grad_(False)
    assert checkpoint_blocks(checkpointed) > 0
    g = torch.Generator().manual_seed(0)
    x, text = torch.randn(1, 4, 3, 8, 8, generator=g), torch.randn(1, 16, 32, generator=g)
    grads = []
    for unet in (plain, checkpointed):
        recorder = KeyRecorder(unet, SPATIAL_UP)
        latents = x.clone().requires_grad_(True)
        with recorder.capture() as keys:
            out = unet(latents, torch.tensor([400]), encoder_hidden_states=text).sample
        loss = sum(k.pow(2).mean() for k in keys.values()) + out.mean()
        loss.backward()
        grads.append(latents.grad)
        recorder.remove()
    assert float(grads[0].abs().max()) > 0
    assert torch.allclose(grads[0], grads[1], atol=1e-6, rtol=1e-5)


def test_a_v_prediction_model_is_refused(tmp_path):
    path = save_tiny_zeroscope(tmp_path / "v", prediction_type="v_prediction")
    s = DreamMotionStage(DreamMotionConfig(model=str(path), **TINY_DREAMMOTION),
                         RunContext(output_url=str(tmp_path), cache_url=str(tmp_path / "c")))
    with pytest.raises(ValueError, match="epsilon-prediction"):
        s.setup()


def _row(tmp_path, **extra) -> dict:
    row = {"job_id": "job-1", "video_id": "vid/1", "method": "dreammotion", "status": "pending",
           "prompt": EDIT, "source_prompt": SOURCE, "frames": _clip(4, 40), "fps": 24.0}
    row.update(extra)
    return row


def _masks_file(tmp_path, masks: np.ndarray, name: str = "masks.npz") -> str:
    path = tmp_path / name
    np.savez(path, masks=masks)
    return str(path)


def test_stage_edits_a_row_inside_its_masks(stage, tmp_path):
    masks = np.zeros((4, 40, 40), bool)
    masks[:, 10:30, 10:30] = True
    row = _row(tmp_path, masks_uri=_masks_file(tmp_path, masks), params={"lambda_s": 0.0, "lambda_t": 0.0,
                                                                          "calibrate": True})
    out = run_stage(stage, row)
    assert out["status"] != "error", out.get("error")
    edited = out["edited_frames"]
    assert edited.dtype == np.uint8 and edited.shape == (3, 32, 32, 3)
    assert out["frames"].shape == (3, 32, 32, 3)  # the clip that was edited, for before|after previews
    source = stage.encode_frames(out["frames"]).float()
    changed = (stage.last_result.latents - source).abs().amax(dim=(0, 1)) > 0  # [F, h, w]
    region = latent_masks(masks, stage.config, (8, 8)).bool()
    assert changed.any() and not (changed & ~region).any()  # V-DDS alone moves only the masked cells
    norms = stage.last_result.gradient_norms
    assert norms["vdds"] > 0 and norms["s_ssm"] == norms["t_ssm"] == 0.0  # weights 0: no structure gradient


@pytest.mark.parametrize("extra, message", [
    ({"source_prompt": ""}, "RowFieldError: method 'dreammotion' needs row field 'source_prompt'"),
    ({"mask_source": "alpha"}, "RowFieldError: mask_source 'alpha' is not one of"),
    ({"masks_uri": "MISSING"}, "RowFieldError: masks_uri '"),
    ({"masks_uri": "FRAMES"}, "has 3 frames, the decoded video 4"),
    ({"masks_uri": "SIZE"}, "is 50x40 but the frames are 40x40"),
    ({"params": {"key_layers": ["up_blocks.1"]}}, "RowFieldError: params may not override 'key_layers'"),
    ({"params": {"lambda_s": -1}}, "lambda_s and lambda_t must be >= 0"),
    ({"params": {"t_max": 5000}}, "ValueError: t_max=5000 exceeds the scheduler's 1000 training timesteps"),
])
def test_bad_rows_are_clear_errors(stage, tmp_path, extra, message):
    files = {"MISSING": str(tmp_path / "absent.npz"),
             "FRAMES": _masks_file(tmp_path, np.ones((3, 40, 40), bool), "frames.npz"),
             "SIZE": _masks_file(tmp_path, np.ones((4, 40, 50), bool), "size.npz")}
    if extra.get("masks_uri") in files:
        extra = {**extra, "masks_uri": files[extra["masks_uri"]]}
    out = run_stage(stage, _row(tmp_path, **extra))
    assert out["status"] == "error" and out["error_stage"] == "edit:dreammotion"
    assert message in out["error"], out["error"]
