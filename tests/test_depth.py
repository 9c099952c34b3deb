"""Depth stage: tiny DPTs built from config and loaded through from_pretrained, geometry, caching, preflight."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from pipeline import storage
from pipeline.config import ConfigError, Resources, from_dict
from pipeline.stage import STATUS_ERROR, RunContext, run_stages_inline
from stages.depth import (
    DepthConfig,
    DepthEstimator,
    DepthStage,
    load_depth,
    prepare_inputs,
    resolve_model,
)
from stages.depth.model import dtype_keyword

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


def test_tiny_dpt_depth_shapes_range_and_letterbox_round_trip(vit_dir):
    """A real (tiny, random) DPT: output shape and range, and the letterbox geometry round trip.

    The depth of a 36x84 frame must equal the depth predicted for its own 32x32 letterbox canvas
    (fed as a square frame, which the model sees unchanged), cropped to the rows the frame
    occupies and resized back to 36x84: the border the letterbox adds never leaks into the frame.
    """
    import torch.nn.functional as F

    est = DepthEstimator.load(vit_dir, device="cpu", resize_mode="pad")
    with torch.no_grad():  # a random DPT predicts ~1e-9: give its last layer a scale and an offset of O(1)
        est.model.head.head[4].weight.mul_(1e8)
        est.model.head.head[4].bias.fill_(2.0)
    frames = _frames(2, 36, 84, seed=4)
    depth = est.predict(frames, batch_size=2)
    assert depth.shape == (2, 36, 84) and depth.dtype == np.float32 and np.isfinite(depth).all()
    assert depth.min() >= 0.0 and depth.max() > depth.min()  # DPT's head ends in a ReLU: inverse depth >= 0
    canvas, meta = prepare_inputs(frames, 32, "pad")
    assert (meta.top, meta.inner_h, meta.left, meta.inner_w) == (9, 14, 0, 32)
    square = est.predict(canvas, batch_size=2)  # [2, 32, 32]: no letterbox, no resize
    inner = torch.from_numpy(square[:, None, meta.top:meta.top + meta.inner_h])
    back = F.interpolate(inner, size=(36, 84), mode="bicubic", align_corners=False)[:, 0].numpy()
    back = np.clip(back, square.min(axis=(1, 2))[:, None, None], square.max(axis=(1, 2))[:, None, None])
    # equal to round-off, except the few pixels at a frame's predicted extremes, where map_back's
    # clamp (against bicubic overshoot) binds on the canvas in one path and on the frame in the other
    diff = np.abs(depth - back)
    assert np.quantile(diff, 0.99) < 1e-5 * float(np.abs(depth).max())
    assert diff.max() < 0.05 * float(depth.max() - depth.min())
    # and the border rows do differ from the frame's rows (so the crop matters)
    assert np.abs(square[:, :meta.top].mean() - square[:, meta.top:meta.top + meta.inner_h].mean()) > 0


def test_dtype_keyword_follows_the_transformers_version():
    assert dtype_keyword("4.44.2") == "torch_dtype" and dtype_keyword("4.55.4") == "torch_dtype"
    assert dtype_keyword("4.56.0") == "dtype" and dtype_keyword("5.0.0rc1") == "dtype"


@pytest.mark.parametrize("ignore_keyword", [False, True])
def test_half_precision_load_gives_half_weights(vit_dir, monkeypatch, ignore_keyword):
    """fp16 weights for fp16 inputs, even when the installed transformers ignores the dtype keyword."""
    from transformers import DPTForDepthEstimation

    if ignore_keyword:  # an older transformers: the model comes back float32
        original = DPTForDepthEstimation.from_pretrained.__func__

        def old_from_pretrained(cls, *args, **kwargs):
            kwargs.pop("dtype", None)
            kwargs.pop("torch_dtype", None)
            return original(cls, *args, **kwargs)

        monkeypatch.setattr(DPTForDepthEstimation, "from_pretrained", classmethod(old_from_pretrained))
    est = DepthEstimator.load(vit_dir, device="cpu", dtype="bfloat16")
    assert {p.dtype for p in est.model.parameters()} == {torch.bfloat16} and est.dtype == torch.bfloat16
    depth = est.predict(_frames(1, 20, 30))
    assert depth.dtype == np.float32 and np.isfinite(depth).all()


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
