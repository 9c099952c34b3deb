"""Atlas masks on footage-like motion: parallax, fast objects, shots with nothing moving, default placement.

Synthetic scenes with exact ground truth (bench/atlas_scenes.py); a few seconds in all.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from bench.atlas_scenes import fast_object_scene, parallax_scene
from jobs.sample_data import generate_sample
from pipeline.stage import RunContext, run_stage
from stages.atlas import AtlasConfig, AtlasStage
from stages.atlas.artifacts import AtlasFit
from stages.atlas.config import SegmentationConfig
from stages.atlas.flow import dense_flow
from stages.atlas.masks import motion_masks, propagate
from stages.atlas.segmentation import NoObjectError, check_tracked, persistent, refine_outline, tracked_vote
from stages.atlas.tracks import DEFAULT_TRACKER
from stages.edit.atlas_edit import AtlasEditConfig, inner_point, overlay_matrix
from stages.edit.base import RowFieldError


def centroid(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([xs.mean(), ys.mean()])


@pytest.fixture(scope="module")
def parallax():
    scene = parallax_scene(width=160, height=120, num_frames=10)
    return scene, dense_flow(scene.frames)


def test_parallax_planes_are_background_and_the_object_foreground(parallax):
    scene, flow = parallax
    masks = motion_masks(flow, frames=scene.frames)
    truth = scene.masks
    recall = (masks & truth).sum() / truth.sum()
    assert recall >= 0.85, recall
    # the far plane moves at a third of the near one's speed: both background (away from the object's
    # edge, where the flow bleeds; the edge is in the IoU below)
    edge = np.stack([cv2.dilate(m.astype(np.uint8), np.ones((9, 9), np.uint8)) > 0 for m in truth])
    for plane in (0, 1):
        on_plane = (scene.planes == plane) & ~edge
        assert (masks & on_plane).sum() / on_plane.sum() <= 0.02, plane
    iou = (masks & truth).sum() / (masks | truth).sum()
    assert iou >= 0.75, iou


def test_one_plane_model_would_mark_the_near_plane(parallax):
    """The check above can fail: with one background plane, the near band is 'foreground'."""
    scene, flow = parallax
    masks = motion_masks(flow, config=SegmentationConfig(background_planes=1), frames=scene.frames)
    edge = np.stack([cv2.dilate(m.astype(np.uint8), np.ones((9, 9), np.uint8)) > 0 for m in scene.masks])
    near = (scene.planes == 1) & ~edge
    assert (masks & near).sum() / near.sum() > 0.3


@pytest.mark.parametrize("guided", [True, False])
def test_fast_object_keeps_its_mask(guided):
    scene = fast_object_scene(speed_px=15.0)
    steps = np.linalg.norm(np.diff(scene.centres, axis=0), axis=1)
    assert steps.min() > 14.0  # the object really moves ~15 px a frame
    flow = dense_flow(scene.frames, guide=DEFAULT_TRACKER if guided else None)
    masks = propagate(scene.masks[0], flow, scene.frames, DEFAULT_TRACKER if guided else None)
    errors = [np.linalg.norm(centroid(m) - c) for m, c in zip(masks, scene.centres)]
    if guided:
        assert max(errors) <= 5.0, errors
        found = motion_masks(flow, frames=scene.frames)
        assert (found & scene.masks).sum() / scene.masks.sum() >= 0.6
    else:  # dense flow alone loses it: the guide is what keeps it
        assert max(errors) > 5.0, errors


def test_sample_clip_at_stride_two_keeps_the_object():
    clip = generate_sample(192, 192, 36, 12.0, 0)
    frames, truth = clip.frames[::2], clip.masks[::2]
    flow = dense_flow(frames)
    steps = np.linalg.norm(np.diff(clip.fg_center[::2], axis=0), axis=1)
    assert steps.max() > 10.0
    masks = propagate(truth[0], flow, frames, DEFAULT_TRACKER)
    errors = [np.linalg.norm(centroid(m) - centroid(g)) for m, g in zip(masks, truth)]
    assert max(errors) <= 5.0, errors


def still_clip(frames: int = 8, size: int = 96, jitter: float = 0.6) -> np.ndarray:
    """A textured wall under a handheld camera (sub-pixel jitter, sensor noise), nothing moving."""
    rng = np.random.default_rng(4)
    from jobs.sample_data import _BG_RANGE, make_texture

    wall = make_texture(size + 16, size + 16, rng, _BG_RANGE)
    out = []
    for _ in range(frames):
        dx, dy = rng.uniform(-jitter, jitter, 2)
        shift = np.float32([[1, 0, dx - 8], [0, 1, dy - 8]])
        frame = cv2.warpAffine(wall, shift, (size, size), flags=cv2.INTER_LINEAR) + rng.normal(0, 2.0, (size, size, 3))
        out.append(np.clip(np.rint(frame), 0, 255).astype(np.uint8))
    return np.stack(out)


def test_nothing_moving_is_reported_not_guessed(tmp_path):
    frames = still_clip()
    with pytest.raises(NoObjectError, match="mask_uri"):
        motion_masks(dense_flow(frames), frames=frames)
    # on the row: the atlas stage refuses it with that message instead of fitting an alpha on the wall
    ctx = RunContext(output_url=str(tmp_path / "out"), cache_url=str(tmp_path / "cache"))
    row = {"video_id": "wall", "job_id": "j", "method": "atlas_edit", "frames": frames, "fps": 12.0,
           "content_hash": "wall", "status": "pending"}
    out = run_stage(AtlasStage(AtlasConfig(iterations=5, batch_pixels=64), ctx), row)
    assert out["status"] == "error" and out["error_stage"] == "atlas"
    assert out["error"].startswith("NoObjectError") and "mask_uri" in out["error"]


def test_flicker_does_not_persist_but_a_moving_region_does():
    masks = np.zeros((6, 40, 40), bool)
    for t in range(6):
        masks[t, 10:18, 4 + 5 * t:12 + 5 * t] = True  # an object moving 5 px a frame
    masks[2, 30:36, 30:36] = True  # a one-frame flicker
    kept = persistent(masks, radius=2, reach_px=6.0, fraction=0.5)
    assert kept[2, 30:36, 30:36].sum() == 0
    assert (kept[:, 10:18] == masks[:, 10:18]).all()


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def spray_clip(frames: int = 10, size: int = 96, seed: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A camera following a textured object over nearly textureless snow, spray flickering below it.

    The snow (2.5 grey levels of smooth relief) pans 2.7 px a frame and gives the background
    planes no textured samples; the object's image stays put; eight bright speckled blobs of
    "spray" appear at new random places under it every frame. Returns (frames uint8 [T, H, W, 3],
    object bool [T, H, W], spray zone bool [H, W]).
    """
    rng = np.random.default_rng(seed)
    snow = cv2.GaussianBlur(rng.normal(0, 1, (size + 64, size + 64)).astype(np.float32), (0, 0), 6)
    snow = 225 + 2.5 * snow / snow.std()
    texture = cv2.GaussianBlur(rng.uniform(0, 255, (size, size, 3)).astype(np.float32), (0, 0), 1.5)
    yy, xx = np.mgrid[0:size, 0:size]
    body = (xx - size * 0.5) ** 2 / 14 ** 2 + (yy - size * 0.42) ** 2 / 22 ** 2 <= 1
    out = []
    for t in range(frames):
        pan = np.float32([[1, 0, -32 + 2.5 * t], [0, 1, -32 + 1.0 * t]])
        frame = np.repeat(cv2.warpAffine(snow, pan, (size, size), flags=cv2.INTER_LINEAR)[..., None], 3, -1)
        frame[body] = texture[body]
        spray = np.zeros((size, size), bool)
        for _ in range(8):
            cx, cy = rng.uniform(0.25 * size, 0.75 * size), rng.uniform(0.75 * size, 0.95 * size)
            spray |= (xx - cx) ** 2 + (yy - cy) ** 2 <= rng.uniform(2, 5) ** 2
        frame[spray] = rng.uniform(120, 255, (int(spray.sum()), 1))
        frame += rng.normal(0, 1.0, frame.shape)
        out.append(np.clip(np.rint(frame), 0, 255).astype(np.uint8))
    zone = np.zeros((size, size), bool)
    zone[int(0.7 * size):, int(0.2 * size):int(0.8 * size)] = True
    return np.stack(out), np.repeat(body[None], frames, 0), zone


def test_spray_is_never_the_object():
    """man-skiing in small: the object is found or the row refused, never a confident mask on the spray."""
    frames, body, zone = spray_clip()
    flow = dense_flow(frames)
    # the failure this guards against: without the tracking rules (and the object layer, which finds part of
    # the object here) the masks are the spray, not the object
    old = motion_masks(flow, config=SegmentationConfig(consensus_fraction=0.0, min_tracked=0.0, edge_band=0.0,
                                                       object_layer=False), frames=frames)
    assert (old & zone).sum() / old.sum() > 0.5 and (old & body).sum() / body.sum() < 0.3
    try:
        masks = motion_masks(flow, frames=frames)
    except NoObjectError as exc:
        assert "mask_uri" in str(exc) and "spray" in str(exc)
    else:  # found: then it is the object
        assert (masks & body).sum() / body.sum() >= 0.6
        assert (masks & zone).sum() / masks.sum() <= 0.1


def locked_subject_clip(frames: int = 10, size: int = 112, seed: int = 5, still: tuple[int, ...] = (4, 5, 6)
                        ) -> tuple[np.ndarray, np.ndarray]:
    """A camera carrying a textured object (a selfie-stick shot) while the background sweeps past.

    The background (the sample clips' texture at 70 % contrast) turns 4 degrees and moves ~7.6
    px a frame; the object (an ellipse, 15 % of the frame, cut by the bottom border) jitters by
    at most half a pixel. Over frames ``still`` the camera stops: the object moves with the
    background there and gives no motion evidence. Returns (frames uint8 [T, H, W, 3], object
    bool [T, H, W]).
    """
    from jobs.sample_data import _BG_RANGE, _FG_RANGE, make_texture

    rng = np.random.default_rng(seed)
    world = make_texture(3 * size, 3 * size, rng, _BG_RANGE)
    world = world.mean((0, 1)) + 0.7 * (world - world.mean((0, 1)))
    texture = make_texture(size, size, rng, _FG_RANGE)
    yy, xx = np.mgrid[0:size, 0:size]
    pose = np.zeros(3)
    out, masks = [], []
    for t in range(frames):
        if t > 0 and t not in still:
            pose += (4.0, 7.0, 3.0)  # degrees, px, px
        swing = cv2.getRotationMatrix2D((1.5 * size, 1.5 * size), pose[0], 1.0)
        swing[:, 2] -= (size + pose[1], size + pose[2])
        frame = cv2.warpAffine(world, swing, (size, size), flags=cv2.INTER_LINEAR).astype(np.float32)
        jx, jy = rng.uniform(-0.5, 0.5, 2)
        body = (xx - 0.55 * size - jx) ** 2 / (0.16 * size) ** 2 + (yy - 0.8 * size - jy) ** 2 / (0.35 * size) ** 2 <= 1
        carried = cv2.warpAffine(texture, np.float32([[1, 0, jx], [0, 1, jy]]), (size, size), flags=cv2.INTER_LINEAR)
        frame[body] = carried[body]
        frame += rng.normal(0, 1.0, frame.shape)
        out.append(np.clip(np.rint(frame), 0, 255).astype(np.uint8))
        masks.append(body)
    return np.stack(out), np.stack(masks)


def test_camera_locked_subject_is_the_object():
    """man-skiing's rider in small: fixed in the frame, touching its border, the background sweeping past."""
    frames, truth = locked_subject_clip()
    assert truth[:, -1].any() and not truth[:, 0].any()  # it touches the bottom border only
    flow = dense_flow(frames)
    masks = motion_masks(flow, config=SegmentationConfig(object_layer=True), frames=frames)
    assert iou(masks, truth) >= 0.9, iou(masks, truth)
    assert (masks & ~truth).sum() / (~truth).sum() <= 0.02  # the sweeping background is not foreground
    # without the object layer (the default) the frames around the stop (judged both ways) lose it
    plain = motion_masks(flow, frames=frames)
    assert iou(plain, truth) < 0.85, iou(plain, truth)


def test_trackability_is_judged_on_frames_that_hold_the_object():
    """Small scattered evidence (the object moving with the background: spray only) is left to the gap filling."""
    rng = np.random.default_rng(0)
    masks = np.zeros((20, 60, 60), bool)
    masks[:, 20:40, 25:45] = True  # the object, where the tracker carries it (still: identity steps)
    for t in range(6, 14):  # the object moves with the background: only a scattered small blob, elsewhere
        masks[t] = False
        y, x = rng.integers(0, 52, 2)
        masks[t, y:y + 8, x:x + 8] = True
    steps = [np.eye(3)] * 19
    config = SegmentationConfig(track_min_area=0.5)
    check_tracked(masks, steps, config)  # 12 of 12 judged pairs agree
    with pytest.raises(NoObjectError, match="spray"):  # judging every pair (the default): 11 of 19
        check_tracked(masks, steps, SegmentationConfig())
    flicker = np.zeros_like(masks)
    for t in range(20):  # flicker alone, in every frame: refused either way
        y, x = rng.integers(0, 44, 2)
        flicker[t, y:y + 16, x:x + 16] = True
    with pytest.raises(NoObjectError, match="spray"):
        check_tracked(flicker, steps, config)


def test_tracked_vote_restores_a_missed_part_and_drops_a_one_frame_strip():
    masks = np.zeros((7, 40, 60), bool)
    for t in range(7):
        masks[t, 10:26, 5 + 6 * t:17 + 6 * t] = True  # an object moving 6 px a frame
    truth = masks.copy()
    masks[3, 18:26] = False  # the lower half gives no evidence in frame 3
    masks[0, 10:26, 17:23] = True  # frame 0 (judged one way only) adds the strip it is about to cover
    shift = np.array([[1, 0, 6], [0, 1, 0], [0, 0, 1]], float)
    steps = ([shift] * 6, [np.linalg.inv(shift)] * 6)
    voted = tracked_vote(masks, steps, radius=3, fraction=0.4)
    assert iou(voted[3], truth[3]) == 1.0 and iou(voted[0], truth[0]) == 1.0
    assert iou(masks[3], truth[3]) < 0.6 and iou(masks[0], truth[0]) < 0.7  # what the vote repaired


def test_outline_refinement_follows_the_object_colours_within_its_band():
    rng = np.random.default_rng(0)
    frame = np.clip(rng.normal(90, 12, (80, 80, 3)), 0, 255).astype(np.uint8)  # a grey, noisy background
    yy, xx = np.mgrid[0:80, 0:80]
    disc = (xx - 40) ** 2 + (yy - 40) ** 2 <= 15 ** 2
    frame[disc] = np.clip(rng.normal((200, 60, 40), 12, (int(disc.sum()), 3)), 0, 255).astype(np.uint8)
    far = (xx - 70) ** 2 + (yy - 70) ** 2 <= 6 ** 2
    frame[far] = frame[disc][: int(far.sum())]  # the object's colour again, beyond the band
    rough = disc & (yy < 46)  # the lower part gave no motion evidence ...
    rough |= (xx - 40) ** 2 + (yy - 40) ** 2 <= 18 ** 2  # ... and a flow-bled fringe was added around the rest
    rough &= yy < 46
    refined = refine_outline(frame, rough, band=0.25, iterations=3)
    assert iou(rough, disc) < 0.6 and iou(refined, disc) >= 0.85, (iou(rough, disc), iou(refined, disc))
    assert not refined[far].any()  # it moves the outline, it does not find other objects


def test_fast_sample_object_is_segmented_whole():
    """The landscape sample clip at stride 2 (up to ~23 px a frame over 12 frames at 160x96)."""
    clip = generate_sample(320, 192, 24, 12.0, 1)  # jobs.sample_data's "landscape" preset (seed 1 in the bench)
    frames = np.stack([cv2.resize(f, (160, 96), interpolation=cv2.INTER_AREA) for f in clip.frames[::2]])
    truth = np.stack([cv2.resize(m.astype(np.uint8), (160, 96), interpolation=cv2.INTER_NEAREST) > 0
                      for m in clip.masks[::2]])
    flow = dense_flow(frames)
    before = motion_masks(flow, config=SegmentationConfig(consensus_fraction=0.0, edge_band=0.0), frames=frames)
    voted = motion_masks(flow, config=SegmentationConfig(edge_band=0.0), frames=frames)
    after = motion_masks(flow, frames=frames)
    assert iou(before, truth) < 0.75  # one frame's evidence misses what moves like the background then
    assert iou(voted, truth) >= 0.82, iou(voted, truth)  # the tracked vote: the neighbours supply it ...
    assert iou(after, truth) >= 0.93, iou(after, truth)  # ... and the colour outline refinement the rest


def test_default_placement_is_inside_a_non_convex_foreground():
    alpha = np.zeros((2, 64, 64), np.float32)
    alpha[:, 8:56, 8:20] = 1.0  # a C: its centroid lies in the empty middle
    alpha[:, 8:20, 8:56] = 1.0
    alpha[:, 44:56, 8:56] = 1.0
    x, y = inner_point(alpha[0] > 0.5)
    assert alpha[0, int(y), int(x)] == 1.0
    assert alpha[0, int(round(centroid(alpha[0] > 0.5)[1])), int(round(centroid(alpha[0] > 0.5)[0]))] == 0.0
    uv = np.stack(np.meshgrid(np.linspace(0, 1, 64), np.linspace(0, 1, 64)), -1)[None].repeat(2, 0).astype(np.float32)
    fit = AtlasFit(np.zeros((32, 32, 3), np.uint8), np.zeros((32, 32, 3), np.uint8), uv, uv, alpha, {})
    matrix = overlay_matrix(fit, AtlasEditConfig(), (16, 16), 32)  # no error: the point is on the foreground
    assert np.isfinite(matrix).all()
    fit.alpha[:] = 0.0
    with pytest.raises(RowFieldError, match="mask_uri"):
        overlay_matrix(fit, AtlasEditConfig(), (16, 16), 32)
