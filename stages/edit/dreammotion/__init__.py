"""DreamMotion (Jeong et al., ECCV 2024): zero-shot video editing by space-time self-similar score distillation.

``config`` (settings, components), ``losses`` (V-DDS, S-SSM, T-SSM as pure functions),
``key_hooks`` (spatial self-attention keys of a UNet3D), ``memory`` (block checkpointing and
attention processors for UNet3D), ``masks`` (the per-frame edit region of a row), ``optimise``
(the latent optimisation loop) and ``stage`` (the editing actor). See docs/dreammotion.md.
"""

from stages.edit.dreammotion.config import DreamMotionConfig
from stages.edit.dreammotion.stage import DreamMotionStage

__all__ = ["DreamMotionConfig", "DreamMotionStage"]
