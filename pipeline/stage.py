"""The Stage contract and per-row error capture.

A stage is plain Python: a class with a frozen config, declared resources, ``setup()`` that
loads models once per actor, and ``process(row) -> row``. It names the keys it ``reads`` and
``writes``. :func:`run_stage` wraps a call: rows already failed or skipped pass through
untouched, a missing key is a clear error naming the stage and the key, and any exception
becomes ``status=error``, ``error_stage``, ``error="Type: message"`` on that row only. The
first error is never overwritten. Only ``pipeline/runner.py`` knows about Ray.
"""

from __future__ import annotations

import importlib
import io
import json
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from pipeline.config import Resources
from pipeline.storage import StorageOptions

log = logging.getLogger(__name__)

STATUS_PENDING = "pending"
STATUS_OK = "ok"
STATUS_ERROR = "error"
STATUS_SKIPPED = "skipped"


class MissingKeyError(KeyError):
    """A stage needs a row key that an earlier stage did not produce."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class RunContext:
    """Where a run writes, shared by all its stages."""

    output_url: str
    cache_url: str
    run_id: str = "local"
    config_hash: str = ""
    storage: StorageOptions = StorageOptions()


class Stage(ABC):
    """Base class of every stage.

    Subclasses set ``name``, ``reads``, ``writes`` (and ``drops`` for keys they consume and
    remove, such as decoded frames) and implement :meth:`process`. ``config`` is a frozen
    dataclass; when it has a ``resources`` field of type :class:`Resources` that is how the
    runner schedules the stage.
    """

    name: ClassVar[str] = "stage"
    config_class: ClassVar[type | None] = None
    reads: ClassVar[tuple[str, ...]] = ()
    writes: ClassVar[tuple[str, ...]] = ()
    drops: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: Any, context: RunContext):
        self.config = config
        self.context = context

    @property
    def resources(self) -> Resources:
        return getattr(self.config, "resources", None) or Resources()

    def preflight(self) -> None:
        """Check configuration before any work starts (model paths, codecs); raise ConfigError."""

    def setup(self) -> None:
        """Load models once per actor."""

    def applies_to(self, row: dict) -> bool:
        """Whether this stage acts on ``row``; rows it does not apply to pass through."""
        return True

    @abstractmethod
    def process(self, row: dict) -> dict:
        """Transform one row; raise to fail it (the contract records the error)."""

    def close(self) -> None:
        """Release resources held since :meth:`setup`."""


def import_stage_class(target: str) -> type[Stage]:
    """The class named by ``"package.module:ClassName"``, imported on first use (registries stay lazy)."""
    module_name, class_name = target.split(":")
    return getattr(importlib.import_module(module_name), class_name)


def add_output(row: dict, name: str, url: str) -> None:
    """Record an artifact URL under ``row["outputs"][name]`` (the manifest's ``outputs`` JSON)."""
    outputs = dict(row.get("outputs") or {})
    outputs[name] = url
    row["outputs"] = outputs


def format_error(exc: BaseException) -> str:
    """``"Type: message"`` for the manifest's ``error`` column."""
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def mark_error(row: dict, stage_name: str, exc: BaseException | str) -> dict:
    """Record a failure on ``row`` unless it already carries one; drops its arrays."""
    if row.get("status") == STATUS_ERROR:
        return row
    row["status"] = STATUS_ERROR
    row["error_stage"] = stage_name
    row["error"] = exc if isinstance(exc, str) else format_error(exc)
    for key in [k for k, v in row.items() if isinstance(v, np.ndarray)]:
        del row[key]
    return row


def run_stage(stage: Stage, row: dict) -> dict:
    """Apply ``stage`` to ``row`` with the contract's error capture and timing."""
    if row.get("status") in (STATUS_ERROR, STATUS_SKIPPED):
        return row
    if not stage.applies_to(row):
        return row
    start = time.perf_counter()
    try:
        missing = [key for key in stage.reads if key not in row or row[key] is None]
        if missing:
            raise MissingKeyError(f"stage {stage.name!r} needs row key {missing[0]!r}, which is missing")
        out = stage.process(dict(row))
        if not isinstance(out, dict):
            raise TypeError(f"stage {stage.name!r} returned {type(out).__name__}, not a dict row")
        for key in stage.drops:
            out.pop(key, None)
    except Exception as exc:  # noqa: BLE001 - bad data must never kill the job
        log.info("row %s failed in %s: %s", row.get("job_id"), stage.name, format_error(exc))
        out = mark_error(dict(row), stage.name, exc)
    seconds = dict(out.get("stage_seconds") or {})
    seconds[stage.name] = round(seconds.get(stage.name, 0.0) + time.perf_counter() - start, 4)
    out["stage_seconds"] = seconds
    return out


def run_stages_inline(stages: Iterable[Stage], rows: Iterable[dict]) -> list[dict]:
    """Run stages over rows in a plain Python loop (tests, notebooks, benchmarks)."""
    stages = list(stages)
    for stage in stages:
        stage.setup()
    try:
        out = []
        for row in rows:
            for stage in stages:
                row = run_stage(stage, row)
            out.append(row)
        return out
    finally:
        for stage in stages:
            stage.close()


# --- transport: a row as two columns with a fixed schema, so Ray Data blocks never disagree ---

def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (set, tuple)):
        return list(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    raise TypeError(f"cannot carry {type(value).__name__} in a row")


def pack_row(row: dict) -> tuple[str, bytes]:
    """Split a row into JSON scalars and an ``.npz`` blob of its numpy arrays."""
    arrays = {k: v for k, v in row.items() if isinstance(v, np.ndarray)}
    scalars = {k: v for k, v in row.items() if k not in arrays}
    blob = b""
    if arrays:
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        blob = buffer.getvalue()
    return json.dumps(scalars, default=_json_default), blob


def unpack_row(row_json: str, blob: bytes | None) -> dict:
    """Inverse of :func:`pack_row`; arrays are loaded with ``allow_pickle=False``."""
    row = json.loads(row_json)
    if blob:
        with np.load(io.BytesIO(blob), allow_pickle=False) as npz:
            for key in npz.files:
                row[key] = npz[key]
    return row
