"""Registry of editing methods: name -> the module and class that implement it.

Modules are imported on first use, so a job that only re-encodes never imports diffusers.
Add a method by writing ``stages/edit/<name>.py`` with an :class:`~stages.edit.base.EditStage`
subclass and one line in ``_METHODS``.
"""

from __future__ import annotations

from pipeline.stage import import_stage_class
from stages.edit.base import EditStage

_METHODS: dict[str, str] = {
    "reencode": "stages.edit.reencode:ReencodeStage",
    "atlas_edit": "stages.edit.atlas_edit:AtlasEditStage",
    "tune_a_video": "stages.edit.tune_a_video:TuneAVideoStage",
    "revideo": "stages.edit.revideo:ReVideoStage",
    "dreammotion": "stages.edit.dreammotion:DreamMotionStage",
    "stablevideo": "stages.edit.stablevideo:StableVideoStage",
    "lamd": "stages.edit.lamd:LamdStage",
}


class UnknownMethodError(ValueError):
    """A row or config names a method that is not registered."""


def method_names() -> list[str]:
    return sorted(_METHODS)


def row_needs(row: dict, stage: str) -> bool:
    """Whether ``row``'s method needs analysis stage ``stage`` for this row (False for unknown methods)."""
    try:
        return stage in get_method(str(row.get("method"))).row_needs(row)
    except UnknownMethodError:
        return False


def get_method(name: str) -> type[EditStage]:
    """The EditStage class of method ``name``; raises UnknownMethodError."""
    target = _METHODS.get(name)
    if target is None:
        raise UnknownMethodError(f"unknown method {name!r} (known: {', '.join(method_names())})")
    return import_stage_class(target)
