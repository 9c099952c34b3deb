"""Write the synthetic sample clips, their ground truth and an input manifest to any fsspec URL.

    python -m jobs.make_sample --output URL [--count N] [--seed S] [--sizes square landscape 320x240]
                               [--method reencode] [--if-missing]

Layout under ``URL`` (clip ``i`` uses size ``sizes[i % len(sizes)]`` and seed ``seed + i``)::

    {URL}/{name}/video.mp4     H.264, the rendered frames
    {URL}/{name}/gt.npz        ground truth (keys: jobs.sample_data.gt_arrays), allow_pickle=False
    {URL}/{name}/mask.png      first-frame foreground mask, 8-bit L, 255 = foreground
    {URL}/{name}/overlay.png   RGBA logo for atlas-edit demos
    {URL}/{name}/meta.json     sizes, rate, seed, depths, array shapes, file URIs
    {URL}/manifest.csv         video_uri, video_id, method, prompt, source_prompt, mask_uri, overlay_uri

The manifest is written last, so its presence means every clip it lists is complete.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import os
import sys
import tempfile
from collections.abc import Sequence

import cv2
import numpy as np

from jobs import sample_data
from pipeline import media, storage

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.csv"
MANIFEST_COLUMNS = ("video_uri", "video_id", "method", "prompt", "source_prompt", "mask_uri", "overlay_uri")
SOURCE_PROMPT = "an orange striped disc gliding over a blue textured background"
EDIT_PROMPT = "a golden star-painted disc gliding over a blue textured background"
DEFAULT_SIZES = tuple(sample_data.PRESETS)
OVERLAY_SIZE = 128


def _absolute(url: str) -> str:
    """Local paths become absolute, so the manifest does not depend on the working directory."""
    return os.path.abspath(url) if storage.protocol_of(url) == "file" else url.rstrip("/")


def _png(image: np.ndarray) -> bytes:
    """PNG bytes of uint8 [H, W] (L) or [H, W, 4] (RGBA) image."""
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGBA2BGRA)
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise ValueError(f"PNG encoding failed for an image of shape {image.shape}")
    return buf.tobytes()


def _npz(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def load_gt(url: str) -> dict[str, np.ndarray]:
    """Read a ``gt.npz`` from any fsspec URL (never unpickles)."""
    with np.load(io.BytesIO(storage.read_bytes(url)), allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def write_clip(clip: sample_data.SampleClip, clip_url: str, name: str, preset: sample_data.SamplePreset,
               overlay: np.ndarray) -> dict[str, str]:
    """Write one clip's files under ``clip_url``; returns their URIs by name."""
    uris = {key: storage.join_url(clip_url, f) for key, f in
            (("video", "video.mp4"), ("gt", "gt.npz"), ("mask", "mask.png"), ("overlay", "overlay.png"),
             ("meta", "meta.json"))}
    with tempfile.TemporaryDirectory(prefix="vidflow-sample-") as tmp:
        local = media.encode(clip.frames, os.path.join(tmp, "video.mp4"), clip.fps)
        storage.upload_file(local, uris["video"])
    arrays = sample_data.gt_arrays(clip)
    storage.write_bytes(uris["gt"], _npz(arrays))
    storage.write_bytes(uris["mask"], _png(clip.masks[0].astype(np.uint8) * 255))
    storage.write_bytes(uris["overlay"], _png(overlay))
    t, h, w, _ = clip.frames.shape
    meta = {
        "name": name, "preset": preset.name, "width": w, "height": h, "num_frames": t, "fps": clip.fps,
        "duration_s": t / clip.fps, "seed": clip.seed, "generator": "jobs.sample_data.generate_sample",
        "coordinates": "x, y pixels; pixel centres at integers; affines map frame-0 to frame-t coordinates",
        "fg_depth_m": [float(clip.fg_depth.min()), float(clip.fg_depth.max())],
        "bg_depth_m": float(clip.bg_depth[0]), "fg_axes_px": list(clip.fg_axes),
        "num_points": int(clip.is_foreground.size), "num_fg_points": int(clip.is_foreground.sum()),
        "source_prompt": SOURCE_PROMPT, "prompt": EDIT_PROMPT,
        "arrays": {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in arrays.items()},
        "uris": uris,
    }
    storage.write_bytes(uris["meta"], json.dumps(meta, indent=2).encode("utf-8"))
    return uris


def make_sample(output_url: str, count: int = 3, seed: int = 0, method: str = "reencode",
                sizes: Sequence[str] | None = None) -> str:
    """Render ``count`` clips (cycling over ``sizes``, seeds ``seed + i``) and write them and
    ``manifest.csv`` under ``output_url``; returns the manifest URL."""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    presets = [sample_data.parse_size(s) for s in (sizes or DEFAULT_SIZES)]
    if not presets:
        raise ValueError("sizes must name at least one preset or WxH")
    base = _absolute(output_url)
    rows = []
    for i in range(count):
        preset, clip_seed = presets[i % len(presets)], seed + i
        name = storage.safe_id(f"synth{i:02d}_{preset.name}_s{clip_seed}")
        log.info("sample %d/%d: %s (%dx%d, %d frames at %g fps)", i + 1, count, name, preset.width,
                 preset.height, preset.num_frames, preset.fps)
        clip = sample_data.generate_preset(preset, clip_seed)
        overlay = sample_data.make_overlay(OVERLAY_SIZE, clip_seed)
        uris = write_clip(clip, storage.join_url(base, name), name, preset, overlay)
        rows.append({"video_uri": uris["video"], "video_id": name, "method": method,
                     "prompt": EDIT_PROMPT, "source_prompt": SOURCE_PROMPT,
                     "mask_uri": uris["mask"], "overlay_uri": uris["overlay"]})
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    manifest = storage.join_url(base, MANIFEST_NAME)
    storage.write_bytes(manifest, text.getvalue().encode("utf-8"))
    log.info("wrote %d sample clips; manifest %s", count, manifest)
    return manifest


def sample_exists(output_url: str) -> bool:
    """True when ``{output_url}/manifest.csv`` exists and every file of every clip it lists exists."""
    manifest = storage.join_url(_absolute(output_url), MANIFEST_NAME)
    if not storage.exists(manifest):
        return False
    rows = list(csv.DictReader(io.StringIO(storage.read_bytes(manifest).decode("utf-8"))))
    if not rows:
        return False
    for row in rows:
        clip_url = row["video_uri"].rsplit("/", 1)[0]
        needed = [row["video_uri"], row["mask_uri"], row["overlay_uri"],
                  storage.join_url(clip_url, "gt.npz"), storage.join_url(clip_url, "meta.json")]
        if not all(u and storage.exists(u) for u in needed):
            return False
    return True


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.make_sample", description=__doc__.split("\n")[0])
    parser.add_argument("--output", required=True, help="output URL (local path, s3://, gs://, memory://)")
    parser.add_argument("--count", type=int, default=3, help="number of clips (default 3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first clip; clip i uses seed + i")
    parser.add_argument("--sizes", nargs="+", default=list(DEFAULT_SIZES),
                        help=f"presets {sorted(sample_data.PRESETS)} or WxH, cycled over the clips")
    parser.add_argument("--method", default="reencode", help="method column of the manifest")
    parser.add_argument("--if-missing", action="store_true", help="do nothing when a complete sample exists")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if args.if_missing and sample_exists(args.output):
        log.info("sample already complete at %s", args.output)
        return 0
    try:
        make_sample(args.output, args.count, args.seed, args.method, args.sizes)
    except ValueError as exc:
        parser.error(str(exc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
