"""Manifest parts written by workers, each finished row within a bounded delay.

A :class:`PartWriter` (a Ray actor in a run; one or more per run) receives finished rows from
the pipeline's sink tasks and writes them through the job's store (a manifest part or a
trajectory shard, atomically) when ``flush_rows`` rows are buffered, when the buffer holds
``flush_bytes`` of arrays, or when its oldest row has waited ``flush_seconds`` — a background
thread checks the clock, so a finished row reaches the manifest even while no other row
arrives. A failed write is retried on the next tick; :meth:`close` writes the rest and raises
if rows could not be written.
"""

from __future__ import annotations

import logging
import threading
import time

from pipeline.manifest import now_utc
from pipeline.stage import unpack_row

log = logging.getLogger(__name__)


class PartWriter:
    def __init__(self, store, tag: str, *, flush_rows: int = 256, flush_bytes: int = 256 * 2**20,
                 flush_seconds: float = 10.0, tick_seconds: float = 0.5):
        self.store = store
        self.tag = tag
        self.flush_rows = flush_rows
        self.flush_bytes = flush_bytes
        self.flush_seconds = flush_seconds
        self._rows: list[dict] = []
        self._bytes = 0
        self._oldest: float | None = None
        self._lock = threading.Lock()
        self._written = 0
        self._parts = 0
        self._last_error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._tick, args=(tick_seconds,), daemon=True, name="vidflow-writer")
        self._thread.start()

    def add(self, packed: list[tuple[str, bytes]]) -> int:
        """Buffer finished rows (packed as :func:`pipeline.stage.pack_row`); flushes when full."""
        with self._lock:
            for row_json, blob in packed:
                row = unpack_row(row_json, blob)
                row["finished_at"] = now_utc()
                self._rows.append(row)
                self._bytes += len(blob or b"") + len(row_json)
            if self._oldest is None and self._rows:
                self._oldest = time.monotonic()
            if len(self._rows) >= self.flush_rows or self._bytes >= self.flush_bytes:
                self._flush_locked()
            return len(self._rows)

    def _tick(self, seconds: float) -> None:
        while not self._stop.wait(seconds):
            with self._lock:
                if self._oldest is not None and time.monotonic() - self._oldest >= self.flush_seconds:
                    self._flush_locked()

    def _flush_locked(self) -> None:
        if not self._rows:
            return
        try:
            self.store.write_part(self._rows, tag=self.tag)
        except Exception as exc:  # noqa: BLE001 - keep the rows; retried on the next tick / close
            self._last_error = f"{type(exc).__name__}: {exc}"
            log.warning("manifest write failed (%d rows kept for a retry): %s", len(self._rows), self._last_error)
            return
        self._written += len(self._rows)
        self._parts += 1
        self._rows, self._bytes, self._oldest = [], 0, None

    def close(self) -> dict:
        """Write what is buffered and stop; raises OSError when rows could not be written."""
        self._stop.set()
        self._thread.join(timeout=5)
        with self._lock:
            for _ in range(3):
                self._flush_locked()
                if not self._rows:
                    break
                time.sleep(1.0)
            if self._rows:
                raise OSError(f"could not write {len(self._rows)} finished rows: {self._last_error}")
            return {"rows": self._written, "parts": self._parts}
