"""Synthetic sample clips: shapes, determinism, exact ground truth, and the files make_sample writes."""

from __future__ import annotations

import csv
import io
import json

import cv2
import numpy as np
import pytest

from jobs import make_sample as ms
from jobs import sample_data as sd
from pipeline import media, storage


@pytest.fixture(scope="module", params=["square", "landscape", "portrait"])
def clip(request) -> sd.SampleClip:
    return sd.generate_preset(request.param, seed=3)


def _track_colour_errors(c: sd.SampleClip, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """|frame_t(track_t + shift) - frame_0(query)| per channel, for points well inside their layer.

    Returns (errors of foreground points, errors of background points), float32 [M].
    """
    t_len, h, w, _ = c.frames.shape
    frames = c.frames.astype(np.float32)
    kernel = np.ones((5, 5), np.uint8)
    q = c.tracks[0]
    ref = frames[0][q[:, 1].round().astype(int), q[:, 0].round().astype(int)]
    fg_err, bg_err = [], []
    for t in range(t_len):
        x, y = c.tracks[t, :, 0] + shift, c.tracks[t, :, 1] + shift
        xi, yi = np.clip(x.round().astype(int), 0, w - 1), np.clip(y.round().astype(int), 0, h - 1)
        deep_fg = cv2.erode(c.masks[t].astype(np.uint8), kernel).astype(bool)[yi, xi]
        deep_bg = ~cv2.dilate(c.masks[t].astype(np.uint8), kernel).astype(bool)[yi, xi]
        ok = c.visibility[t] & (x >= 1) & (x <= w - 2) & (y >= 1) & (y <= h - 2)
        err = np.abs(sd.bilinear_sample(frames[t], x, y) - ref)
        fg_err.append(err[ok & c.is_foreground & deep_fg].ravel())
        bg_err.append(err[ok & ~c.is_foreground & deep_bg].ravel())
    return np.concatenate(fg_err), np.concatenate(bg_err)


def _read_png(url: str) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(storage.read_bytes(url), np.uint8), cv2.IMREAD_UNCHANGED)


def test_shapes_and_dtypes(clip):
    t, h, w, _ = clip.frames.shape
    n = clip.is_foreground.size
    assert clip.frames.dtype == np.uint8 and clip.frames.shape[-1] == 3
    assert clip.masks.shape == (t, h, w) and clip.masks.dtype == bool
    assert clip.tracks.shape == (t, n, 2) and clip.tracks.dtype == np.float32
    assert clip.visibility.shape == (t, n) and clip.visibility.dtype == bool
    assert clip.depth.shape == (t, h, w) and clip.depth.dtype == np.float32
    assert clip.fg_affine.shape == clip.bg_affine.shape == (t, 2, 3)
    assert clip.is_foreground.sum() == 32 and (~clip.is_foreground).sum() == 32
    assert 2.0 <= t / clip.fps <= 4.0
    np.testing.assert_allclose(clip.fg_affine[0], np.eye(3)[:2], atol=1e-9)
    np.testing.assert_allclose(clip.bg_affine[0], np.eye(3)[:2], atol=1e-9)


def test_presets_have_different_sizes():
    sizes = {(p.width, p.height) for p in sd.PRESETS.values()}
    assert len(sizes) >= 3
    assert sd.parse_size("96x64").width == 96
    with pytest.raises(ValueError, match="12x"):
        sd.parse_size("12x")


def test_deterministic_for_a_seed():
    a, b = sd.generate_sample(96, 80, 6, seed=7), sd.generate_sample(96, 80, 6, seed=7)
    c = sd.generate_sample(96, 80, 6, seed=8)
    for key, value in sd.gt_arrays(a).items():
        np.testing.assert_array_equal(value, sd.gt_arrays(b)[key], err_msg=key)
    np.testing.assert_array_equal(a.frames, b.frames)
    assert not np.array_equal(a.frames, c.frames)
    np.testing.assert_array_equal(sd.make_overlay(64, 2), sd.make_overlay(64, 2))
    assert not np.array_equal(sd.make_overlay(64, 2), sd.make_overlay(64, 3))


def test_mask_area_and_colour_match(clip):
    area = clip.masks.mean(axis=(1, 2))
    assert (area > 0.03).all() and (area < 0.3).all()
    # fg texture is warm (R > B) and bg cool (B > R): the mask is exactly where the fg texture is
    warm = clip.frames[..., 0].astype(int) > clip.frames[..., 2].astype(int)
    np.testing.assert_array_equal(warm, clip.masks)
    # the object stays whole inside the frame: its area changes only with its scale
    rel = area / area[0]
    np.testing.assert_allclose(rel, (clip.fg_scale / clip.fg_scale[0]) ** 2, rtol=0.05)


def test_depth_layers(clip):
    assert np.allclose(clip.depth[~clip.masks], sd.BG_DEPTH_M)
    fg = clip.depth[clip.masks]
    assert fg.min() > 1.5 and fg.max() < 2.5
    assert np.isclose(clip.fg_depth[0], sd.FG_DEPTH_M)
    for t in (0, len(clip.fg_depth) - 1):
        assert np.allclose(clip.depth[t][clip.masks[t]], clip.fg_depth[t])
    # larger on screen means nearer
    assert np.argmin(clip.fg_depth) == np.argmax(clip.fg_scale)


def test_tracks_follow_the_pixels(clip):
    fg_err, bg_err = _track_colour_errors(clip)
    assert fg_err.size > 500 and bg_err.size > 500
    # exact tracks leave only bilinear-resampling and uint8 rounding error (mean ~0.3-0.5 levels)
    assert fg_err.mean() < 0.6 and bg_err.mean() < 0.6
    assert fg_err.max() < 4.0 and bg_err.max() < 4.0
    # control: a track off by half a pixel is clearly detected by the same measure
    fg_off, bg_off = _track_colour_errors(clip, shift=0.5)
    assert fg_off.mean() > 2 * fg_err.mean() and bg_off.mean() > 2 * bg_err.mean()


def test_tracks_match_affines_and_query_layers(clip):
    q = clip.tracks[0].astype(np.float64)
    qi = q.round().astype(int)
    assert np.array_equal(clip.masks[0][qi[:, 1], qi[:, 0]], clip.is_foreground)
    for t in (1, len(clip.tracks) - 1):
        aff = np.where(clip.is_foreground[:, None, None], clip.fg_affine[t], clip.bg_affine[t])
        expect = np.einsum("nij,nj->ni", aff[:, :, :2], q) + aff[:, :, 2]
        np.testing.assert_allclose(clip.tracks[t], expect, atol=1e-3)
    assert clip.visibility[:, clip.is_foreground].all()  # the object never leaves the frame


def test_background_points_under_the_object_are_not_visible(clip):
    t_len, h, w, _ = clip.frames.shape
    bg = ~clip.is_foreground
    under = np.zeros_like(clip.visibility)
    for t in range(t_len):
        x, y = clip.tracks[t, :, 0], clip.tracks[t, :, 1]
        inside = (x >= 0) & (x <= w - 1) & (y >= 0) & (y <= h - 1)
        xi, yi = np.clip(x.round().astype(int), 0, w - 1), np.clip(y.round().astype(int), 0, h - 1)
        under[t] = inside & clip.masks[t][yi, xi]
        assert not clip.visibility[t][~inside].any()  # outside the frame is never visible
    deep = under & bg[None]
    assert deep.any(), "some background point should pass under the object"
    # away from the object's rim (where rounding to a pixel may disagree) occlusion is exact
    hidden = ~clip.visibility & bg[None]
    assert (deep <= hidden).mean() > 0.99
    assert clip.visibility[0, bg].all()


def test_overlay_is_rgba_with_soft_edges():
    ov = sd.make_overlay(96, seed=1)
    assert ov.shape == (96, 96, 4) and ov.dtype == np.uint8
    alpha = ov[..., 3]
    assert alpha[48, 48] == 255 and alpha[0, 0] == 0
    assert 0.15 < (alpha > 0).mean() < 0.6
    assert ((alpha > 0) & (alpha < 255)).sum() > 50  # anti-aliased rim


def test_make_sample_writes_everything(tmp_path):
    out = str(tmp_path / "sample")
    assert not ms.sample_exists(out)
    manifest = ms.make_sample(out, count=3, seed=5)
    assert manifest == storage.join_url(out, "manifest.csv")
    assert ms.sample_exists(out)
    rows = list(csv.DictReader(io.StringIO(storage.read_bytes(manifest).decode())))
    assert len(rows) == 3 and list(rows[0]) == list(ms.MANIFEST_COLUMNS)
    assert len({r["video_id"] for r in rows}) == 3 and {r["method"] for r in rows} == {"reencode"}
    sizes = set()
    for i, row in enumerate(rows):
        meta = json.loads(storage.read_bytes(storage.join_url(out, row["video_id"], "meta.json")))
        frames, fps, info = media.decode(row["video_uri"])
        assert frames.shape == (meta["num_frames"], meta["height"], meta["width"], 3)
        assert info.num_frames == meta["num_frames"] and fps == pytest.approx(meta["fps"], rel=1e-3)
        sizes.add(frames.shape[1:3])
        gt = ms.load_gt(storage.join_url(out, row["video_id"], "gt.npz"))
        assert set(gt) == set(meta["arrays"])
        expect = sd.generate_preset(meta["preset"], seed=5 + i)
        for key, value in sd.gt_arrays(expect).items():
            np.testing.assert_array_equal(gt[key], value, err_msg=key)
        # H.264 at crf 18 stays close to the rendered frames
        assert np.abs(frames.astype(np.float32) - expect.frames).mean() < 3.0
        mask = _read_png(row["mask_uri"])
        assert mask.dtype == np.uint8 and mask.ndim == 2
        np.testing.assert_array_equal(mask == 255, gt["masks"][0])
        assert set(np.unique(mask)) <= {0, 255}
        ov = _read_png(row["overlay_uri"])
        np.testing.assert_array_equal(cv2.cvtColor(ov, cv2.COLOR_BGRA2RGBA), sd.make_overlay(128, 5 + i))
    assert len(sizes) == 3


def test_make_sample_to_memory_url_and_cli():
    url = "memory://vidflow-test-sample"
    assert ms.main(["--output", url, "--count", "1", "--sizes", "96x64", "--method", "atlas_edit"]) == 0
    assert ms.sample_exists(url)
    rows = list(csv.DictReader(io.StringIO(storage.read_bytes(f"{url}/manifest.csv").decode())))
    assert rows[0]["method"] == "atlas_edit" and rows[0]["video_uri"].startswith("memory://")
    storage.remove(rows[0]["mask_uri"])
    assert not ms.sample_exists(url)
    with pytest.raises(SystemExit):
        ms.main(["--output", url, "--sizes", "huge"])
