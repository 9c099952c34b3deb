"""MiDaS depth (DPT through transformers), per frame and per image.

``stages.depth:DepthStage`` is the pipeline stage (stages/registry.py); other stages that need
depth of one image (StableVideo's background atlas) use :class:`DepthEstimator`::

    est = DepthEstimator.load("Intel/dpt-hybrid-midas")      # or a local directory
    inv_depth = est.predict_image(atlas_rgb)                   # float32 [H, W], larger = nearer
    norm, stats = normalise(inv_depth)                         # float16 [0, 1] + statistics
"""

from stages.depth.model import DepthEstimator, ModelInfo, check_input_size, resolve_model
from stages.depth.ops import (
    CanvasMeta,
    canvas_meta,
    colorize,
    denormalise,
    frames_digest,
    map_back,
    normalise,
    prepare_inputs,
)
from stages.depth.stage import DepthConfig, DepthStage, load_depth

__all__ = [
    "CanvasMeta", "DepthConfig", "DepthEstimator", "DepthStage", "ModelInfo", "canvas_meta", "check_input_size",
    "colorize", "denormalise", "frames_digest", "load_depth", "map_back", "normalise", "prepare_inputs",
    "resolve_model",
]
