"""Neural Layered Atlases (Kasten et al. 2021) with hash-grid fields: fitting stage and rendering.

See ``docs/atlas.md``. :class:`AtlasStage` fits (or reuses) one atlas per video;
``stages/edit/atlas_edit.py`` edits through it.
"""

from stages.atlas.config import AtlasConfig
from stages.atlas.stage import AtlasLimitError, AtlasStage

__all__ = ["AtlasConfig", "AtlasLimitError", "AtlasStage"]
