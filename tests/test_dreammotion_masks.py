"""DreamMotion's edit region: masks_uri (npz or mask video), the atlas alpha, the whole frame with a
warning, the latent grid, and a clear error naming the field for each kind of bad mask."""

from __future__ import annotations

import io
import logging

import numpy as np
import pytest

from pipeline import media
from stages.edit.base import RowFieldError
from stages.edit.dreammotion import DreamMotionStage
from stages.edit.dreammotion.config import DreamMotionConfig
from stages.edit.dreammotion.masks import atlas_masks, latent_masks, mask_source, read_masks, row_masks

SHAPE = (4, 40, 40)  # decoded frames T, H, W


def _box_masks(t: int = 4, h: int = 40, w: int = 40) -> np.ndarray:
    m = np.zeros((t, h, w), bool)
    for i in range(t):
        m[i, 8:20, 4 + 2 * i:16 + 2 * i] = True
    return m


def _npz(path, **arrays) -> str:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    path.write_bytes(buffer.getvalue())
    return str(path)


def test_npz_masks_in_bool_uint8_float_and_at_another_size_of_the_same_aspect(tmp_path):
    m = _box_masks()
    assert np.array_equal(read_masks(_npz(tmp_path / "b.npz", masks=m), SHAPE), m)
    assert np.array_equal(read_masks(_npz(tmp_path / "u.npz", x=m.astype(np.uint8) * 255), SHAPE), m)
    assert np.array_equal(read_masks(_npz(tmp_path / "f.npz", x=m.astype(np.float32) * 0.9), SHAPE), m)
    double = np.repeat(np.repeat(m, 2, axis=1), 2, axis=2)  # 80 x 80: same picture, resized back
    assert np.array_equal(read_masks(_npz(tmp_path / "d.npz", masks=double), SHAPE), m)


@pytest.mark.parametrize("name, arrays, message", [
    ("frames", {"masks": _box_masks(t=3)}, "has 3 frames, the decoded video 4"),
    ("aspect", {"masks": _box_masks(w=60)}, "is 60x40 but the frames are 40x40"),
    ("empty", {"masks": np.zeros(SHAPE, bool)}, "no pixel inside"),
    ("rank", {"masks": np.zeros((4, 40), bool)}, "must be masks [T, H, W]"),
    ("many", {"a": _box_masks(), "b": _box_masks()}, "name the mask array 'masks'"),
])
def test_bad_npz_masks_name_the_field(tmp_path, name, arrays, message):
    with pytest.raises(RowFieldError, match="masks_uri") as info:
        read_masks(_npz(tmp_path / f"{name}.npz", **arrays), SHAPE)
    assert message in str(info.value)


def test_missing_or_unreadable_masks(tmp_path):
    with pytest.raises(RowFieldError, match="masks_uri .* not found"):
        read_masks(str(tmp_path / "absent.npz"), SHAPE)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(RowFieldError, match="masks_uri .* not a readable .npz"):
        read_masks(str(tmp_path / "junk.npz"), SHAPE)
    (tmp_path / "junk.mp4").write_bytes(b"not a video")
    with pytest.raises(RowFieldError, match="masks_uri .* not a decodable mask video"):
        read_masks(str(tmp_path / "junk.mp4"), SHAPE)


def test_mask_video(tmp_path):
    m = _box_masks()
    path = media.encode(np.repeat((m.astype(np.uint8) * 255)[..., None], 3, -1), str(tmp_path / "m.mp4"), 8.0)
    got = read_masks(path, SHAPE)
    assert got.shape == SHAPE and (got == m).mean() > 0.97
    with pytest.raises(RowFieldError, match="has more than 3 frames, the decoded video 3"):
        read_masks(path, (3, 40, 40))
    with pytest.raises(RowFieldError, match="has 4 frames, the decoded video 6"):
        read_masks(path, (6, 40, 40))


def test_atlas_alpha_when_no_masks_uri(tmp_path):
    alpha = _box_masks().astype(np.float16) * 0.8
    _npz(tmp_path / "maps.npz", alpha=alpha, uv_fg=np.zeros((1,), np.uint16))
    row = {"job_id": "j", "atlas_dir": str(tmp_path)}
    masks, source = row_masks(row, SHAPE, 0.5)
    assert source == "atlas" and np.array_equal(masks, _box_masks())
    with pytest.raises(RowFieldError, match="no foreground above 0.9"):
        atlas_masks(str(tmp_path), SHAPE, 0.9)
    with pytest.raises(ValueError, match="atlas fit .* is for"):
        atlas_masks(str(tmp_path), (4, 20, 20), 0.5)
    # masks_uri wins over the atlas
    uri = _npz(tmp_path / "m.npz", masks=np.ones(SHAPE, bool))
    assert row_masks({**row, "masks_uri": uri}, SHAPE, 0.5)[1] == "masks_uri"


def test_whole_frame_with_a_warning_and_mask_source_values(caplog):
    with caplog.at_level(logging.WARNING, logger="stages.edit.dreammotion.masks"):
        assert row_masks({"job_id": "j"}, SHAPE, 0.5) == (None, "frame")
    assert "whole frame" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="stages.edit.dreammotion.masks"):
        assert row_masks({"job_id": "j", "mask_source": "frame", "atlas_dir": "/nowhere"}, SHAPE, 0.5)[1] == "frame"
    assert caplog.text == ""
    with pytest.raises(RowFieldError, match="mask_source 'alpha' is not one of"):
        mask_source({"mask_source": "alpha"})
    with pytest.raises(RowFieldError, match="no 'atlas_dir'"):
        row_masks({"mask_source": "atlas"}, SHAPE, 0.5)
    with pytest.raises(RowFieldError, match="no 'masks_uri'"):
        mask_source({"mask_source": "masks_uri", "masks_uri": " "})


def test_rows_asking_for_the_atlas_pull_it_in():
    assert DreamMotionStage.row_needs({"mask_source": "atlas"}) == ("atlas",)
    assert DreamMotionStage.row_needs({"masks_uri": "m.npz"}) == ()
    assert DreamMotionStage.row_needs({"mask_source": "bogus"}) == ()  # the edit stage reports it
    assert DreamMotionStage.optional_needs == ("atlas",) and DreamMotionStage.needs == ()


def test_latent_masks_follow_the_clip_and_mark_any_covered_cell():
    m = np.zeros((5, 40, 40), bool)
    m[1, 0, 0] = True  # one pixel of frame 1
    m[3, 20:24, 32:40] = True
    config = DreamMotionConfig(width=32, height=32, num_frames=2, frame_stride=2, start_frame=1)
    lat = latent_masks(m, config, (8, 8))  # frames 1 and 3, 40 -> 32 px, 4 px per latent cell
    assert lat.shape == (2, 8, 8) and set(lat.unique().tolist()) <= {0.0, 1.0}
    assert lat[0, 0, 0] == 1 and lat[0].sum() == 1
    assert lat[1, 4, 6:].all() and lat[1, :, :5].sum() == 0
    with pytest.raises(RowFieldError, match="no pixel inside .* in the clip's frames"):
        latent_masks(m, DreamMotionConfig(width=32, height=32, num_frames=2, frame_stride=2), (8, 8))  # frames 0, 2


def test_a_dreammotion_job_plans_the_atlas_for_the_rows_that_ask_only():
    from jobs.edit_videos import EditJobConfig, build_specs

    specs = build_specs(EditJobConfig(), {"dreammotion"}, {})
    names = [spec.stage_cls.__name__ for spec in specs]
    assert names == ["DecodeStage", "AtlasStage", "DreamMotionStage", "EncodeStage"]
    assert specs[1].config.apply_to == "needing"
