"""Depth stage: tiny DPTs built from config and loaded through from_pretrained, geometry, caching, preflight."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch

from jobs import sample_data
from pipeline import storage
from pipeline.config import ConfigError, Resources, from_dict
from pipeline.stage import STATUS_ERROR, RunContext, run_stages_inline
from stages.depth import (
    DepthConfig,
    DepthEstimator,
    DepthStage,
    canvas_meta,
    colorize,
    denormalise,
    load_depth,
    map_back,
    normalise,
    prepare_inputs,
    resolve_model,
)

SIZES = {"square": (40, 40), "landscape": (36, 84), "portrait": (84, 36)}  # (H, W)


def tiny_dpt_config(hybrid: bool = False):
    """A DPT a few channels wide (ViT-style, or hybrid with a 3-stage BiT stem), 32x32 canvas."""
    from transformers import DPTConfig

    common = {"hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 2, "intermediate_size": 37,
              "image_size": 32, "neck_hidden_sizes": [8, 16, 32, 32], "fusion_hidden_size": 16,
              "backbone_out_indices": [0, 1, 2, 3], "use_auxiliary_head": False}
    if not hybrid:
        return DPTConfig(patch_size=8, reassemble_factors=[4, 2, 1, 0.5], **common)
    stem = {"global_padding": "same", "layer_type": "bottleneck", "depths": [1, 1, 1], "hidden_sizes": [8, 16, 32],
            "embedding_size": 8, "num_groups": 4, "out_features": ["stage1", "stage2", "stage3"],
            "embedding_dynamic_padding": True}
    return DPTConfig(is_hybrid=True, patch_size=16, reassemble_factors=[1, 1, 1, 0.5],
                     backbone_featmap_shape=[1, 32, 2, 2], backbone_config=stem, **common)


def save_tiny_dpt(path, hybrid: bool = False, seed: int = 0) -> str:
    """Build a tiny DPTForDepthEstimation with a fixed seed and save it (and its processor) to ``path``."""
    from transformers import DPTForDepthEstimation
    from transformers.models.dpt.image_processing_pil_dpt import DPTImageProcessorPil

    torch.manual_seed(seed)
    model = DPTForDepthEstimation(tiny_dpt_config(hybrid)).eval()
    model.save_pretrained(str(path))
    DPTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(str(path))
    return str(path)


@pytest.fixture(scope="module")
def vit_dir(tmp_path_factory) -> str:
    return save_tiny_dpt(tmp_path_factory.mktemp("dpt_vit"))


@pytest.fixture(scope="module")
def hybrid_dir(tmp_path_factory) -> str:
    return save_tiny_dpt(tmp_path_factory.mktemp("dpt_hybrid"), hybrid=True)


def _frames(t: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (t, h, w, 3), dtype=np.uint8)


# --- the model, loaded through from_pretrained --------------------------------------------------

def test_saved_tiny_model_loads_with_the_same_weights(vit_dir):
    from transformers import DPTForDepthEstimation

    torch.manual_seed(0)
    built = DPTForDepthEstimation(tiny_dpt_config()).eval()
    est = DepthEstimator.load(vit_dir, device="cpu")
    assert est.input_size == 32 and est.dtype == torch.float32 and not est.model.training
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        assert torch.allclose(built(pixel_values=x).predicted_depth, est.model(pixel_values=x).predicted_depth)


@pytest.mark.parametrize("kind", ["vit", "hybrid"])
@pytest.mark.parametrize("aspect", list(SIZES))
@pytest.mark.parametrize("mode", ["pad", "stretch"])
def test_output_shapes_for_any_aspect(request, kind, aspect, mode):
    est = _estimator(request.getfixturevalue(f"{kind}_dir"), mode)
    h, w = SIZES[aspect]
    depth = est.predict(_frames(3, h, w), batch_size=2)
    assert depth.shape == (3, h, w) and depth.dtype == np.float32 and np.isfinite(depth).all()
    single = est.predict_image(_frames(1, h, w)[0])
    assert single.shape == (h, w) and single.dtype == np.float32


_ESTIMATORS: dict = {}


def _estimator(path: str, mode: str = "pad") -> DepthEstimator:
    key = (path, mode)
    if key not in _ESTIMATORS:
        _ESTIMATORS[key] = DepthEstimator.load(path, device="cpu", resize_mode=mode)
    return _ESTIMATORS[key]


@pytest.mark.parametrize("kind", ["vit", "hybrid"])
def test_batch_gives_the_same_result_as_frame_by_frame(request, kind):
    est = _estimator(request.getfixturevalue(f"{kind}_dir"))
    frames = _frames(5, 36, 84, seed=2)
    batched = est.predict(frames, batch_size=4)
    single = np.stack([est.predict(f[None], batch_size=1)[0] for f in frames])
    scale = float(np.abs(single).max()) or 1.0
    np.testing.assert_allclose(batched, single, rtol=0, atol=1e-5 * scale)
    np.testing.assert_allclose(est.predict_image(frames[3]), single[3], rtol=0, atol=1e-5 * scale)


def test_pixel_normalisation_matches_the_image_processor(vit_dir):
    est = _estimator(vit_dir)
    canvas, _ = prepare_inputs(_frames(2, 50, 70), 32)
    reference = est.processor(images=list(canvas), do_resize=False, return_tensors="pt")["pixel_values"]
    assert torch.allclose(est.pixel_values(canvas), reference.float(), atol=1e-5)


def test_hybrid_rejects_other_input_sizes_at_config_time(hybrid_dir, vit_dir):
    with pytest.raises(ConfigError, match="accepts only 32x32"):
        DepthEstimator.load(hybrid_dir, input_size=64)
    with pytest.raises(ConfigError, match="multiple of the model's patch size 8"):
        DepthEstimator.load(vit_dir, input_size=36)
    assert DepthEstimator.load(vit_dir, input_size=48).predict(_frames(1, 20, 30)).shape == (1, 20, 30)


# --- geometry and normalisation, with a deterministic stand-in model ---------------------------

class BrightnessDepth(torch.nn.Module):
    """Stand-in with DPT's interface: inverse depth = mean brightness, predicted at half resolution."""

    def forward(self, pixel_values):
        grey = pixel_values.float().mean(dim=1, keepdim=True)
        half = torch.nn.functional.avg_pool2d(grey, 2)
        return SimpleNamespace(predicted_depth=(half.squeeze(1) + 1.0) * 10.0)


def _standin(mode: str = "pad", size: int = 64) -> DepthEstimator:
    return DepthEstimator(BrightnessDepth(), None, input_size=size, resize_mode=mode)


def _two_planes(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """A near plane (a rectangle at 2 m) in front of a far one (6 m), as brightness = inverse depth."""
    depth = np.full((h, w), 6.0, np.float32)
    depth[h // 4: h // 2 + h // 8, w // 5: w // 2] = 2.0
    image = np.repeat((255 * 2.0 / depth).astype(np.uint8)[..., None], 3, axis=-1)
    return image, depth


@pytest.mark.parametrize("aspect", list(SIZES))
@pytest.mark.parametrize("mode", ["pad", "stretch"])
def test_depth_ordering_and_alignment_on_two_planes(aspect, mode):
    h, w = (s * 3 for s in SIZES[aspect])
    image, depth = _two_planes(h, w)
    norm, stats = normalise(_standin(mode).predict_image(image))
    near = depth < 4
    kernel = np.ones((9, 9), np.uint8)  # away from the edge, which the half-resolution stand-in blurs
    inside, outside = cv2.erode(near.astype(np.uint8), kernel) > 0, cv2.dilate(near.astype(np.uint8), kernel) == 0
    assert norm[inside].mean() > 0.9 and norm[outside].mean() < 0.1  # nearer = larger inverse depth
    # the boundary lands where it is in the frame: thresholding recovers the near plane
    predicted = norm > 0.5
    iou = (predicted & near).sum() / (predicted | near).sum()
    assert iou > 0.9, f"IoU {iou:.3f}"
    assert stats["max"] > stats["min"] and norm.dtype == np.float16


@pytest.mark.parametrize("preset", ["landscape", "portrait"])
def test_ordering_follows_the_sample_ground_truth(preset):
    clip = sample_data.generate_preset(preset, seed=1)
    inv = 1.0 / clip.depth[::6]  # [T, H, W], two layers
    frames = np.repeat((255 * inv / inv.max()).astype(np.uint8)[..., None], 3, axis=-1)
    norm, _ = normalise(_standin(size=96).predict(frames, batch_size=3))
    assert norm.shape == clip.depth[::6].shape
    fg = clip.depth[::6] < sample_data.BG_DEPTH_M - 1e-3
    assert float(norm[fg].mean()) > float(norm[~fg].mean()) + 0.5
    corr = np.corrcoef(norm.astype(np.float32).ravel(), inv.ravel())[0, 1]
    assert corr > 0.95


def test_canvas_geometry_and_map_back_undo_each_other():
    meta = canvas_meta(100, 200, 32, "pad")
    assert (meta.top, meta.left, meta.inner_h, meta.inner_w) == (8, 0, 16, 32)
    assert (canvas_meta(200, 100, 32, "pad").left, canvas_meta(200, 100, 32, "pad").inner_w) == (8, 16)
    assert canvas_meta(100, 200, 32, "stretch").inner_h == 32
    yy, xx = np.mgrid[0:60, 0:90].astype(np.float32)
    smooth = ((np.sin(xx / 14) + np.cos(yy / 11) + 2) * 60).astype(np.uint8)
    frames = np.repeat(smooth[None, ..., None], 3, axis=-1)
    canvas, meta = prepare_inputs(frames, 48, "pad")
    assert canvas.shape == (1, 48, 48, 3)
    back = map_back(canvas[..., 0].astype(np.float32), meta)
    assert back.shape == (1, 60, 90)
    assert np.abs(back[0] - smooth).mean() < 3.0
    with pytest.raises(ValueError, match="uint8"):
        prepare_inputs(frames.astype(np.float32), 48)


def test_normalise_is_invertible_and_rejects_bad_values():
    raw = np.random.default_rng(0).uniform(100, 3000, (4, 8, 9)).astype(np.float32)
    norm, stats = normalise(raw)
    assert norm.dtype == np.float16 and norm.min() == 0 and norm.max() == 1
    assert stats["min"] == pytest.approx(raw.min()) and stats["p98"] <= stats["max"]
    np.testing.assert_allclose(denormalise(norm, stats), raw, atol=2e-3 * (raw.max() - raw.min()))
    flat, fstats = normalise(np.full((2, 3, 3), 5.0))
    assert not flat.any() and fstats["scale"] == 0
    with pytest.raises(ValueError, match="non-finite"):
        normalise(np.array([[np.nan, 1.0]]))


def test_colorize_makes_near_bright():
    ramp = np.linspace(0, 1, 16, dtype=np.float32)[None, None, :].repeat(4, axis=1)
    rgb = colorize(ramp)
    assert rgb.shape == (1, 4, 16, 3) and rgb.dtype == np.uint8
    assert rgb[0, 0, -1].astype(int).sum() > rgb[0, 0, 0].astype(int).sum() + 300
    with pytest.raises(ValueError, match="unknown colormap"):
        colorize(ramp, "rainbow")


# --- the stage: artifacts, cache, previews, errors ------------------------------------------------

def _context(tmp_path) -> RunContext:
    return RunContext(output_url=str(tmp_path / "out"), cache_url=str(tmp_path / "cache"))


def _row(job: str, frames: np.ndarray) -> dict:
    return {"job_id": job, "video_id": f"vid-{job}", "status": "pending", "frames": frames,
            "content_hash": "ab" * 32, "fps": 12.0}


def test_stage_writes_artifacts_and_hits_the_cache(vit_dir, tmp_path):
    context = _context(tmp_path)
    config = DepthConfig(model=vit_dir, batch_size=2, keep_array=True, preview_mp4=True)
    frames = _frames(5, 36, 84)
    [row] = run_stages_inline([DepthStage(config, context)], [_row("a", frames)])
    assert row["status"] == "pending", row.get("error")
    assert row["depth_cached"] is False and row["depth"].shape == (5, 36, 84) and row["depth"].dtype == np.float16
    outputs = row["outputs"]
    depth = load_depth(outputs["depth"])
    stats = json.loads(storage.read_bytes(outputs["depth_stats"]))
    np.testing.assert_array_equal(depth, row["depth"])
    assert stats["kind"] == "relative_inverse_depth" and stats["input_size"] == 32
    assert (row["depth_min"], row["depth_max"]) == (stats["min"], stats["max"])
    assert outputs["depth"].startswith(storage.join_url(context.cache_url, "depth", "abab"))
    assert outputs["depth_preview"].endswith("a-depth.gif") and os.path.getsize(outputs["depth_preview"]) > 100
    assert os.path.getsize(outputs["depth_video"]) > 100
    stamp = os.stat(outputs["depth"]).st_mtime_ns, os.stat(outputs["depth"]).st_ino

    # a fresh actor (new setup) finds the artifact and does not rewrite it
    [again] = run_stages_inline([DepthStage(config, context)], [_row("b", frames)])
    assert again["depth_cached"] is True and again["outputs"]["depth"] == outputs["depth"]
    assert (os.stat(outputs["depth"]).st_mtime_ns, os.stat(outputs["depth"]).st_ino) == stamp
    np.testing.assert_array_equal(again["depth"], depth)
    # other decoded frames (another stride, say) are another artifact; cache=False recomputes
    [other] = run_stages_inline([DepthStage(config, context)], [_row("c", frames[::2])])
    assert other["depth_cached"] is False and other["outputs"]["depth"] != outputs["depth"]
    nocache = DepthConfig(model=vit_dir, cache=False, preview=False)
    [fresh] = run_stages_inline([DepthStage(nocache, context)], [_row("d", frames)])
    assert fresh["depth_cached"] is False and "depth_preview" not in fresh["outputs"] and "depth" not in fresh


def test_bad_frames_are_a_row_error_and_other_rows_go_on(vit_dir, tmp_path):
    stage = DepthStage(DepthConfig(model=vit_dir, preview=False), _context(tmp_path))
    rows = [_row("bad", np.zeros((2, 8, 8), np.uint8)), _row("good", _frames(2, 20, 20))]
    bad, good = run_stages_inline([stage], rows)
    assert bad["status"] == STATUS_ERROR and bad["error_stage"] == "depth"
    assert bad["error"].startswith("ValueError: frames must be uint8 [T, H, W, 3]")
    assert good["status"] == "pending" and "depth" in good["outputs"]


# --- configuration and preflight ----------------------------------------------------------------

def _preflight(tmp_path, **kw) -> None:
    DepthStage(DepthConfig(**kw), _context(tmp_path)).preflight()


def test_preflight_accepts_a_good_local_model(vit_dir, hybrid_dir, tmp_path):
    _preflight(tmp_path, model=vit_dir)
    _preflight(tmp_path, model=hybrid_dir, input_size=32)
    assert resolve_model(vit_dir).fingerprint.startswith("local:")


def test_preflight_rejects_missing_or_invalid_models(vit_dir, hybrid_dir, tmp_path):
    cases = {}
    cases["no such directory"] = str(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    cases["has no config.json"] = str(tmp_path / "empty")
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    cases["not a DPT"] = str(tmp_path / "bert")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    cases["unreadable config.json"] = str(tmp_path / "broken")
    (tmp_path / "badfield").mkdir()
    (tmp_path / "badfield" / "config.json").write_text(json.dumps({"model_type": "dpt", "readout_type": "nope"}))
    (tmp_path / "badfield" / "model.safetensors").write_bytes(b"x")
    cases["invalid DPT config.json"] = str(tmp_path / "badfield")
    (tmp_path / "noweights").mkdir()
    (tmp_path / "noweights" / "config.json").write_text(open(os.path.join(vit_dir, "config.json")).read())
    cases["no weights file"] = str(tmp_path / "noweights")
    cases["cannot be resolved"] = "no-such-org/no-such-dpt-model"  # hub id, HF_HUB_OFFLINE=1 in tests
    for message, ref in cases.items():
        with pytest.raises(ConfigError, match=message):
            _preflight(tmp_path, model=ref)
    with pytest.raises(ConfigError, match="accepts only"):
        _preflight(tmp_path, model=hybrid_dir, input_size=384)
    with pytest.raises(ConfigError, match="num_gpus"):
        _preflight(tmp_path, model=vit_dir, device="cuda")


def test_config_values_are_checked():
    for bad in ({"batch_size": 0}, {"dtype": "int8"}, {"device": "tpu"}, {"resize_mode": "crop"},
                {"input_size": 8}, {"colormap": "rainbow"}, {"unknown": 1}):
        with pytest.raises(ConfigError):
            from_dict(DepthConfig, bad, "stages.depth")
    config = from_dict(DepthConfig, {"model": "m", "resources": {"num_gpus": 1, "max_actors": 4}}, "stages.depth")
    assert config.resources == Resources(num_cpus=1, num_gpus=1, min_actors=1, max_actors=4)


def test_job_with_a_missing_model_exits_2_before_any_work(tmp_path):
    from jobs import edit_videos

    manifest = tmp_path / "in.csv"
    manifest.write_text(f"video_uri\n{tmp_path / 'clip.mp4'}\n")
    out = tmp_path / "out"
    code = edit_videos.main(["--manifest", str(manifest), "--output", str(out),
                             "--set", "stages.depth.enabled=true", "--set", f"stages.depth.model={tmp_path / 'nope'}"])
    assert code == 2
    assert not (out / "manifest").exists() and not (out / "report.html").exists()


def test_production_config_enables_depth_on_a_gpu_pool():
    from jobs import edit_videos
    from pipeline.config import load_config

    path = os.path.join(os.path.dirname(__file__), "..", "jobs", "configs", "depth.yaml")
    config = load_config(edit_videos.EditJobConfig, path)
    specs = edit_videos.build_specs(config, {config.run.method}, {})
    [spec] = [s for s in specs if s.stage_cls is DepthStage]
    assert spec.config.model == "Intel/dpt-hybrid-midas" and spec.config.resources.num_gpus >= 1
    assert spec.config.input_size == 384 and spec.config.dtype == "float16"
