"""ReVideo's parts on tiny random models built from config: the control module and the UNet forward
with residuals, SAFM, the sampler against diffusers' EulerDiscreteScheduler, the conditions, and the
checkpoint key converter."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from stages.edit.revideo import sampling
from stages.edit.revideo.conditions import content_video, linear_tracks, region_map
from stages.edit.revideo.control import controlled_unet_forward, safm_fuse
from stages.edit.revideo.convert import diffusers_to_sgm, sgm_to_diffusers
from stages.motion_conditions import gaussian_kernel, motion_conditions
from tests.revideo_fixtures import one_thread, tiny_control, tiny_svd_unet  # noqa: F401 - one_thread: autouse


@pytest.fixture(scope="module")
def unet():
    return tiny_svd_unet()


def _inputs(seed: int = 0, batch: int = 1, frames: int = 4):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, frames, 8, 8, 8, generator=g)
    ctx = torch.randn(batch, 1, 32, generator=g)
    ids = torch.tensor([[10.0, 127.0, 0.02]]).repeat(batch, 1)
    motion = torch.randn(batch, frames, 2, 32, 32, generator=g)
    content = torch.randn(batch, frames, 3, 32, 32, generator=g)
    region = torch.zeros(batch, frames, 1, 32, 32)
    region[..., 8:24, 4:20] = 1.0
    return x, torch.tensor([0.7]), ctx, ids, motion, content, region


@torch.no_grad()
def test_zero_initialised_control_leaves_the_unet_output_bit_identical(unet):
    control = tiny_control(unet)
    x, t, ctx, ids, motion, content, region = _inputs()
    down, mid = control(x, t, ctx, ids, motion, content, region)
    assert all(not r.any() for r in (*down, mid))
    plain = unet(x, t, ctx, ids).sample
    assert torch.equal(controlled_unet_forward(unet, x, t, ctx, ids, down, mid), plain)
    assert torch.equal(controlled_unet_forward(unet, x, t, ctx, ids), plain)
    trained = tiny_control(unet, randomise=True)
    down, mid = trained(x, t, ctx, ids, motion, content, region)
    assert (controlled_unet_forward(unet, x, t, ctx, ids, down, mid) - plain).abs().max() > 1e-2


@torch.no_grad()
def test_residuals_match_the_unet_skips_in_count_and_shape(unet):
    skips = []
    unet.conv_in.register_forward_hook(lambda m, i, o: skips.append(tuple(o.shape)))
    for block in unet.down_blocks:
        block.register_forward_hook(lambda m, i, o: skips.extend(tuple(s.shape) for s in o[1]))
    x, t, ctx, ids, motion, content, region = _inputs(batch=2)
    unet(x, t, ctx, ids)
    expected = 1 + sum(len(b.resnets) + (b.downsamplers is not None) for b in unet.down_blocks)
    down, mid = tiny_control(unet)(x, t, ctx, ids, motion, content, region)
    assert len(down) == len(skips) == expected == 6
    assert [tuple(r.shape) for r in down] == skips
    assert tuple(mid.shape) == (8, 64, 4, 4)
    with pytest.raises(ValueError, match="5 down residuals for 6 UNet skips"):
        controlled_unet_forward(unet, x, t, ctx, ids, down[:5], mid)


@torch.no_grad()
def test_safm_gamma_is_one_half_at_init_and_blends_motion_then_content(unet):
    fusion = tiny_control(unet).fusion
    region = torch.zeros(3, 1, 32, 32)
    region[:, :, 4:20] = 1
    assert torch.equal(fusion.gamma(region, torch.tensor([-1.0, 0.0, 1.6])), torch.full((3, 32, 8, 8), 0.5))
    motion, content, gamma = torch.full((1, 2, 1, 1), 2.0), torch.full((1, 2, 1, 1), 5.0), torch.tensor(0.25)
    assert torch.allclose(safm_fuse(motion, content, gamma), torch.full((1, 2, 1, 1), 0.25 * 2 + 0.75 * 5))


@torch.no_grad()
def test_forcing_gamma_removes_the_content_or_motion_influence(unet):
    control = tiny_control(unet, randomise=True)
    x, t, ctx, ids, motion, content, region = _inputs()
    other_motion, other_content = motion.flip(-1) * 3, content.flip(-2) * 3

    def residuals(m, c):
        down, mid = control(x, t, ctx, ids, m, c, region)
        return torch.cat([r.flatten() for r in (*down, mid)])

    base = residuals(motion, content)
    assert not torch.equal(base, residuals(other_motion, content))  # at Gamma in (0, 1) both matter
    assert not torch.equal(base, residuals(motion, other_content))
    bias = control.fusion.conv_out.bias
    saved = bias.clone()
    try:
        bias.fill_(float("inf"))  # Gamma == 1: motion only
        assert torch.equal(residuals(motion, content), residuals(motion, other_content))
        assert not torch.equal(residuals(motion, content), residuals(other_motion, content))
        bias.fill_(float("-inf"))  # Gamma == 0: content only
        assert torch.equal(residuals(motion, content), residuals(other_motion, content))
        assert not torch.equal(residuals(motion, content), residuals(motion, other_content))
    finally:
        bias.copy_(saved)


@torch.no_grad()
def test_gamma_follows_the_noise_level_once_trained(unet):
    fusion = tiny_control(unet, randomise=True).fusion
    region = torch.zeros(1, 1, 32, 32)
    region[:, :, 8:24, 8:24] = 1
    low, high = fusion.gamma(region, torch.tensor([-1.5])), fusion.gamma(region, torch.tensor([1.6]))
    assert (low - high).abs().max() > 1e-3
    assert ((low > 0) & (low < 1)).all()


def test_karras_sigmas_and_euler_loop_equal_diffusers_euler_discrete_scheduler():
    from diffusers import EulerDiscreteScheduler

    sched = EulerDiscreteScheduler(  # SVD's scheduler_config.json
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        prediction_type="v_prediction", interpolation_type="linear", use_karras_sigmas=True, sigma_min=0.002,
        sigma_max=700.0, timestep_spacing="leading", timestep_type="continuous", steps_offset=1)
    sched.set_timesteps(3)
    ours = sampling.karras_sigmas(3)
    assert np.allclose(sched.sigmas.numpy(), ours, rtol=1e-5)
    assert ours[0] == pytest.approx(700.0, rel=1e-6) and ours[1] == pytest.approx(15.59, abs=0.01) and ours[-1] == 0
    assert np.allclose(sched.timesteps.numpy(), [sampling.edm_scalings(s)[3] for s in ours[:-1]], atol=1e-5)
    assert float(sched.init_noise_sigma) == pytest.approx((1 + 700.0 ** 2) ** 0.5, rel=1e-6)

    def model(scaled: torch.Tensor, c_noise: float) -> torch.Tensor:  # any smooth v-prediction
        return 0.3 * scaled + torch.sin(scaled * 2 + c_noise)

    noise = torch.randn(1, 4, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    x = noise * sched.init_noise_sigma
    for t in sched.timesteps:
        x = sched.step(model(sched.scale_model_input(x, t), float(t)), t, x).prev_sample

    def denoise(xt: torch.Tensor, sigma: float) -> torch.Tensor:
        _, _, c_in, c_noise = sampling.edm_scalings(sigma)
        return sampling.denoised_from_v(xt, model(xt * c_in, c_noise), sigma)

    ours_x = sampling.sample_euler(denoise, noise, ours)
    assert torch.allclose(ours_x, x, rtol=1e-4, atol=1e-4)


def test_guidance_grows_linearly_over_frames_and_frame_0_is_the_conditional_prediction():
    scales = sampling.frame_guidance(14, 1.0, 4.0)
    assert torch.allclose(scales, torch.linspace(1, 4, 14)) and scales[0] == 1 and scales[-1] == 4
    g = torch.Generator().manual_seed(0)
    uncond, cond = torch.randn(2, 14, 4, 3, 3, generator=g), torch.randn(2, 14, 4, 3, 3, generator=g)
    out = sampling.guide(uncond, cond, scales)
    assert torch.allclose(out[:, 0], cond[:, 0], atol=1e-6)
    assert torch.allclose(out[:, -1], uncond[:, -1] + 4 * (cond[:, -1] - uncond[:, -1]), atol=1e-5)
    assert torch.allclose(out[:, 5], uncond[:, 5] + float(scales[5]) * (cond[:, 5] - uncond[:, 5]), atol=1e-5)


def test_c_mot_is_the_trajectory_rasteriser_in_dy_dx_order():
    tracks = np.zeros((4, 1, 2), np.float32)
    tracks[:, 0] = [[10, 20], [14, 18], [18, 16], [22, 14]]  # dx = +4, dy = -2 per frame
    c_mot = motion_conditions(tracks, 40, 40, None, gaussian_kernel(11, 2.0), "dy,dx")
    assert c_mot.shape == (4, 2, 40, 40) and not c_mot[0].any()
    for t in range(1, 4):
        x, y = tracks[t, 0].astype(int)
        assert c_mot[t, 0, y, x] == pytest.approx(-2.0) and c_mot[t, 1, y, x] == pytest.approx(4.0)
        assert np.abs(c_mot[t, 1]).max() == pytest.approx(4.0)  # unnormalised kernel: the blob peaks at the step


def test_start_end_trajectories_interpolate_as_the_release():
    tracks = linear_tracks(np.array([[10.5, 20.0]]), np.array([[34.5, 8.0]]), 14)
    assert tracks.shape == (14, 1, 2)
    assert tracks[0, 0].tolist() == [10.5, 20.0]  # frame 0: the start itself
    assert tracks[1, 0].tolist() == [10.0, 20.0]  # frame 1: trunc(start) (a sub-pixel step)
    assert tracks[13, 0].tolist() == [34.0, 8.0]  # the last frame reaches trunc(end)
    assert tracks[7, 0].tolist() == [float(np.trunc(10.5 + 6 * 2.0)), float(np.trunc(20 - 6 * 1.0))]


def test_content_video_is_minus_one_inside_the_box_in_every_frame_only():
    clip = np.random.default_rng(0).integers(0, 256, (5, 24, 32, 3), dtype=np.uint8)
    region = region_map(np.array([[4, 6, 12, 18], [20, 0, 24, 4]]), 24, 32)
    assert region.sum() == 8 * 12 + 4 * 4
    video = content_video(clip, region)
    assert video.shape == (5, 3, 24, 32)
    inside = np.broadcast_to(region > 0, video.shape)
    assert (video[inside] == -1).all()
    expected = clip.astype(np.float32).transpose(0, 3, 1, 2) / 127.5 - 1
    assert np.array_equal(video[~inside], expected[~inside])


def _control_config(unet) -> dict:
    return dict(tiny_control(unet).config)


@pytest.mark.parametrize("which", ["unet", "control", "svd"])
def test_key_converter_is_a_bijection(unet, which):
    if which == "svd":  # SVD's full-size layout, built on the meta device (no memory)
        from diffusers import UNetSpatioTemporalConditionModel

        with torch.device("meta"):
            model = UNetSpatioTemporalConditionModel(num_frames=14)
    else:
        model = unet if which == "unet" else tiny_control(unet)
    config, keys = dict(model.config), list(model.state_dict())
    sgm = [diffusers_to_sgm(k, config) for k in keys]
    assert len(set(sgm)) == len(keys)  # every key once
    assert [sgm_to_diffusers(k, config) for k in sgm] == keys
    assert all(k.startswith(("input_blocks.", "middle_block.", "output_blocks.", "time_embed.", "label_emb.", "out.",
                             "controlnet_", "mask_embedding.", "weight_embedding.")) for k in sgm)
    if which == "svd":
        assert len(keys) == 1428 and "input_blocks.0.0.weight" in sgm and "out.2.weight" in sgm
        assert "output_blocks.2.1.conv.weight" in sgm and "output_blocks.5.2.conv.weight" in sgm


def test_converter_writes_diffusers_folders_from_an_sgm_checkpoint(unet, tmp_path):
    from diffusers import UNetSpatioTemporalConditionModel

    from stages.edit.revideo import convert
    from stages.edit.revideo.control import ReVideoControlModel

    control = tiny_control(unet, randomise=True)
    sgm = {"first_stage_model.decoder.conv_in.weight": torch.zeros(1)}  # parts the converter leaves alone
    for prefix, model in ((convert.UNET_PREFIX, unet), (convert.CONTROL_PREFIX, control)):
        sgm.update({prefix + diffusers_to_sgm(k, dict(model.config)): v for k, v in model.state_dict().items()})
        model.save_config(tmp_path / prefix)
    torch.save({"state_dict": sgm}, tmp_path / "model.ckpt")
    args = ["--ckpt", str(tmp_path / "model.ckpt"), "--out", str(tmp_path / "out"),
            "--unet-config", str(tmp_path / convert.UNET_PREFIX / "config.json"),
            "--controlnet-config", str(tmp_path / convert.CONTROL_PREFIX / "config.json")]
    assert convert.main(args) == 0
    for cls, name, model in ((UNetSpatioTemporalConditionModel, "unet", unet),
                             (ReVideoControlModel, "controlnet", control)):
        loaded = cls.from_pretrained(str(tmp_path / "out" / name)).state_dict()
        expected = model.state_dict()
        assert loaded.keys() == expected.keys() and all(torch.equal(loaded[k], expected[k]) for k in expected)
    del sgm[convert.CONTROL_PREFIX + "weight_embedding.conv_final.weight"]
    torch.save({"state_dict": sgm}, tmp_path / "model.ckpt")
    assert convert.main([*args[:3], str(tmp_path / "again"), *args[4:]]) == 1
    assert convert.main(["--ckpt", str(tmp_path / "missing.ckpt"), "--out", str(tmp_path / "x")]) == 2


def test_gpu_check_part_runs_at_smoke_size():
    from bench.revideo import gpu_part, run_part

    out = run_part(smoke=True, budget_s=120.0)
    assert [(r["shape"], r["cfg_batch"], r["steps"]) for r in out["runs"]] == [("4x32x32", True, 2),
                                                                              ("4x32x32", False, 2)]
    assert all(r["seconds"] > 0 and r["peak_gib"] > 0 for r in out["runs"]) and not out["skipped"]
    assert out["unet_mparams"] > out["control_mparams"] > 0 and "4x32x32" in out["headline"]
    reports = []
    assert gpu_part(True, {"budget_s": 0.0}, reports.append)["skipped"] == ["4x32x32 cfg_batch=True",
                                                                             "4x32x32 cfg_batch=False"]


def test_stage3_selector_gives_gradients_only_to_temporal_kv_and_safm(unet):
    from stages.edit.revideo.denoise import predict_v
    from stages.edit.revideo.training import stage3_parameters

    unet = tiny_svd_unet()  # its own copy: this test trains
    control = tiny_control(unet, randomise=True)
    params = stage3_parameters(unet, control)
    assert {k.rsplit(".", 2)[-2] for k in params if ".attn1." in k} == {"to_k", "to_v"}
    assert sum(k.startswith("controlnet.fusion.") for k in params) == 2 * (1 + 4 + 1 + 1)  # in, 4 blocks, out, final
    for model in (unet, control):
        model.requires_grad_(False)
    for p in params.values():
        p.requires_grad_(True)
    x, t, ctx, ids, motion, content, region = _inputs()
    predict_v(unet, control, x, 0.3, ctx, ids, motion, content, region).square().mean().backward()
    named = {**{f"unet.{n}": p for n, p in unet.named_parameters()},
             **{f"controlnet.{n}": p for n, p in control.named_parameters()}}
    with_grad = {n for n, p in named.items() if p.grad is not None and p.grad.abs().sum() > 0}
    assert with_grad == set(params)


def test_row_fields_arrive_as_json_text_or_parquet_lists():
    from stages.edit.revideo.conditions import parse_boxes, parse_trajectories

    nested = np.array([np.array([np.array([1.0, 2.0]), np.array([3.0, 4.0])], dtype=object)], dtype=object)
    paths, start_end = parse_trajectories(nested, 14)
    assert start_end and paths.tolist() == [[[1.0, 2.0], [3.0, 4.0]]]
    assert parse_trajectories("[[[1, 2], [3, 4]]]", 14)[0].tolist() == paths.tolist()
    box = [[4, 5, 20, 30]]
    assert parse_boxes(np.array(box[0])).tolist() == parse_boxes(json.dumps(box)).tolist() == box
