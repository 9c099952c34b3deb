"""Validate stage: the checks every row passes before any decoding.

Reads ``video_uri``; writes the sanitised ``video_id`` (from the row, or the file name),
the resolved ``method`` and ``params`` parsed into a dict. An unknown method, a malformed or
non-object ``params`` JSON, or a per-row override that does not fit the method's config is an
error on that row. The runner calls it in the driver, since it does no I/O.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from pipeline import storage
from pipeline.stage import Stage
from stages.decode import DecodeConfig, overridden
from stages.edit import get_method
from stages.edit.base import row_config


class ParamsError(ValueError):
    """The row's ``params`` is not a valid JSON object of known overrides."""


@dataclass(frozen=True)
class ValidateConfig:
    default_method: str = "reencode"
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    method_configs: dict[str, Any] = field(default_factory=dict)


def parse_params(raw: Any) -> dict:
    """A row's ``params`` as a dict; raises ParamsError quoting the bad value."""
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return {}
    if isinstance(raw, dict):
        return raw
    if not isinstance(raw, str):
        raise ParamsError(f"params must be a JSON object, got {type(raw).__name__}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ParamsError(f"malformed params JSON {raw[:80]!r}: {exc.msg} at char {exc.pos}") from exc
    if not isinstance(value, dict):
        raise ParamsError(f"params must be a JSON object, got {raw[:80]!r}")
    return value


def video_id_for(row: dict) -> str:
    """The sanitised id of a row's video: its ``video_id``, else the file name's stem."""
    raw = row.get("video_id")
    if raw is None or not str(raw).strip():
        raw = os.path.splitext(os.path.basename(str(row.get("video_uri", "")).rstrip("/")))[0] or "video"
    return storage.safe_id(str(raw))


class ValidateStage(Stage):
    name = "validate"
    reads = ("video_uri",)
    writes = ("video_id", "method", "params")

    def process(self, row: dict) -> dict:
        uri = row.get("video_uri")
        if not isinstance(uri, str) or not uri.strip():
            raise ValueError("video_uri is empty")
        row["video_id"] = video_id_for(row)
        method = row.get("method") or self.config.default_method
        row["method"] = method
        stage_cls = get_method(method)
        params = parse_params(row.get("params"))
        row["params"] = params
        try:
            overridden(self.config.decode, params)
            base = self.config.method_configs.get(method) or stage_cls.config_class()
            row_config(stage_cls.config_class, base, params)
        except ValueError as exc:
            raise ParamsError(f"bad per-row params: {exc}") from exc
        return row
