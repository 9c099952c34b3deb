"""The base of every editing method: one stage per method, acting only on its own rows.

A method subclasses :class:`EditStage`, sets ``method``, ``config_class`` and the row fields
it requires, and implements :meth:`EditStage.edit`. Per-row ``params`` (keys without a
``decode.`` prefix) override fields of the method's config and are validated like the YAML.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, ClassVar

import numpy as np

from pipeline.config import from_dict, to_dict
from pipeline.stage import Stage


class RowFieldError(ValueError):
    """A row lacks a field its method needs, or the field's value is unusable."""


def method_params(params: dict | None) -> dict:
    """The per-row overrides meant for the method (not ``decode.*`` ones)."""
    return {k: v for k, v in (params or {}).items() if "." not in k}


def row_config(config_class: type, base: Any, params: dict | None, where: str = "params") -> Any:
    """``base`` (a config of ``config_class``) with the row's method params applied."""
    overrides = method_params(params)
    if not overrides:
        return base
    return from_dict(config_class, {**to_dict(base), **overrides}, where)


class EditStage(Stage):
    """One editing method. Reads decoded ``frames``; writes ``edited_frames`` (uint8 [T, H, W, 3])."""

    method: ClassVar[str] = ""
    config_class: ClassVar[type]
    required_fields: ClassVar[tuple[str, ...]] = ()
    needs: ClassVar[tuple[str, ...]] = ()  # analysis stages (stages/registry.py) this method needs for every row
    optional_needs: ClassVar[tuple[str, ...]] = ()  # analysis stages only some rows need (see row_needs)
    needs_config: ClassVar[dict[str, dict]] = {}  # settings of a needed stage the job's config does not set
    reads = ("frames", "fps")
    writes = ("edited_frames",)

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"edit:{self.method}"

    def applies_to(self, row: dict) -> bool:
        return row.get("method") == self.method

    @classmethod
    def row_needs(cls, row: dict) -> tuple[str, ...]:
        """The analysis stages this row needs (``needs``, plus those of ``optional_needs`` its fields ask for)."""
        return cls.needs

    def check_row(self, row: dict) -> None:
        """Raise RowFieldError when a required field is missing or empty."""
        for key in self.required_fields:
            value = row.get(key)
            if value is None or (isinstance(value, str) and not value.strip()):
                raise RowFieldError(f"method {self.method!r} needs row field {key!r}")

    def process(self, row: dict) -> dict:
        self.check_row(row)
        config = row_config(self.config_class, self.config, row.get("params"))
        edited = self.edit(row, config)
        edited = np.asarray(edited)
        if edited.dtype != np.uint8 or edited.ndim != 4 or edited.shape[-1] != 3:
            raise TypeError(f"{self.method} produced {edited.dtype} {edited.shape}, not uint8 [T, H, W, 3]")
        row["edited_frames"] = edited
        return row

    @abstractmethod
    def edit(self, row: dict, config: Any) -> np.ndarray:
        """The edited frames, uint8 [T, H, W, 3], of ``row`` under ``config``."""
