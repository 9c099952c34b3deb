"""StableVideo (``method: stablevideo``): text-driven editing of a video's layered atlases with ControlNet.

``config`` (settings, components), ``keyframes`` (keyframe choice, crops, canvas, Canny),
``atlas_ops`` (sample / scatter / covered median), ``sampling`` (DDIM + ControlNet, SDEdit),
``foreground``, ``background``, ``aggregate`` (the optional aggregation net) and ``stage`` (the
actor). See docs/stablevideo.md.
"""

from stages.edit.stablevideo.config import StableVideoConfig
from stages.edit.stablevideo.stage import StableVideoStage

__all__ = ["StableVideoConfig", "StableVideoStage"]
