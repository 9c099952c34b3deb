"""The atlas stage and the atlas_edit method on the synthetic sample, whose layers are known.

One small fit (64x64, 12 frames, 500 hash-grid iterations) is shared by the tests of this
module; it takes about 15 s on two CPU cores.
"""

from __future__ import annotations

import io
import json
import os

import cv2
import numpy as np
import pytest

from jobs.make_sample import load_gt, make_sample
from pipeline import storage
from pipeline.config import from_dict
from pipeline.stage import RunContext, run_stage
from stages.atlas import AtlasConfig, AtlasStage
from stages.atlas.fit import AtlasFitError, check_losses
from stages.decode import DecodeConfig, DecodeStage
from stages.edit.atlas_edit import AtlasEditConfig, AtlasEditStage

STRIDE, FRAMES = 3, 12
# test-size settings: small grid and MLPs, short schedule (the paper's phases scaled down)
TEST_ATLAS = {
    "iterations": 500, "batch_pixels": 1024, "atlas_resolution": 128, "previews": True,
    "hash": {"levels": 8, "log2_table_size": 14, "hidden": 32, "layers": 1, "mapping_levels": 3},
    "schedule": {"global_rigidity_until": 100, "bootstrap_until": 250},
}
# Reconstruction floor: a 500-iteration fit of this clip reaches ~31-33 dB; 26 dB is far above
# what a layer-less blur of the clip gives (~20 dB for a 3x3 box filter of these textures) and
# below the fit's run-to-run spread.
PSNR_FLOOR_DB = 26.0


def sample_clip(out: str) -> dict:
    """One 64x64 synthetic atlas_edit sample written under ``out``: its paths and ground truth."""
    make_sample(out, count=1, seed=3, method="atlas_edit", sizes=["64x64"])
    name = sorted(d for d in os.listdir(out) if os.path.isdir(os.path.join(out, d)))[0]
    base = os.path.join(out, name)
    return {"dir": base, "video": os.path.join(base, "video.mp4"), "mask": os.path.join(base, "mask.png"),
            "overlay": os.path.join(base, "overlay.png"), "gt": load_gt(os.path.join(base, "gt.npz")),
            "root": out}


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return sample_clip(str(tmp_path_factory.mktemp("atlas-sample")))


def context(root: str) -> RunContext:
    return RunContext(output_url=os.path.join(root, "out"), cache_url=os.path.join(root, "cache"))


def decoded(clip, ctx) -> dict:
    stage = DecodeStage(DecodeConfig(stride=STRIDE, max_frames=FRAMES), ctx)
    row = run_stage(stage, {"video_uri": clip["video"], "video_id": "synth", "job_id": "j1",
                            "method": "atlas_edit", "mask_uri": clip["mask"], "overlay_uri": clip["overlay"],
                            "status": "pending"})
    assert row["status"] == "pending", row.get("error")
    return row


@pytest.fixture(scope="module")
def fitted(clip):
    ctx = context(clip["root"])
    stage = AtlasStage(from_dict(AtlasConfig, TEST_ATLAS), ctx)
    row = run_stage(stage, decoded(clip, ctx))
    assert row["status"] == "pending", row.get("error")
    return row, ctx


def gt_masks(clip) -> np.ndarray:
    return clip["gt"]["masks"][::STRIDE][:FRAMES]


def test_alpha_matches_true_mask(fitted, clip):
    row, ctx = fitted
    with np.load(io.BytesIO(storage.read_bytes(storage.join_url(row["atlas_dir"], "maps.npz")))) as z:
        alpha = z["alpha"].astype(np.float32)
    truth = gt_masks(clip)
    pred = alpha > 0.5
    iou = (pred & truth).sum() / (pred | truth).sum()
    assert iou >= 0.8, iou


def test_reconstruction_psnr_and_outputs(fitted):
    row, ctx = fitted
    assert row["atlas_psnr"] > PSNR_FLOOR_DB
    psnr = json.loads(storage.read_bytes(row["outputs"]["atlas_psnr"]))
    assert len(psnr["per_frame_db"]) == FRAMES and min(psnr["per_frame_db"]) > PSNR_FLOOR_DB - 2
    for key in ("atlas_fg_atlas", "atlas_bg_atlas", "atlas_weights", "atlas_preview_atlases",
                "atlas_preview_alpha", "atlas_preview_reconstruction"):
        assert storage.exists(row["outputs"][key]), key
    fg = cv2.imread(row["outputs"]["atlas_fg_atlas"])
    assert fg.shape == (128, 128, 3)
    assert row["atlas_mask_source"] == "manifest" and row["atlas_cached"] is False


def test_second_run_hits_cache(fitted, clip):
    row, ctx = fitted
    stage = AtlasStage(from_dict(AtlasConfig, {**TEST_ATLAS, "resources": {"num_cpus": 2}}), ctx)
    again = run_stage(stage, decoded(clip, ctx))
    assert again["atlas_cached"] is True and again["atlas_dir"] == row["atlas_dir"]
    assert again["stage_seconds"]["atlas"] < 5.0
    # a different fit config is a different cache entry
    other = AtlasStage(from_dict(AtlasConfig, {**TEST_ATLAS, "iterations": 499}), ctx)
    from stages.atlas.stage import fit_key
    assert fit_key(other.config, again["frames"], "x") != fit_key(stage.config, again["frames"], "x")


def edit_row(fitted, clip, params: dict | None = None, **fields) -> dict:
    row, ctx = fitted
    stage = AtlasEditStage(AtlasEditConfig(), ctx)
    base = decoded(clip, ctx)
    base.update(atlas_dir=row["atlas_dir"], params=params or {}, **fields)
    return run_stage(stage, base)


def changed_centroid(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    diff = np.abs(after.astype(int) - before.astype(int)).sum(-1) > 60
    ys, xs = np.nonzero(diff)
    assert len(xs) > 10, "the edit changed almost nothing"
    return np.array([xs.mean(), ys.mean()])


def test_edit_lands_at_expected_pixels_and_moves_with_object(fitted, clip, tmp_path):
    gt = clip["gt"]
    c0 = gt["fg_center"][0]
    square = np.zeros((16, 16, 4), np.uint8)
    square[..., 1] = 255  # opaque green (BGRA): unlike any pixel of the warm foreground
    square[..., 3] = 255
    path = str(tmp_path / "square.png")
    cv2.imwrite(path, square)
    out = edit_row(fitted, clip, {"layer": "foreground", "center": [float(c0[0]), float(c0[1])], "size": 10},
                   overlay_uri=path)
    assert out["status"] == "pending", out.get("error")
    frames, edited = out["frames"], out["edited_frames"]
    assert edited.shape == frames.shape and edited.dtype == np.uint8
    first = changed_centroid(frames[0], edited[0])
    assert np.linalg.norm(first - c0) < 3.0  # placed where asked (within the test fit's accuracy)
    last = FRAMES - 1
    affine = gt["fg_affine"][last * STRIDE]
    expected = affine[:, :2] @ c0 + affine[:, 2]
    assert np.linalg.norm(expected - c0) > 4.0, "the test clip should move its object"
    moved = changed_centroid(frames[last], edited[last])
    assert np.linalg.norm(moved - expected) < 3.5
    assert np.linalg.norm((moved - first) - (expected - c0)) < 2.0  # it follows the object's motion
    # composite mode leaves the background untouched
    far = ~np.asarray(gt_masks(clip))[last]
    assert np.abs(edited[last][far].astype(int) - frames[last][far].astype(int)).max() <= 1
    assert storage.exists(out["outputs"]["edited_atlas"])
    # the demo's own overlay, default placement (the point deepest inside the foreground) works too
    demo = edit_row(fitted, clip)
    assert demo["status"] == "pending", demo.get("error")
    diff = np.abs(demo["edited_frames"].astype(int) - demo["frames"].astype(int)).max(axis=-1)  # [T, H, W]
    assert ((diff > 40).sum(axis=(1, 2)) >= 12).all(), (diff > 40).sum(axis=(1, 2))  # visible in every frame


def test_replacement_atlas_and_atlas_render(fitted, clip, tmp_path):
    row, _ = fitted
    red = np.zeros((64, 64, 3), np.uint8)
    red[..., 2] = 255  # BGR: pure red
    path = str(tmp_path / "red.png")
    cv2.imwrite(path, red)
    out = edit_row(fitted, clip, {"layer": "background", "render": "atlas"}, atlas_uri=path, overlay_uri=None)
    assert out["status"] == "pending", out.get("error")
    bg = ~gt_masks(clip)[0]
    assert out["edited_frames"][0][bg][:, 0].mean() > 200


def test_missing_overlay_and_bad_placement_are_row_errors(fitted, clip):
    out = edit_row(fitted, clip, overlay_uri=None)
    assert out["status"] == "error" and "overlay_uri" in out["error"]
    out = edit_row(fitted, clip, {"layer": "foreground", "center": [1.0, 1.0]})
    assert out["status"] == "error" and "not on the foreground" in out["error"]
    out = edit_row(fitted, clip, overlay_uri="/nonexistent/overlay.png")
    assert out["status"] == "error" and "not found" in out["error"]


def mask_error(clip, tmp_path, mask: np.ndarray) -> str:
    path = str(tmp_path / "bad-mask.png")
    cv2.imwrite(path, mask)
    ctx = context(str(tmp_path))
    row = decoded(clip, ctx)
    row["mask_uri"] = path
    out = run_stage(AtlasStage(from_dict(AtlasConfig, TEST_ATLAS), ctx), row)
    assert out["status"] == "error" and out["error_stage"] == "atlas"
    return out["error"]


def test_wrong_size_mask_is_row_error(clip, tmp_path):
    err = mask_error(clip, tmp_path, np.full((40, 64), 255, np.uint8))
    assert err.startswith("MaskError") and "64x40" in err


def test_empty_mask_is_row_error(clip, tmp_path):
    err = mask_error(clip, tmp_path, np.zeros((64, 64), np.uint8))
    assert err.startswith("MaskError") and "no foreground" in err


def test_too_many_frames_refused(clip, tmp_path):
    ctx = context(str(tmp_path))
    out = run_stage(AtlasStage(from_dict(AtlasConfig, {**TEST_ATLAS, "max_frames": 5, "long_clips": "refuse"}),
                                ctx), decoded(clip, ctx))
    assert out["status"] == "error" and "max_frames=5" in out["error"]


def test_nan_and_divergence_detected():
    with pytest.raises(AtlasFitError, match="became nan"):
        check_losses({"rgb": float("nan"), "_mse": 0.1}, 10, float("inf"), 50.0)
    with pytest.raises(AtlasFitError, match="diverged"):
        check_losses({"rgb": 1.0, "_mse": 0.5}, 1000, 0.001, 50.0)
    check_losses({"rgb": 1.0, "_mse": 0.01}, 1000, 0.001, 50.0)


def test_nan_fit_ends_the_row_not_the_job(clip, tmp_path):
    ctx = context(str(tmp_path))
    config = from_dict(AtlasConfig, {**TEST_ATLAS, "iterations": 20, "check_every": 5,
                                     "weights": {"rgb": float("nan")}})
    out = run_stage(AtlasStage(config, ctx), decoded(clip, ctx))
    assert out["status"] == "error" and out["error_stage"] == "atlas"
    assert out["error"].startswith("AtlasFitError") and "nan" in out["error"]
    cached = [f for _, _, files in os.walk(ctx.cache_url) for f in files if f == "meta.json"]
    assert cached == []  # a failed fit is never taken for a cache hit
