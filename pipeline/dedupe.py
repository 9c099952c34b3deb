"""Duplicate detection and row numbering at any scale, in 8 bytes per distinct row.

Input rows are prepared in parallel Ray tasks over blocks; each block asks one
:class:`InputRegistry` (a Ray actor in a run, a plain object in tests) to *claim* its rows'
base job ids. The registry answers, per row, how many times that base id was claimed before
(0 for the first occurrence, n for the n-th repeat, which becomes ``{job_id}-dup{n}`` and
``skipped``) and a run-wide sequence number (used to pick which rows get previews).

Job ids are kept as 64-bit keys (:func:`job_keys`) in a sorted ``uint64`` array plus a small
buffer of recent claims, so a million distinct rows cost about 8 MB; repeats are counted in a
dict that holds only ids seen more than once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np

MERGE_EVERY = 65536  # recent keys buffered before they are merged into the sorted array


def job_key(job_id: str) -> int:
    """A 64-bit key of a job id (first 8 bytes of its BLAKE2b digest), as a Python int."""
    return int.from_bytes(hashlib.blake2b(job_id.encode("utf-8"), digest_size=8).digest(), "little")


def job_keys(job_ids: Iterable[str]) -> np.ndarray:
    """:func:`job_key` of each id: uint64 [N]."""
    return np.fromiter((job_key(j) for j in job_ids), dtype=np.uint64)


def occurrence_in_batch(keys: np.ndarray) -> np.ndarray:
    """For each position, how many earlier positions hold the same key: int64 [N].

    ``[7, 3, 7, 7] -> [0, 0, 1, 2]`` (stable: earlier positions count first).
    """
    keys = np.asarray(keys, dtype=np.uint64)
    if keys.size == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    starts = np.r_[True, sorted_keys[1:] != sorted_keys[:-1]]
    group_start = np.maximum.accumulate(np.where(starts, np.arange(keys.size), 0))
    out = np.empty(keys.size, dtype=np.int64)
    out[order] = np.arange(keys.size) - group_start
    return out


class InputRegistry:
    """Claims of base job ids across a whole run (see the module docstring)."""

    def __init__(self) -> None:
        self._sorted = np.zeros(0, dtype=np.uint64)
        self._recent: set[int] = set()
        self._repeats: dict[int, int] = {}  # key -> times claimed so far, only for keys claimed >= 2 times
        self._next_seq = 0
        self.already_done = 0

    def _seen(self, key: int) -> bool:
        if key in self._recent:
            return True
        i = int(np.searchsorted(self._sorted, np.uint64(key)))
        return i < self._sorted.size and int(self._sorted[i]) == key

    def claim(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Claim ``keys`` (uint64 [N], in input order within the block).

        Returns ``(prior, seq)``: int64 [N] claims of the same key before each one, and int64 [N]
        run-wide sequence numbers in claim order.
        """
        keys = np.asarray(keys, dtype=np.uint64)
        in_batch = occurrence_in_batch(keys)
        prior = np.zeros(keys.size, dtype=np.int64)
        before: dict[int, int] = {}  # key -> claims before this batch
        counts: dict[int, int] = {}  # key -> occurrences in this batch
        for i, key in enumerate(keys.tolist()):
            if key not in before:
                before[key] = self._repeats.get(key, 1) if self._seen(key) else 0
            counts[key] = counts.get(key, 0) + 1
            prior[i] = before[key] + in_batch[i]
        for key, count in counts.items():
            total = before[key] + count
            if total > 1:
                self._repeats[key] = total
            if before[key] == 0:
                self._recent.add(key)
        if len(self._recent) >= MERGE_EVERY:
            self._merge()
        seq = np.arange(self._next_seq, self._next_seq + keys.size, dtype=np.int64)
        self._next_seq += keys.size
        return prior, seq

    def add_done(self, count: int) -> None:
        """Count input rows skipped because an earlier run finished them."""
        self.already_done += int(count)

    def stats(self) -> dict:
        return {"claimed": self._next_seq, "distinct": int(self._sorted.size + len(self._recent)),
                "repeated_keys": len(self._repeats), "already_done": self.already_done}

    def _merge(self) -> None:
        recent = np.fromiter(self._recent, dtype=np.uint64, count=len(self._recent))
        self._sorted = np.union1d(self._sorted, recent)
        self._recent = set()
