"""Compaction of a run's output parts, in bounded chunks, never losing a row.

After a run the output holds many small parts (one per writer flush) and, for retried jobs,
superseded rows from earlier runs. :func:`plan_chunks` groups the parts into chunks of at
most ``max_rows`` rows (from Parquet footers only); :func:`compact_chunk` (a Ray task per
chunk in a run) reads the parts of one chunk, drops rows superseded by a later attempt
(``superseded``: keys of jobs re-run by this run, for rows written by earlier runs) and
repeated rows of one job (a copy left by a compaction that was killed), sorts the rest by
``video_id`` and ``job_id``, writes them as new parts, and only then removes exactly the
parts it read. A part that cannot be read stays where it is, with its rows.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline import storage
from pipeline.dedupe import job_keys

log = logging.getLogger(__name__)


def part_rows(store, url: str) -> int:
    """Rows of one part from its Parquet footer (-1 when the part cannot be read)."""
    fs, path = storage.get_fs(url, store.options)
    try:
        with fs.open(path, "rb") as handle:
            return pq.ParquetFile(handle).metadata.num_rows
    except Exception as exc:  # noqa: BLE001 - unreadable parts are left alone
        log.warning("compaction: leaving unreadable part %s (%s: %s)", url, type(exc).__name__, exc)
        return -1


def plan_chunks(store, max_rows: int, *, merge: bool = True) -> list[list[str]]:
    """Readable parts grouped into chunks of at most ``max_rows`` rows (a larger part is a chunk alone).

    ``merge=False`` keeps every part its own chunk (bounded trajectory shards).
    """
    chunks: list[list[str]] = []
    current: list[str] = []
    size = 0
    for url in store.part_urls():
        n = part_rows(store, url)
        if n < 0:
            continue
        if not merge:
            chunks.append([url])
            continue
        if current and size + n > max_rows:
            chunks.append(current)
            current, size = [], 0
        current.append(url)
        size += n
    if current:
        chunks.append(current)
    return chunks


def _keep_mask(table: pa.Table, superseded: np.ndarray, run_id: str) -> np.ndarray:
    """bool [N]: rows to keep (see the module docstring)."""
    n = table.num_rows
    keep = np.ones(n, dtype=bool)
    if n == 0:
        return keep
    ids = table.column("job_id").to_pylist()
    if superseded.size and "run_id" in table.column_names:
        earlier = np.asarray([r != run_id for r in table.column("run_id").to_pylist()], dtype=bool)
        keep &= ~(np.isin(job_keys(ids), superseded) & earlier)
    # one row per job: the latest finished_at wins (a killed compaction can leave two copies)
    finished = (table.column("finished_at").cast("int64").fill_null(0).to_numpy(zero_copy_only=False)
                if "finished_at" in table.column_names else np.zeros(n, np.int64))
    order = np.lexsort((finished, np.asarray(ids, dtype=object).astype(str)))
    sorted_ids = np.asarray(ids, dtype=object)[order]
    last = np.r_[sorted_ids[1:] != sorted_ids[:-1], True]
    latest = np.zeros(n, dtype=bool)
    latest[order[last]] = True
    return keep & latest


def compact_chunk(store, urls: list[str], superseded: np.ndarray, run_id: str, tag: str) -> dict:
    """Rewrite one chunk of parts (see the module docstring); returns what it did."""
    tables, read = [], []
    for url in urls:
        try:
            tables.append(store.read_columns(url, None))
            read.append(url)
        except Exception as exc:  # noqa: BLE001 - an unreadable part stays, with its rows
            log.warning("compaction: leaving unreadable part %s (%s: %s)", url, type(exc).__name__, exc)
    result = {"read": read, "written": [], "rows_in": 0, "rows_out": 0}
    if not tables:
        return result
    table = pa.concat_tables(tables, promote_options="permissive")
    keep = _keep_mask(table, np.asarray(superseded, np.uint64), run_id)
    result["rows_in"], result["rows_out"] = table.num_rows, int(keep.sum())
    if len(read) == 1 and keep.all():
        return result  # nothing to merge or drop: leave the part as it is
    table = table.filter(pa.array(keep))
    sort_keys = [(c, "ascending") for c in ("video_id", "job_id") if c in table.column_names]
    if sort_keys and table.num_rows:
        table = table.take(pc.sort_indices(table, sort_keys=sort_keys))
    for i, piece in enumerate(store.split_for_write(table)):
        url = storage.join_url(store.url, store.part_name(i + 1, f"c{tag}"))
        store.write_table(url, piece.cast(store.schema) if piece.schema != store.schema else piece)
        result["written"].append(url)
    for url in read:
        if url not in result["written"]:
            storage.remove(url, store.options)
    return result


def compact(store, superseded: np.ndarray, run_id: str, *, max_rows: int = 100_000, merge: bool = True,
            map_fn: Callable | None = None) -> dict:
    """Compact ``store`` chunk by chunk; ``map_fn(fn, list_of_arg_tuples)`` runs chunks (Ray tasks
    in a run; a plain loop by default). Returns totals."""
    chunks = plan_chunks(store, max_rows, merge=merge)
    args = [(store, chunk, superseded, run_id, f"{i:04d}") for i, chunk in enumerate(chunks)]
    results = map_fn(compact_chunk, args) if map_fn else [compact_chunk(*a) for a in args]
    totals = {"chunks": len(chunks), "rows_in": sum(r["rows_in"] for r in results),
              "rows_out": sum(r["rows_out"] for r in results),
              "parts": sum(len(r["written"]) or len(r["read"]) for r in results)}
    log.info("compaction: %d chunks, %d rows -> %d rows in %d parts", totals["chunks"], totals["rows_in"],
             totals["rows_out"], totals["parts"])
    return totals
