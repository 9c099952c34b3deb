"""ReVideo (Mou et al., NeurIPS 2024): edit the content and motion of a region on Stable Video Diffusion.

``config`` (settings and components), ``control`` (the control module as a diffusers ``ModelMixin``
and the UNet forward that takes its residuals), ``sampling`` (EDM Euler, Karras sigmas, per-frame
guidance), ``conditions``/``inputs`` (row fields to boxes, region map, content video, c_mot),
``stage`` (the editing actor) and ``convert`` (the released sgm checkpoint to diffusers folders).
See docs/revideo.md.
"""

from stages.edit.revideo.config import ReVideoConfig
from stages.edit.revideo.stage import ReVideoStage

__all__ = ["ReVideoConfig", "ReVideoStage"]
