"""``reencode``: decode then encode, unchanged. The pipeline's self-test, and exactly that.

It exercises every part of a run (manifest, decode, the Ray plan, encode, previews, report)
with no model, so a cluster or a storage setup can be checked before a real method runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pipeline.config import Resources
from stages.edit.base import EditStage


@dataclass(frozen=True)
class ReencodeConfig:
    resources: Resources = field(default_factory=lambda: Resources(num_cpus=0.5, min_actors=1, max_actors=1))


class ReencodeStage(EditStage):
    method = "reencode"
    config_class = ReencodeConfig

    def edit(self, row: dict, config: ReencodeConfig) -> np.ndarray:
        return row["frames"]
