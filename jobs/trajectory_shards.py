"""Trajectory shards: the Parquet files the trajectory job writes, and how to read them back.

One row per input video: scalar columns (ids, status, sizes, counts), flat array columns
(``tracks``, ``visibility``, ``path_lengths``, ``sampled_index``, ``c_mot``; shapes restored by
:func:`shard_arrays`) and passthrough string columns from the input manifest. Shards are bounded
by ``shards.max_rows`` rows and ``shards.max_bytes`` array bytes and written atomically; see
docs/trajectories.md for the schema.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import storage
from pipeline.config import ConfigError
from pipeline.manifest import ManifestStore, now_utc
from pipeline.storage import StorageOptions

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShardConfig:
    max_rows: int = 1024  # rows per Parquet shard (at most; dense c_mot rows hit max_bytes first)
    max_bytes: int = 512 * 1024 * 1024  # uncompressed array bytes per shard (at most, one row excepted)
    compression: Literal["zstd", "snappy", "gzip", "none"] = "zstd"

    def __post_init__(self) -> None:
        if self.max_rows < 1 or self.max_bytes < 1:
            raise ConfigError("shards.max_rows and shards.max_bytes must be >= 1")



SHARD_SCHEMA_VERSION = 1
ARRAY_COLUMNS = ("sampled_tracks", "sampled_visibility", "tracks", "visibility", "path_lengths", "sampled_index",
                 "c_mot")
JSON_COLUMNS = ("outputs", "stage_seconds")
SCALAR_FIELDS: list[pa.Field] = [
    pa.field("job_id", pa.string(), nullable=False), pa.field("videoid", pa.string()),
    pa.field("video_id", pa.string()), pa.field("video_uri", pa.string()), pa.field("caption", pa.string()),
    pa.field("status", pa.string(), nullable=False), pa.field("error_stage", pa.string()),
    pa.field("error", pa.string()), pa.field("num_frames", pa.int32()), pa.field("fps", pa.float64()),
    pa.field("width", pa.int32()), pa.field("height", pa.int32()), pa.field("source_fps", pa.float64()),
    pa.field("n_init", pa.int32()), pa.field("n_kept", pa.int32()), pa.field("n_sampled", pa.int32()),
    pa.field("length_threshold", pa.float32()), pa.field("c_mot_channels", pa.string()),
    pa.field("c_mot_uri", pa.string()), pa.field("c_mot_params", pa.string()), pa.field("outputs", pa.string()),
    pa.field("stage_seconds", pa.string()),
    pa.field("content_hash", pa.string()), pa.field("attempt", pa.int32()),
    pa.field("finished_at", pa.timestamp("us", tz="UTC")), pa.field("run_id", pa.string()),
    pa.field("config_hash", pa.string()), pa.field("schema_version", pa.int16()),
]


def shard_schema(passthrough: Iterable[str] = (), c_mot_dtype: str = "float16") -> pa.Schema:
    """Shard columns: scalars, flat array columns (shapes in the docs), passthrough strings."""
    arrays = [pa.field("sampled_tracks", pa.list_(pa.float32())), pa.field("sampled_visibility", pa.list_(pa.bool_())),
              pa.field("tracks", pa.list_(pa.float32())), pa.field("visibility", pa.list_(pa.bool_())),
              pa.field("path_lengths", pa.list_(pa.float32())), pa.field("sampled_index", pa.list_(pa.int32())),
              pa.field("c_mot", pa.large_list(pa.float16() if c_mot_dtype == "float16" else pa.float32()))]
    names = {f.name for f in SCALAR_FIELDS} | set(ARRAY_COLUMNS)
    extra = [pa.field(n, pa.string()) for n in passthrough if n not in names]
    return pa.schema(SCALAR_FIELDS + arrays + extra)


ARRAY_DTYPES = {"tracks": np.float32, "visibility": bool, "path_lengths": np.float32, "sampled_index": np.int32,
                "sampled_tracks": np.float32, "sampled_visibility": bool}


def shard_arrays(record: dict) -> dict[str, np.ndarray]:
    """The arrays of one shard row (a dict from pyarrow / pandas), reshaped: tracks float32
    [T, N_init, 2] (x, y) px, visibility bool [T, N_init], path_lengths float32 [N_init],
    sampled_index int32 [k] (indices into N_init), c_mot [T, 2, H, W] (when inline)."""
    t, n, h, w = (int(record.get(k) or 0) for k in ("num_frames", "n_init", "height", "width"))
    k = int(record.get("n_sampled") or 0)
    shapes = {"tracks": (t, n, 2), "visibility": (t, n), "path_lengths": (n,), "sampled_index": (-1,),
              "sampled_tracks": (t, k, 2), "sampled_visibility": (t, k), "c_mot": (t, 2, h, w)}
    out = {}
    for name, shape in shapes.items():
        value = record.get(name)
        if value is not None:
            arr = value if isinstance(value, np.ndarray) else np.asarray(value, ARRAY_DTYPES.get(name, np.float32))
            out[name] = arr.reshape(shape)
    return out


def read_shard(url: str, options: StorageOptions | None = None) -> list[dict]:
    """Rows of one shard as dicts, array columns as reshaped numpy arrays of their stored dtypes."""
    with storage.local_copy(url, options) as (path, _):
        table = pq.read_table(path)
    rows = [{k: v for k, v in r.items() if k not in ARRAY_COLUMNS}
            for r in table.drop_columns([c for c in ARRAY_COLUMNS if c in table.column_names]).to_pylist()]
    for name in ARRAY_COLUMNS:
        if name not in table.column_names:
            continue
        col = table.column(name).combine_chunks()
        values = col.values.to_numpy(zero_copy_only=False)
        offsets = col.offsets.to_numpy()
        nulls = col.is_null().to_numpy(zero_copy_only=False)
        for i, row in enumerate(rows):
            row[name] = None if nulls[i] else values[offsets[i]:offsets[i + 1]]
    for row in rows:
        row.update(shard_arrays(row))
    return rows


def _scalar(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and value != value:
        return None
    return value


@dataclass
class ShardStore(ManifestStore):
    """Trajectory shards: a :class:`ManifestStore` whose parts carry array columns.

    Parts are split to at most ``shard.max_rows`` rows and ``shard.max_bytes`` array bytes; reading
    for resume and the report loads only the scalar columns; ``compact`` never merges parts (they
    stay bounded) but removes rows superseded by a later attempt, so each job_id appears once.
    """

    shard: ShardConfig = field(default_factory=ShardConfig)
    passthrough: tuple[str, ...] = ()

    def record(self, row: dict) -> dict:
        rec = {}
        for f in self.schema:
            value = row.get(f.name)
            if f.name in JSON_COLUMNS:
                value = value if isinstance(value, str) else json.dumps(value or {}, sort_keys=True, default=str)
            elif f.name in ARRAY_COLUMNS:
                value = np.asarray(value) if value is not None else None
            elif f.name in self.passthrough and value is not None and not isinstance(value, str):
                value = json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else str(value)
            rec[f.name] = _scalar(value)
        rec["finished_at"] = row.get("finished_at") or now_utc()
        rec["schema_version"] = SHARD_SCHEMA_VERSION
        return rec

    def _table(self, records: list[dict]) -> pa.Table:
        columns = []
        for f in self.schema:
            if f.name not in ARRAY_COLUMNS:
                columns.append(pa.array([r.get(f.name) for r in records], type=f.type))
                continue
            item = f.type.value_type
            values = [r.get(f.name) for r in records]
            sizes = [0 if v is None else v.size for v in values]
            offsets = np.concatenate([[0], np.cumsum(sizes)])
            present = [v.ravel() for v in values if v is not None]
            flat = np.concatenate(present) if present else np.zeros(0)
            flat = pa.array(flat.astype(item.to_pandas_dtype(), copy=False), type=item)
            cls = pa.LargeListArray if pa.types.is_large_list(f.type) else pa.ListArray
            off = pa.array(offsets, pa.int64() if cls is pa.LargeListArray else pa.int32())
            columns.append(cls.from_arrays(off, flat, mask=pa.array([v is None for v in values])))
        return pa.Table.from_arrays(columns, schema=self.schema)

    def write_part(self, rows: list[dict], tag: str = "") -> str | None:
        """Write finished rows as bounded shards, atomically; returns the last shard's URL."""
        url = None
        chunk: list[dict] = []
        size = 0
        for rec in (self.record(r) for r in rows):
            nbytes = sum(rec[k].nbytes for k in ARRAY_COLUMNS if rec.get(k) is not None)
            too_big = nbytes > 0 and size + nbytes > self.shard.max_bytes
            if chunk and (len(chunk) >= self.shard.max_rows or too_big):
                url = self._write(chunk, tag)
                chunk, size = [], 0
            chunk.append(rec)
            size += nbytes
        if chunk:
            url = self._write(chunk, tag)
        return url

    def part_name(self, seq: int, tag: str = "") -> str:
        return f"shard-{self.run_id}{'-' + tag if tag else ''}-{seq:05d}.parquet"

    def _write(self, records: list[dict], tag: str) -> str:
        self._seq += 1
        url = storage.join_url(self.url, self.part_name(self._seq, tag))
        self.write_table(url, self._table(records))
        return url

    def write_table(self, url: str, table: pa.Table) -> None:
        buffer = io.BytesIO()
        compression = None if self.shard.compression == "none" else self.shard.compression
        pq.write_table(table, buffer, compression=compression)
        storage.write_bytes(url, buffer.getvalue(), self.options)

    def read(self) -> pd.DataFrame:
        """Scalar and passthrough columns of all shards: one row per job_id, the latest winning."""
        scalars = [n for n in self.schema.names if n not in ARRAY_COLUMNS]
        frames = []
        for url in self.part_urls():
            try:
                frames.append(self.read_columns(url, scalars).to_pandas())
            except Exception as exc:  # noqa: BLE001 - a torn shard from a crash is skipped
                log.warning("skipping unreadable shard %s: %s", url, exc)
        if not frames:
            return pd.DataFrame(columns=scalars)
        merged = pd.concat(frames, ignore_index=True).sort_values(["finished_at"], kind="stable")
        return merged.drop_duplicates("job_id", keep="last").reset_index(drop=True)
