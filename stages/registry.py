"""Optional analysis stages that run between decode and editing, in this order.

A job enables one with a ``stages.<name>:`` section in its YAML (``enabled: true`` plus the
stage's own config), and an editing method that needs one (``EditStage.needs``) enables it
itself. Modules are imported on first use.
"""

from __future__ import annotations

from pipeline.stage import Stage, import_stage_class

# pipeline order: earlier stages' outputs (tracks, depth) are available to later ones
STAGE_ORDER: dict[str, str] = {
    "cuts": "stages.cuts:CutsStage",  # first: a window with a shot cut never reaches the costly stages
    "trajectories": "stages.trajectories:TrajectoryStage",
    "depth": "stages.depth:DepthStage",
    "atlas": "stages.atlas:AtlasStage",
}


def get_stage(name: str) -> type[Stage]:
    target = STAGE_ORDER.get(name)
    if target is None:
        raise KeyError(f"unknown stage {name!r} (known: {', '.join(STAGE_ORDER)})")
    return import_stage_class(target)
