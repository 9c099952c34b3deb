"""The stage workers' log of a run, with row ids: ``{output}/logs/{run_id}-stages[-NNN].log``.

Every stage worker (actor or task process) installs one :class:`RowLogHandler` on its root
logger. While a row runs (:func:`row_context`), each log record of that worker is stamped with
the stage name and the row's ``job_id``; records logged outside a row carry ``-``. The handler
buffers formatted lines and ships them to the run's :class:`LogSink` actor after each batch of
rows (a non-blocking call), so a record costs no network round trip. The sink appends the
lines to a local file and copies it under the output URL every ``flush_seconds`` and when the
run closes it; past ``part_bytes`` it starts the next part, so no copy grows without bound.

A worker that floods the log is cut at ``max_lines_per_row`` lines per row (the cut is logged
once per row). Configuration values are never logged here: secrets stay out of the file.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import tempfile
import threading
import time

from pipeline import storage
from pipeline.storage import StorageOptions

FORMAT = "%(asctime)s %(levelname)s [%(vidflow_stage)s %(vidflow_row)s] %(name)s: %(message)s"
MAX_LINES_PER_ROW = 200

_ROW: contextvars.ContextVar[tuple[str, str]] = contextvars.ContextVar("vidflow_row", default=("-", "-"))


@contextlib.contextmanager
def row_context(stage: str, job_id: str | None):
    """Stamp this thread's log records with ``stage`` and ``job_id`` while the block runs."""
    token = _ROW.set((stage, str(job_id or "-")))
    try:
        yield
    finally:
        _ROW.reset(token)


def current_row() -> tuple[str, str]:
    """``(stage, job_id)`` of the row this thread is running, ``("-", "-")`` outside a row."""
    return _ROW.get()


class RowLogHandler(logging.Handler):
    """Formats records with their row and keeps them until :meth:`ship` sends them to the sink."""

    def __init__(self, sink, level: int = logging.INFO, max_lines_per_row: int = MAX_LINES_PER_ROW):
        super().__init__(level)
        self.sink = sink
        self.max_lines_per_row = max_lines_per_row
        self.setFormatter(logging.Formatter(FORMAT))
        self._lines: list[str] = []
        self._per_row: dict[tuple[str, str], int] = {}
        self._guard = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        stage, row = current_row()
        record.vidflow_stage, record.vidflow_row = stage, row
        try:
            line = self.format(record)
        except Exception:  # noqa: BLE001 - a bad record must not break the row
            self.handleError(record)
            return
        with self._guard:
            if row != "-":
                count = self._per_row.get((stage, row), 0) + 1
                self._per_row[(stage, row)] = count
                if count > self.max_lines_per_row:
                    if count == self.max_lines_per_row + 1:
                        self._lines.append(f"{line.split('] ', 1)[0]}] vidflow: more than "
                                           f"{self.max_lines_per_row} log lines for this row; the rest are dropped")
                    return
            self._lines.append(line)

    def ship(self) -> int:
        """Send the buffered lines to the sink (without waiting); returns how many were sent."""
        with self._guard:
            lines, self._lines = self._lines, []
            self._per_row.clear()
        if lines and self.sink is not None:
            self.sink.add.remote(lines)
        return len(lines)


_INSTALLED: dict[str, RowLogHandler] = {}  # per worker process: the handler for each sink


def install(sink) -> RowLogHandler | None:
    """Install (once per process and sink) the handler that ships this worker's records to ``sink``."""
    if sink is None:
        return None
    actor_id = getattr(sink, "_actor_id", None)
    key = actor_id.hex() if actor_id is not None else str(id(sink))
    handler = _INSTALLED.get(key)
    if handler is None:
        for old in _INSTALLED.values():  # a new run in a reused worker: the old sink is gone
            logging.getLogger().removeHandler(old)
        _INSTALLED.clear()
        handler = _INSTALLED[key] = RowLogHandler(sink)
        root = logging.getLogger()
        root.addHandler(handler)
        if root.getEffectiveLevel() > logging.INFO:
            root.setLevel(logging.INFO)
    return handler


def ship(sink) -> None:
    """Ship this process's buffered lines for ``sink`` (after a batch of rows)."""
    handler = install(sink)
    if handler is not None:
        handler.ship()


class LogSink:
    """Collects the stage workers' log lines of one run (a Ray actor in a run; see the module docstring)."""

    def __init__(self, output_url: str, run_id: str, options: StorageOptions | None = None, *,
                 flush_seconds: float = 10.0, part_bytes: int = 64 * 2**20):
        self.base = storage.join_url(output_url, "logs", f"{storage.safe_id(run_id)}-stages")
        self.options = options
        self.flush_seconds = flush_seconds
        self.part_bytes = part_bytes
        self._part = 0
        self._size = 0
        self._lines = 0
        self._dirty = False
        self._last_copy = time.monotonic()
        self._lock = threading.Lock()
        self._open_part()

    def _open_part(self) -> None:
        fd, self._path = tempfile.mkstemp(prefix="vidflow-stages-", suffix=".log")
        self._file = os.fdopen(fd, "a", encoding="utf-8")
        self._size = 0

    def _url(self, part: int) -> str:
        return f"{self.base}.log" if part == 0 else f"{self.base}-{part:03d}.log"

    def add(self, lines: list[str]) -> int:
        with self._lock:
            text = "".join(line + "\n" for line in lines)
            self._file.write(text)
            self._size += len(text)
            self._lines += len(lines)
            self._dirty = True
            if self._size >= self.part_bytes:
                self._copy()
                self._file.close()
                os.unlink(self._path)
                self._part += 1
                self._open_part()
            elif time.monotonic() - self._last_copy >= self.flush_seconds:
                self._copy()
            return self._lines

    def _copy(self) -> None:
        self._file.flush()
        self._last_copy = time.monotonic()
        try:
            storage.upload_file(self._path, self._url(self._part), self.options)
            self._dirty = False
        except Exception:  # noqa: BLE001 - a log copy must never end a run; retried on the next add/close
            logging.getLogger(__name__).warning("could not copy the stage log to %s", self._url(self._part))

    def close(self) -> dict:
        """Copy what is left; returns the number of lines and the URL of the last part."""
        with self._lock:
            if self._dirty or self._lines == 0:
                self._copy()
            self._file.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._path)
            return {"lines": self._lines, "url": self._url(self._part), "parts": self._part + 1}
