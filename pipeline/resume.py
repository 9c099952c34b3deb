"""What earlier runs left in an output: the done-set that resume skips, in 13 bytes per row.

:func:`scan_previous` reads only the ``job_id``, ``status``, ``attempt`` and ``finished_at``
columns of each manifest part (or trajectory shard), one part at a time, and keeps per job a
64-bit key (:func:`pipeline.dedupe.job_key`), a status code and the attempt number: about
13 MB per million rows in the driver (21 MB transient while the last part is merged). The
latest ``finished_at`` of a job wins, as in the manifest itself. A part that cannot be read
is reported and its rows count as not done (they run again; nothing is lost).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from pipeline.dedupe import job_keys

log = logging.getLogger(__name__)

STATUS_NAMES = ("unknown", "ok", "error", "skipped", "pending")
STATUS_CODE = {name: i for i, name in enumerate(STATUS_NAMES)}
DONE_CODES = (STATUS_CODE["ok"], STATUS_CODE["skipped"])
SCAN_COLUMNS = ["job_id", "status", "attempt", "finished_at"]


@dataclass
class PreviousOutput:
    """Sorted job keys of an output with their latest status code and attempt."""

    keys: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))  # uint64 [N], sorted, unique
    status: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint8))  # uint8 [N], STATUS_CODE
    attempt: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))  # int32 [N]
    unreadable: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.keys.size)

    @property
    def nbytes(self) -> int:
        return int(self.keys.nbytes + self.status.nbytes + self.attempt.nbytes)

    def lookup(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Status codes (0 = not in the output) and attempts (0 when absent) of ``keys`` (uint64 [M])."""
        keys = np.asarray(keys, dtype=np.uint64)
        if self.keys.size == 0 or keys.size == 0:
            return np.zeros(keys.size, np.uint8), np.zeros(keys.size, np.int32)
        pos = np.minimum(np.searchsorted(self.keys, keys), self.keys.size - 1)
        hit = self.keys[pos] == keys
        return np.where(hit, self.status[pos], 0).astype(np.uint8), np.where(hit, self.attempt[pos], 0).astype(np.int32)

    def counts(self) -> dict[str, int]:
        """Rows by status name (``ok``, ``error``, ``skipped``, ...)."""
        values, counts = np.unique(self.status, return_counts=True)
        return {STATUS_NAMES[int(v)]: int(c) for v, c in zip(values, counts)}


def _latest(keys: np.ndarray, status: np.ndarray, attempt: np.ndarray,
            finished: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    order = np.lexsort((finished, keys))  # by key, then time
    keys, status, attempt, finished = keys[order], status[order], attempt[order], finished[order]
    last = np.r_[keys[1:] != keys[:-1], True] if keys.size else np.zeros(0, bool)
    return keys[last], status[last], attempt[last], finished[last]


def reduce_latest(keys: np.ndarray, status: np.ndarray, attempt: np.ndarray, finished: np.ndarray) -> PreviousOutput:
    """One entry per key: the row with the latest ``finished`` (int64 [N], any monotone unit) wins."""
    keys, status, attempt, _ = _latest(np.asarray(keys, np.uint64), np.asarray(status), np.asarray(attempt),
                                       np.asarray(finished, np.int64))
    return PreviousOutput(keys, status.astype(np.uint8), attempt.astype(np.int32))


def scan_previous(store) -> PreviousOutput:
    """Scan every part of ``store`` (a :class:`pipeline.manifest.ManifestStore`) for resume."""
    chunks: list[tuple[np.ndarray, ...]] = []
    unreadable = []
    for url in store.part_urls():
        try:
            table = store.read_columns(url, SCAN_COLUMNS)
        except Exception as exc:  # noqa: BLE001 - a torn or unreachable part: its rows run again
            log.warning("resume: cannot read %s (%s: %s); its rows count as not done", url, type(exc).__name__, exc)
            unreadable.append(url)
            continue
        n = table.num_rows
        if n == 0:
            continue
        ids = table.column("job_id").to_pylist()
        status = np.fromiter((STATUS_CODE.get(s or "", 0) for s in table.column("status").to_pylist()), np.uint8, n)
        attempt = (table.column("attempt").fill_null(0).to_numpy(zero_copy_only=False).astype(np.int32)
                   if "attempt" in table.column_names else np.zeros(n, np.int32))
        finished = (table.column("finished_at").cast("int64").fill_null(0).to_numpy(zero_copy_only=False)
                    if "finished_at" in table.column_names else np.zeros(n, np.int64))
        chunks.append((job_keys(ids), status, attempt, finished.astype(np.int64)))
        if sum(c[0].size for c in chunks) > 4_000_000:  # keep the transient bounded: reduce as we go
            chunks = [_latest(*[np.concatenate(x) for x in zip(*chunks)])]
    if not chunks:
        return PreviousOutput(unreadable=unreadable)
    out = reduce_latest(*[np.concatenate(x) for x in zip(*chunks)])
    out.unreadable = unreadable
    log.info("resume: %d earlier rows (%s), %.1f MB", len(out), out.counts(), out.nbytes / 1e6)
    return out

