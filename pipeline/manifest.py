"""Parquet manifest schemas (versioned), reading inputs, writing and merging outputs.

Input manifests are Parquet, CSV or JSONL at any fsspec URL (or a glob of video URLs, for
scheduled runs). ``video_uri`` is required; ``video_id``, ``method``, ``prompt``,
``source_prompt``, ``mask_uri`` and ``params`` (a JSON object of per-row overrides) are
optional; any other column is carried through to the output as a string.

The output manifest is a set of Parquet parts under ``{output}/manifest/``, one row per job.
Parts are written as the run streams, so a crash keeps what finished; :class:`ManifestStore`
reads them back (latest attempt of each ``job_id`` wins) and compacts them at the end of a run.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import storage
from pipeline.stage import STATUS_PENDING, STATUS_SKIPPED
from pipeline.storage import StorageOptions

log = logging.getLogger(__name__)

INPUT_SCHEMA_VERSION = 1
OUTPUT_SCHEMA_VERSION = 1
VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".gif")
MANIFEST_EXTENSIONS = (".parquet", ".pq", ".csv", ".jsonl", ".ndjson", ".json")
INPUT_FIELDS = ("video_uri", "video_id", "method", "prompt", "source_prompt", "mask_uri", "params")


class ManifestError(ValueError):
    """The input manifest as a whole cannot be used (missing file, no video_uri column)."""


OUTPUT_FIELDS: list[pa.Field] = [
    pa.field("job_id", pa.string(), nullable=False),
    pa.field("video_id", pa.string()),
    pa.field("video_uri", pa.string()),
    pa.field("method", pa.string()),
    pa.field("prompt", pa.string()),
    pa.field("source_prompt", pa.string()),
    pa.field("mask_uri", pa.string()),
    pa.field("params", pa.string()),
    pa.field("status", pa.string(), nullable=False),
    pa.field("error_stage", pa.string()),
    pa.field("error", pa.string()),
    pa.field("output_uri", pa.string()),
    pa.field("preview_uri", pa.string()),
    pa.field("outputs", pa.string()),  # JSON object: extra artifact URIs by name
    pa.field("stage_seconds", pa.string()),  # JSON object: seconds by stage
    pa.field("content_hash", pa.string()),
    pa.field("source_fingerprint", pa.string()),
    pa.field("num_frames", pa.int32()),
    pa.field("width", pa.int32()),
    pa.field("height", pa.int32()),
    pa.field("fps", pa.float64()),
    pa.field("attempt", pa.int32()),
    pa.field("finished_at", pa.timestamp("us", tz="UTC")),
    pa.field("run_id", pa.string()),
    pa.field("config_hash", pa.string()),
    pa.field("schema_version", pa.int16()),
]
OUTPUT_NAMES = [f.name for f in OUTPUT_FIELDS]


def _read_table(url: str, options: StorageOptions | None) -> pd.DataFrame:
    fs, path = storage.get_fs(url, options)
    if not fs.exists(path):
        raise ManifestError(f"input manifest not found: {url}")
    lower = path.lower()
    with fs.open(path, "rb") as handle:
        data = handle.read()
    if lower.endswith((".parquet", ".pq")):
        return pq.read_table(io.BytesIO(data)).to_pandas()
    if lower.endswith(".csv"):
        return pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False, na_values=[""])
    if lower.endswith((".jsonl", ".ndjson", ".json")):
        return pd.read_json(io.BytesIO(data), lines=True, dtype=False)
    raise ManifestError(f"unsupported manifest format {os.path.splitext(path)[1]!r}: use .parquet, .csv or .jsonl")


def _clean(value: object) -> object:
    if value is None or value is pd.NaT:
        return None
    if isinstance(value, float) and value != value:  # NaN from pandas
        return None
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        try:
            return value.item()
        except (ValueError, AttributeError):
            pass
    return value


def as_text(value: object) -> str | None:
    """An input value as text: strings stay, dicts/lists become JSON, missing values None."""
    value = _clean(value)
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return str(value)


def read_input(url: str, *, method: str | None = None, options: StorageOptions | None = None,
               required: tuple[str, ...] = ("video_uri",)) -> list[dict]:
    """Rows of an input manifest, or of a glob/prefix of video files, all in memory.

    For small inputs (tools, tests, benchmarks); jobs stream their input through Ray Data
    (:mod:`pipeline.input_source`) and never hold it whole.

    Every value is a string or None (``params`` dicts are JSON-encoded). Glob inputs get
    ``source_fingerprint`` (size + ETag/mtime) so a replaced file becomes a new job.
    """
    if not url.lower().endswith(MANIFEST_EXTENSIONS):
        fs, path = storage.get_fs(url, options)
        if not (storage.is_glob(url) or fs.isdir(path) or url.lower().endswith(VIDEO_EXTENSIONS)):
            raise ManifestError(f"unsupported manifest {url!r}: use .parquet, .csv or .jsonl, "
                                "a folder or a glob of videos")
        files = [u for u in storage.list_files(url, options) if u.lower().endswith(VIDEO_EXTENSIONS)]
        rows = [{"video_uri": uri, "method": method, "source_fingerprint": storage.file_fingerprint(uri, options)}
                for uri in files]
        log.info("%s matched %d videos", url, len(rows))
        return rows
    frame = _read_table(url, options)
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise ManifestError(f"input manifest {url} has no {missing[0]!r} column "
                            f"(columns: {', '.join(map(str, frame.columns))})")
    rows = []
    for record in frame.to_dict(orient="records"):
        row = {str(k): as_text(v) for k, v in record.items()}
        if method and not row.get("method"):
            row["method"] = method
        rows.append(row)
    return rows


SAMPLE_LOCATION_FIELDS = ("video_uri", "source_shard")


def make_job_id(row: dict) -> str:
    """Deterministic id of an input row: hash of its input fields and passthrough columns."""
    keys = sorted(k for k in row if k not in OUTPUT_NAMES or k in INPUT_FIELDS or k == "source_fingerprint")
    if row.get("sample_key"):  # a WebDataset sample is known by its key, wherever its shard and offset are
        keys = [k for k in keys if k not in SAMPLE_LOCATION_FIELDS]
    text = json.dumps({k: as_text(row.get(k)) for k in keys}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def assign_job_ids(rows: Iterable[dict]) -> list[dict]:
    """Give each row a ``job_id``; an exact repeat of an earlier row is ``skipped``.

    The n-th repeat gets ``{job_id}-dup{n}`` so every input row keeps exactly one output row
    and no ``job_id`` repeats.
    """
    seen: dict[str, int] = {}
    out = []
    for row in rows:
        row = dict(row)
        base = make_job_id(row)
        count = seen.get(base, 0)
        seen[base] = count + 1
        row["job_id"] = base if count == 0 else f"{base}-dup{count}"
        row.setdefault("status", STATUS_PENDING)
        if count:
            row["status"] = STATUS_SKIPPED
            row["error"] = f"duplicate of input row with job_id {base}"
        out.append(row)
    return out


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def to_output_record(row: dict, passthrough: Iterable[str]) -> dict:
    """Flatten a finished row into output-manifest columns (fixed ones plus passthrough)."""
    rec: dict = {}
    for name in OUTPUT_NAMES:
        value = row.get(name)
        if name in ("stage_seconds", "outputs"):
            value = json.dumps(value or {}, sort_keys=True) if not isinstance(value, str) else value
        elif name == "params":
            value = as_text(value) if value not in ({}, None, "") else None
        rec[name] = _clean(value)
    rec["finished_at"] = row.get("finished_at") or now_utc()
    rec["schema_version"] = OUTPUT_SCHEMA_VERSION
    for name in passthrough:
        if name not in rec:
            rec[name] = as_text(row.get(name))
    return rec


def output_schema(passthrough: Iterable[str]) -> pa.Schema:
    extra = [pa.field(n, pa.string()) for n in passthrough if n not in OUTPUT_NAMES]
    return pa.schema(OUTPUT_FIELDS + extra)


@dataclass
class ManifestStore:
    """The Parquet parts of a run's output manifest under ``{base_url}/{subdir}/``.

    ``schema`` and ``to_record`` default to the edit job's output manifest; other jobs (the
    trajectory preprocessing shards) pass their own.
    """

    base_url: str
    run_id: str
    schema: pa.Schema
    to_record: Callable[[dict], dict]
    subdir: str = "manifest"
    options: StorageOptions | None = None
    _seq: int = 0

    @property
    def url(self) -> str:
        return storage.join_url(self.base_url, self.subdir)

    def part_urls(self) -> list[str]:
        return [u for u in storage.list_files(self.url, self.options)
                if u.endswith(".parquet") and "/.tmp-" not in u]

    def read(self) -> pd.DataFrame:
        """All parts merged: one row per ``job_id``, the latest ``finished_at`` winning."""
        frames = []
        for url in self.part_urls():
            try:
                frames.append(pq.read_table(io.BytesIO(storage.read_bytes(url, self.options))).to_pandas())
            except Exception as exc:  # noqa: BLE001 - a torn part from a crash is skipped
                log.warning("skipping unreadable manifest part %s: %s", url, exc)
        if not frames:
            return pd.DataFrame(columns=self.schema.names)
        merged = pd.concat(frames, ignore_index=True)
        merged = merged.sort_values(["finished_at"], kind="stable")
        return merged.drop_duplicates("job_id", keep="last").reset_index(drop=True)

    def records(self) -> list[dict]:
        """The merged rows as dicts, with missing values as None (not NaN). Small outputs only."""
        frame = self.read()
        return [{k: _clean(v) for k, v in rec.items()} for rec in frame.to_dict(orient="records")]

    def read_columns(self, url: str, columns: list[str] | None) -> pa.Table:
        """``columns`` (those present; None: all) of one part, reading no other column."""
        fs, path = storage.get_fs(url, self.options)
        with fs.open(path, "rb") as handle:
            names = pq.ParquetFile(handle).schema_arrow.names
            cols = None if columns is None else [c for c in columns if c in names]
            handle.seek(0)
            return pq.read_table(handle, columns=cols)

    def part_name(self, seq: int, tag: str = "") -> str:
        return f"part-{self.run_id}{'-' + tag if tag else ''}-{seq:05d}.parquet"

    def write_part(self, rows: list[dict], tag: str = "") -> str | None:
        """Write finished rows as one Parquet part, atomically; returns its URL.

        ``tag`` tells concurrent writers' parts apart (``part-{run_id}-{tag}-{seq}.parquet``).
        """
        if not rows:
            return None
        self._seq += 1
        url = storage.join_url(self.url, self.part_name(self._seq, tag))
        self.write_table(url, pa.Table.from_pylist([self.to_record(r) for r in rows], schema=self.schema))
        return url

    def write_table(self, url: str, table: pa.Table) -> None:
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        storage.write_bytes(url, buffer.getvalue(), self.options)

    def split_for_write(self, table: pa.Table) -> list[pa.Table]:
        """How a compacted table is cut into parts (one part; shards override this to stay bounded)."""
        return [table]
