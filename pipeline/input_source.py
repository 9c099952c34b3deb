"""Input manifests as Ray Data datasets: read by workers, never materialised in the driver.

:func:`describe_input` looks at the input cheaply in the driver (a CSV's header line, a
Parquet footer, the first JSONL lines) to learn its columns and fail early on a missing file,
an unsupported format or a missing required column. :func:`open_dataset` then reads it with
Ray Data: CSV with every column as a string (so a column never changes type between blocks),
Parquet as stored, JSONL as text lines parsed in the preparation tasks, WebDataset tar shards
(``.tar``, a glob or a brace range of them) indexed by one task per shard into JSONL rows
(:mod:`pipeline.webdataset_input`). A glob or folder of
videos is listed in the driver (one listing with sizes and ETags: about 150 bytes a file) and
handed to Ray Data as one Arrow table.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import os
from dataclasses import dataclass

import pyarrow as pa

from pipeline import storage, webdataset_input
from pipeline.manifest import MANIFEST_EXTENSIONS, VIDEO_EXTENSIONS, ManifestError
from pipeline.storage import StorageOptions

log = logging.getLogger(__name__)
JSONL_PROBE_LINES = 1000  # JSONL lines read in the driver to learn the columns


@dataclass(frozen=True)
class InputInfo:
    """What the driver knows of an input before reading it."""

    url: str
    kind: str  # "csv", "parquet", "jsonl", "videos" or "webdataset"
    columns: tuple[str, ...]
    videos: pa.Table | None = None  # for kind "videos": video_uri, source_fingerprint
    rows: int | None = None  # input rows when known without reading them (Parquet footer, listing)
    shards: tuple[str, ...] = ()  # for kind "webdataset": the tar shards' URLs


def _kind(url: str) -> str:
    lower = url.lower()
    if lower.endswith((".parquet", ".pq")):
        return "parquet"
    if lower.endswith(".csv"):
        return "csv"
    if lower.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    raise ManifestError(f"unsupported manifest format {os.path.splitext(url)[1]!r}: use .parquet, .csv or .jsonl")


def _video_listing(url: str, options: StorageOptions | None, method: str | None) -> pa.Table:
    fs, path = storage.get_fs(url, options)
    if storage.is_glob(url):
        found = fs.glob(path, detail=True)
    elif fs.isdir(path):
        found = fs.find(path, detail=True)
    else:
        found = {path: fs.info(path)} if fs.exists(path) else {}
    uris, prints = [], []
    protocol = storage.protocol_of(url)
    for name in sorted(found):
        info = found[name]
        if info.get("type") == "directory" or not name.lower().endswith(VIDEO_EXTENSIONS):
            continue
        uris.append(name if protocol == "file" else storage.unstrip(fs, name, protocol))
        prints.append(storage.fingerprint_of(info))
    log.info("%s matched %d videos", url, len(uris))
    return pa.table({"video_uri": pa.array(uris, pa.string()), "method": pa.array([method] * len(uris), pa.string()),
                     "source_fingerprint": pa.array(prints, pa.string())})


def describe_input(url: str, options: StorageOptions | None = None, *, method: str | None = None,
                   required: tuple[str, ...] = ("video_uri",)) -> InputInfo:
    """Columns and kind of an input (see the module docstring); raises ManifestError when unusable."""
    if webdataset_input.is_webdataset_url(url):
        return _describe_shards(url, options)
    if not url.lower().endswith(MANIFEST_EXTENSIONS):
        fs, path = storage.get_fs(url, options)
        if not (storage.is_glob(url) or fs.isdir(path) or url.lower().endswith(VIDEO_EXTENSIONS)):
            raise ManifestError(f"unsupported manifest {url!r}: use .parquet, .csv or .jsonl, "
                                "a folder or a glob of videos")
        table = _video_listing(url, options, method)
        return InputInfo(url, "videos", tuple(table.column_names), table, rows=table.num_rows)
    kind = _kind(url)
    fs, path = storage.get_fs(url, options)
    if not fs.exists(path):
        raise ManifestError(f"input manifest not found: {url}")
    rows = None
    with fs.open(path, "rb") as handle:
        if kind == "parquet":
            import pyarrow.parquet as pq

            parquet = pq.ParquetFile(handle)
            columns, rows = tuple(parquet.schema_arrow.names), parquet.metadata.num_rows
        elif kind == "csv":
            first = io.TextIOWrapper(handle, encoding="utf-8", newline="").readline()
            columns = tuple(next(csv.reader([first]), []))
        else:
            names: dict[str, None] = {}
            text = io.TextIOWrapper(handle, encoding="utf-8")
            for _, line in zip(range(JSONL_PROBE_LINES), text):
                with contextlib.suppress(ValueError):  # a bad line becomes an error row when prepared
                    value = json.loads(line) if line.strip() else None
                    if isinstance(value, dict):
                        names.update(dict.fromkeys(value))
            columns = tuple(names)
    missing = [c for c in required if c not in columns]
    if missing:
        raise ManifestError(f"input manifest {url} has no {missing[0]!r} column (columns: {', '.join(columns)})")
    return InputInfo(url, kind, columns, rows=rows)


def _describe_shards(url: str, options: StorageOptions | None) -> InputInfo:
    shards = webdataset_input.shard_urls(url, options)
    if not shards:
        raise ManifestError(f"no WebDataset shards match {url}")
    if len(shards) == 1:
        fs, path = storage.get_fs(shards[0], options)
        if not fs.exists(path):
            raise ManifestError(f"WebDataset shard not found: {shards[0]}")
    log.info("%s names %d WebDataset shards", url, len(shards))
    return InputInfo(url, "webdataset", webdataset_input.COLUMNS, shards=tuple(shards))


def distinct_values(info: InputInfo, options: StorageOptions | None, column: str, limit: int | None = None,
                    max_values: int = 1000) -> list[str]:
    """Distinct non-null values of one input column, streamed in the driver one column at a time.

    Only that column is read (Parquet column projection, CSV ``include_columns``), in batches,
    so memory is bounded by the distinct values (at most ``max_values`` are kept).
    """
    if column not in info.columns:
        return []
    seen: set[str] = set()
    taken = 0

    def add(values) -> bool:
        nonlocal taken
        for value in values:
            if limit is not None and taken >= limit:
                return False
            taken += 1
            if value is not None and len(seen) < max_values:
                seen.add(str(value))
        return True

    if info.kind == "videos":
        add(info.videos.column(column).to_pylist())
        return sorted(seen)
    if info.kind == "webdataset":  # samples carry no per-row method; reading every shard here would not scale
        return []
    fs, path = storage.get_fs(info.url, options)
    with fs.open(path, "rb") as handle:
        if info.kind == "parquet":
            import pyarrow.parquet as pq

            for batch in pq.ParquetFile(handle).iter_batches(columns=[column], batch_size=65536):
                if not add(batch.column(0).to_pylist()):
                    break
        elif info.kind == "csv":
            import pyarrow.csv as pacsv

            convert = pacsv.ConvertOptions(include_columns=[column], column_types={column: pa.string()},
                                           strings_can_be_null=True)
            skip = pacsv.ParseOptions(invalid_row_handler=lambda _row: "skip")  # they become error rows later
            for batch in pacsv.open_csv(handle, convert_options=convert, parse_options=skip):
                if not add(batch.column(0).to_pylist()):
                    break
        else:
            for line in io.TextIOWrapper(handle, encoding="utf-8"):
                if line.strip() and not add([json.loads(line).get(column)]):
                    break
    return sorted(seen)


CSV_BLOCK_BYTES = 1 << 22  # bytes of CSV text parsed per block


def csv_blocks_task(batch: pa.Table, columns: tuple[str, ...], options: StorageOptions | None = None):
    """Ray Data batch function (a generator): the CSV file named in ``batch`` as blocks of rows,
    every column a string (empty cells None).

    A record with the wrong number of fields does not fail the read: it becomes a row holding the
    record's text (``input_line``) and the reason (``BAD_INPUT_KEY``), which preparation records
    as a ``ManifestLineError`` row. Every block has the header's columns plus those two.
    """
    import pyarrow.csv as pacsv

    from pipeline.prepare import BAD_INPUT_KEY

    names = list(columns) + [BAD_INPUT_KEY, "input_line"]
    schema = pa.schema([pa.field(n, pa.string()) for n in names])
    bad: list[dict] = []

    def invalid(row) -> str:
        bad.append({BAD_INPUT_KEY: f"ManifestLineError: CSV record has {row.actual_columns} fields, the header "
                                   f"{row.expected_columns} (record {row.text[:80]!r})",
                    "input_line": row.text[:500]})
        return "skip"

    convert = pacsv.ConvertOptions(column_types={c: pa.string() for c in columns}, strings_can_be_null=True)
    for url in batch.column("url").to_pylist():
        fs, path = storage.get_fs(url, options)
        with fs.open(path, "rb") as handle:
            reader = pacsv.open_csv(handle, read_options=pacsv.ReadOptions(block_size=CSV_BLOCK_BYTES),
                                    parse_options=pacsv.ParseOptions(invalid_row_handler=invalid),
                                    convert_options=convert)
            for chunk in reader:
                table = pa.Table.from_batches([chunk])
                for name in (BAD_INPUT_KEY, "input_line"):
                    table = table.append_column(name, pa.nulls(table.num_rows, pa.string()))
                if bad:
                    table = pa.concat_tables([table, pa.Table.from_pylist(bad, schema=schema)])
                    bad.clear()
                yield table.select(names).cast(schema)
            if bad:
                yield pa.Table.from_pylist(bad, schema=schema)
                bad.clear()


def pyarrow_filesystem(url: str, options: StorageOptions | None):
    """A pyarrow filesystem over the same fsspec filesystem the rest of vidflow uses, and the path."""
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    fs, path = storage.get_fs(url, options)
    return PyFileSystem(FSSpecHandler(fs)), path


def open_dataset(info: InputInfo, options: StorageOptions | None = None, *, limit: int | None = None,
                 num_cpus: float = 0.25):
    """The input as a Ray Data dataset of raw rows (see the module docstring)."""
    import ray

    if info.kind == "videos":
        ds = ray.data.from_arrow(info.videos)
    elif info.kind == "webdataset":  # one indexing task per shard, rows as JSONL text (see webdataset_input)
        ds = ray.data.from_items([{"shard": url} for url in info.shards],
                                 override_num_blocks=max(1, min(len(info.shards), 10_000)))
        ds = ds.map_batches(webdataset_input.index_shards_task, fn_kwargs={"options": options}, batch_size=1,
                            batch_format="pyarrow", num_cpus=num_cpus)
    else:
        fs, path = pyarrow_filesystem(info.url, options)
        if info.kind == "csv":  # read by our task so a malformed record becomes an error row, not a failed read
            # half the CPU request of the preparation tasks: a different request keeps Ray Data from fusing
            # them into this one reading task, so the file's blocks are prepared in parallel
            ds = ray.data.from_items([{"url": info.url}]).map_batches(
                csv_blocks_task, fn_kwargs={"columns": info.columns, "options": options}, batch_size=1,
                batch_format="pyarrow", num_cpus=num_cpus / 2)
        elif info.kind == "parquet":
            ds = ray.data.read_parquet(path, filesystem=fs, partitioning=None, num_cpus=num_cpus)
        else:
            ds = ray.data.read_text(path, filesystem=fs, drop_empty_lines=True, partitioning=None, num_cpus=num_cpus)
    if limit is not None:
        ds = ds.limit(max(0, limit))
    return ds
