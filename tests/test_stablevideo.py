"""StableVideo with tiny random SD / ControlNet / DPT models on a real atlas fit of the synthetic sample.

One fit (64x64, 8 frames, 300 hash-grid iterations, ~17 s on one core) and one loaded actor are
shared by the module's tests.
"""

from __future__ import annotations

import io
import json
import os
import shutil

import cv2
import numpy as np
import pytest
import torch

from jobs.make_sample import make_sample
from pipeline import storage
from pipeline.config import ConfigError, from_dict
from pipeline.stage import RunContext, run_stage
from stages.atlas import AtlasConfig, AtlasStage
from stages.atlas.artifacts import encode_maps, load_fit
from stages.atlas.render import frame_psnr, render_frames
from stages.decode import DecodeConfig, DecodeStage
from stages.edit.stablevideo import StableVideoConfig, StableVideoStage, foreground, sampling
from stages.edit.stablevideo.stage import load_coverage
from tests.diffusion_fixtures import tiny_scheduler, tiny_unet
from tests.stablevideo_fixtures import TINY_STABLEVIDEO, save_tiny_stablevideo, tiny_controlnet
from tests.test_atlas import TEST_ATLAS

FIT = {**TEST_ATLAS, "iterations": 300, "previews": False}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models and a small fit: one torch thread is fastest on a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("stablevideo"))
    make_sample(os.path.join(root, "sample"), count=1, seed=3, method="atlas_edit", sizes=["64x64"])
    sample = os.path.join(root, "sample")
    clip = os.path.join(sample, sorted(d for d in os.listdir(sample) if os.path.isdir(os.path.join(sample, d)))[0])
    ctx = RunContext(output_url=os.path.join(root, "out"), cache_url=os.path.join(root, "cache"))
    row = run_stage(DecodeStage(DecodeConfig(stride=3, max_frames=8), ctx), {
        "video_uri": os.path.join(clip, "video.mp4"), "video_id": "synth", "job_id": "j1", "method": "stablevideo",
        "mask_uri": os.path.join(clip, "mask.png"), "prompt": "a red ball", "status": "pending"})
    row = run_stage(AtlasStage(from_dict(AtlasConfig, FIT), ctx), row)
    assert row["status"] == "pending", row.get("error")
    models = save_tiny_stablevideo(os.path.join(root, "models"))
    return row, ctx, models


@pytest.fixture(scope="module")
def stage(fitted):
    _, ctx, models = fitted
    st = StableVideoStage(StableVideoConfig(**models, **TINY_STABLEVIDEO), ctx)
    st.preflight()
    st.setup()
    yield st
    st.close()


def edit(stage, fitted, **fields) -> dict:
    row, _, _ = fitted
    out = run_stage(stage, {**row, "outputs": {}, **fields})
    return out


def text(seed: int) -> torch.Tensor:
    return torch.randn(1, 16, 32, generator=torch.Generator().manual_seed(seed))


def test_zero_initialised_controlnet_gives_output_identical_to_no_control():
    unet = tiny_unet().eval()
    hint = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    plain = sampling.controlled_eps(unet, None, None, text(1), text(2), 9.0)
    zero = sampling.controlled_eps(unet, tiny_controlnet(zero_init=True), hint, text(1), text(2), 9.0)
    acting = sampling.controlled_eps(unet, tiny_controlnet(1), hint, text(1), text(2), 9.0)
    with torch.no_grad():
        for t in (901, 1):
            assert torch.equal(zero(latents, t), plain(latents, t))
            assert not torch.allclose(acting(latents, t), plain(latents, t), atol=1e-4)


def test_sdedit_strength_0_returns_the_input_and_strength_1_equals_sampling_from_the_same_noise(stage, fitted):
    unet, control = stage.models["unet"], stage.models["controlnet_canny"]
    eps = sampling.controlled_eps(unet, control, torch.rand(1, 3, 32, 32), text(1), text(2), 9.0)
    g = torch.Generator().manual_seed(0)
    clean, noise = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 4, 8, 8, generator=g)
    sched = tiny_scheduler()
    assert torch.equal(sampling.sdedit(eps, clean, noise, sched, 4, 0.0), clean)
    assert torch.equal(sampling.sdedit(eps, clean, noise, sched, 4, 1.0), sampling.sample(eps, noise, sched, 4))
    half = sampling.sdedit(eps, clean, noise, sched, 4, 0.5)
    assert not torch.equal(half, clean) and not torch.equal(half, sampling.sample(eps, noise, sched, 4))
    # at the keyframe level: strength 0 hands the propagated keyframe back untouched
    source = np.random.default_rng(0).integers(0, 256, (20, 24, 3), dtype=np.uint8)
    start = np.random.default_rng(1).integers(0, 256, (20, 24, 3), dtype=np.uint8)
    cfg = StableVideoConfig(**{**TINY_STABLEVIDEO, "strength": 0.0})
    out = foreground.edit_keyframe(stage, source, start, "a ball", cfg, torch.Generator().manual_seed(0))
    assert out is start


def test_unedited_atlases_rerender_the_atlas_stage_reconstruction(fitted, monkeypatch):
    row, ctx, _ = fitted
    fit = load_fit(row["atlas_dir"])
    frames = row["frames"]
    plain = render_frames(fit.fg_atlas, fit.bg_atlas, fit.uv_fg, fit.uv_bg, fit.alpha)
    rendered_db = float(np.mean(frame_psnr(plain, frames)))
    assert rendered_db > row["atlas_psnr"] - 3.0 and rendered_db > 25.0, (rendered_db, row["atlas_psnr"])
    # identity keyframe edits (each keyframe's own crop) through crop -> scatter -> median -> render
    monkeypatch.setattr(foreground, "edit_keyframe", lambda diffuser, source, start, *a: source)
    cfg = StableVideoConfig(**TINY_STABLEVIDEO)
    fg = foreground.edit_foreground(None, frames, fit, [0, 3, 7], "x", cfg, torch.Generator())
    again = render_frames(fg.atlas, fit.bg_atlas, fit.uv_fg, fit.uv_bg, fit.alpha)
    core = fit.alpha >= 0.99
    err = (again.astype(np.float64) - frames.astype(np.float64))[core] / 255.0
    assert core.sum() > 500 and 10 * np.log10(1.0 / np.mean(err ** 2)) > 25.0
    assert np.array_equal(again[fit.alpha == 0], plain[fit.alpha == 0])


def test_empty_bg_prompt_keeps_the_background_bit_identical(stage, fitted):
    row, _, _ = fitted
    fit = load_fit(row["atlas_dir"])
    out = edit(stage, fitted)
    assert out["status"] == "pending", out.get("error")
    assert "edited_bg_atlas" not in out["outputs"]
    fg_png = cv2.cvtColor(cv2.imread(out["outputs"]["edited_fg_atlas"]), cv2.COLOR_BGR2RGB)
    expected = render_frames(fg_png, fit.bg_atlas, fit.uv_fg, fit.uv_bg, fit.alpha)
    assert np.array_equal(out["edited_frames"], expected)
    assert not np.array_equal(fg_png, fit.fg_atlas)
    # with a bg_prompt the covered part of the background atlas is re-painted, the rest kept
    painted = edit(stage, fitted, bg_prompt="a snowy field")
    assert painted["status"] == "pending", painted.get("error")
    bg = cv2.cvtColor(cv2.imread(painted["outputs"]["edited_bg_atlas"]), cv2.COLOR_BGR2RGB)
    _, cover = load_coverage(row["atlas_dir"])
    ys, xs = np.nonzero(cover)
    box = np.zeros_like(cover)
    box[ys.min():ys.max() + 1, xs.min():xs.max() + 1] = True
    assert np.abs(bg[cover].astype(int) - fit.bg_atlas[cover].astype(int)).mean() > 5
    assert np.array_equal(bg[~box], fit.bg_atlas[~box])
    fg_again = cv2.cvtColor(cv2.imread(painted["outputs"]["edited_fg_atlas"]), cv2.COLOR_BGR2RGB)
    assert np.array_equal(fg_again, fg_png)  # the foreground has its own generator: unchanged
    keyframes = [k for k in out["outputs"] if k.startswith("keyframe_")]
    assert len(keyframes) == 3 and all(os.path.getsize(out["outputs"][k]) > 0 for k in keyframes)


def test_deterministic_under_a_seed_and_the_seed_matters(stage, fitted):
    a, b = edit(stage, fitted, keyframes="[1, 6]"), edit(stage, fitted, keyframes="[1, 6]")
    c = edit(stage, fitted, keyframes="[1, 6]", params={"seed": 1})
    assert a["status"] == b["status"] == c["status"] == "pending", (a.get("error"), c.get("error"))
    assert np.array_equal(a["edited_frames"], b["edited_frames"])
    assert not np.array_equal(a["edited_frames"], c["edited_frames"])
    assert sorted(k for k in a["outputs"] if k.startswith("keyframe_")) == ["keyframe_1", "keyframe_6"]


def test_aggregation_net_mode_refines_the_median(stage, fitted):
    median = edit(stage, fitted, keyframes="[0, 4, 7]")
    net = edit(stage, fitted, keyframes="[0, 4, 7]", params={"aggregate": "net", "net_iterations": 20})
    assert net["status"] == "pending", net.get("error")
    assert not np.array_equal(net["edited_frames"], median["edited_frames"])


def test_bad_rows_are_errors_naming_the_field(stage, fitted):
    from stages.edit.stablevideo.stage import StableVideoStage as S

    no_prompt = edit(stage, fitted, prompt="  ")
    assert no_prompt["status"] == "error" and no_prompt["error_stage"] == "edit:stablevideo"
    assert no_prompt["error"] == "RowFieldError: method 'stablevideo' needs row field 'prompt' (the foreground edit)"
    outside = edit(stage, fitted, keyframes="[2, 8]")
    assert outside["error"] == "RowFieldError: keyframes: frame 8 is outside the clip's 8 frames (0..7)"
    # such rows never reach the atlas fit
    row = fitted[0]
    assert S.row_needs({**row, "prompt": ""}) == () and S.row_needs({**row, "keyframes": "[9]"}) == ()
    assert S.row_needs(row) == ("atlas",)
    refused = edit(stage, fitted, params={"controlnet_depth": "/elsewhere"})
    assert refused["status"] == "error" and "may not override 'controlnet_depth'" in refused["error"]


def test_an_atlas_without_foreground_is_a_row_error(stage, fitted, tmp_path):
    row, _, _ = fitted
    fit = load_fit(row["atlas_dir"])
    faint = str(tmp_path / "faint-fit")
    shutil.copytree(row["atlas_dir"], faint)
    fg_cov, bg_cov = load_coverage(row["atlas_dir"])
    maps = encode_maps(fit.uv_fg, fit.uv_bg, np.minimum(fit.alpha, 0.9), fg_cov, bg_cov)
    storage.write_bytes(os.path.join(faint, "maps.npz"), maps)
    out = edit(stage, fitted, atlas_dir=faint)
    assert out["status"] == "error" and out["error"].startswith("NoForegroundError: the atlas alpha has no "
                                                                "foreground pixel (alpha >= 0.99) in any of 8 frames")
    # a keyframe the row names that has no foreground
    alpha = fit.alpha.copy()
    alpha[5] = 0.0
    storage.write_bytes(os.path.join(faint, "maps.npz"), encode_maps(fit.uv_fg, fit.uv_bg, alpha, fg_cov, bg_cov))
    out = edit(stage, fitted, atlas_dir=faint, keyframes="[1, 5]")
    assert out["error"] == "NoForegroundError: keyframes: frame 5 of the atlas has no foreground (alpha >= 0.99)"
    with np.load(io.BytesIO(storage.read_bytes(os.path.join(faint, "maps.npz")))) as z:
        assert z["alpha"].shape == fit.alpha.shape


def test_preflight_names_a_missing_controlnet(fitted, tmp_path):
    _, ctx, models = fitted
    bad = StableVideoStage(StableVideoConfig(**{**models, "controlnet_depth": str(tmp_path / "none")},
                                             **TINY_STABLEVIDEO), ctx)
    with pytest.raises(ConfigError, match="controlnet_depth"):
        bad.preflight()


def test_a_windowed_atlas_is_a_row_error_before_any_model_work(fitted, tmp_path):
    row, ctx, models = fitted
    windowed = str(tmp_path / "windowed-fit")
    for name in ("w000", "w001"):
        shutil.copytree(row["atlas_dir"], os.path.join(windowed, name))
    meta = {"shape": [8, 64, 64], "psnr_mean": 30.0, "mask_source": "manifest",
            "windows": [{"start": 0, "stop": 5, "dir": "w000"}, {"start": 3, "stop": 8, "dir": "w001"}]}
    storage.write_bytes(os.path.join(windowed, "meta.json"), json.dumps(meta).encode())
    cold = StableVideoStage(StableVideoConfig(**models, **TINY_STABLEVIDEO), ctx)  # no setup: no models loaded
    out = run_stage(cold, {**row, "outputs": {}, "atlas_dir": windowed})
    assert out["status"] == "error" and out["error"].startswith("RowFieldError: method 'stablevideo' needs one atlas")
    assert "2 overlapping windows (frames 0-4, 3-7)" in out["error"] and "decode.max_frames" in out["error"]
    assert not cold.models
