"""Export a finished run as size-bounded WebDataset shards (or Parquet files) for training loaders.

    python -m jobs.export --run s3://b/edited --to s3://b/edited-wds [--format webdataset|parquet]
        [--max-shard-bytes 1000000000] [--max-shard-samples 10000] [--with-video] [--local]
    vidflow export ...   (the same)

What a sample holds, keyed ``{video_id}-{job_id}`` (dots replaced, so loaders split keys right):

* an edit run (``{run}/manifest/``): ``{key}.mp4`` (the edited video), ``{key}.txt`` (the
  prompt), ``{key}.json`` (job and video ids, method, prompts, params, size, fps, frames, source
  ``video_uri``, ``output_uri``, other artifacts' URIs, run id and config hash);
* a trajectory run (``{run}/shards/``): ``{key}.npz`` (the shard's arrays, reshaped:
  ``sampled_tracks`` [T, k, 2] px, ``sampled_visibility`` [T, k], ``sampled_index`` [k],
  ``path_lengths`` [N], and ``tracks``/``visibility``/``c_mot`` where the shard kept them),
  ``{key}.txt`` (the caption), ``{key}.json`` (the scalar columns, ``c_mot_params`` parsed), and
  with ``--with-video`` ``{key}.mp4``, the source video's bytes.

Only rows whose latest attempt is ``ok`` are exported (each job once, even before compaction);
a row whose video can no longer be read is counted and logged, not fatal. Each manifest part or
trajectory shard is exported by one Ray task (``--local``: in this process) into
``{to}/{part:05d}-{n:05d}.tar`` (``.parquet``), closed before it would pass ``--max-shard-bytes``
or ``--max-shard-samples`` (a single larger sample gets a shard of its own); ``{to}/index.json``
lists the shards with their sample counts and bytes. Tar members have fixed mtimes and owners,
so an export of the same run is byte-identical.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import sys
import tarfile
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import storage, webdataset_input
from pipeline.dedupe import job_keys
from pipeline.manifest import ManifestStore
from pipeline.resume import STATUS_NAMES, PreviousOutput, scan_previous
from pipeline.storage import StorageOptions

log = logging.getLogger("vidflow.export")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
FORMATS = ("webdataset", "parquet")


@dataclass(frozen=True)
class ExportLimits:
    max_bytes: int = 1_000_000_000  # a shard is closed before it would pass this many bytes ...
    max_samples: int = 10_000  # ... or this many samples

    def __post_init__(self) -> None:
        if self.max_bytes < 1 or self.max_samples < 1:
            raise ValueError("--max-shard-bytes and --max-shard-samples must be >= 1")


@dataclass
class Sample:
    key: str
    members: dict[str, bytes]  # extension -> bytes

    @property
    def nbytes(self) -> int:
        return sum(len(v) for v in self.members.values())


def sample_key(video_id: object, job_id: object) -> str:
    """A loader-safe key: no dots (webdataset splits the key at the first one), no slashes."""
    return storage.safe_id(f"{video_id}-{job_id}").replace(".", "_")


def _json_value(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, (np.ndarray,)):
        return value.tolist()
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


def _parsed(value):
    if isinstance(value, str) and value[:1] in "{[":
        with contextlib.suppress(ValueError):
            return json.loads(value)
    return value


def read_video_bytes(url: str, options: StorageOptions | None) -> bytes:
    """The bytes of a video URL, a WebDataset member URL included."""
    if webdataset_input.is_member_url(url):
        return b"".join(webdataset_input.read_member(url, options))
    return storage.read_bytes(url, options)


EDIT_META = ("job_id", "video_id", "method", "prompt", "source_prompt", "params", "width", "height", "fps",
             "num_frames", "video_uri", "output_uri", "outputs", "content_hash", "run_id", "config_hash",
             "sample_key", "caption")


def edit_sample(row: dict, options: StorageOptions | None) -> Sample:
    """An edit run's row as a sample (see the module docstring); OSError when its video is gone."""
    meta = {k: _json_value(_parsed(row.get(k))) for k in EDIT_META if row.get(k) is not None}
    return Sample(sample_key(row.get("video_id"), row.get("job_id")), {
        "mp4": read_video_bytes(str(row["output_uri"]), options),
        "txt": str(row.get("prompt") or "").encode(),
        "json": json.dumps(meta, sort_keys=True).encode()})


def trajectory_sample(row: dict, options: StorageOptions | None, with_video: bool) -> Sample:
    """A trajectory shard's row as a sample (see the module docstring)."""
    from jobs.trajectory_shards import ARRAY_COLUMNS, shard_arrays

    arrays = shard_arrays(row)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    meta = {k: _json_value(_parsed(v)) for k, v in row.items() if k not in ARRAY_COLUMNS and v is not None}
    members = {"npz": buffer.getvalue(), "txt": str(row.get("caption") or "").encode(),
               "json": json.dumps(meta, sort_keys=True, default=str).encode()}
    if with_video:
        members["mp4"] = read_video_bytes(str(row["video_uri"]), options)
    return Sample(sample_key(row.get("video_id"), row.get("job_id")), members)


class ShardWriter:
    """Writes samples into bounded shards ``{to}/{prefix}-{n:05d}.{ext}`` (a local file, uploaded on close)."""

    ext = "tar"

    def __init__(self, to_url: str, prefix: str, limits: ExportLimits, options: StorageOptions | None):
        self.to_url, self.prefix, self.limits, self.options = to_url, prefix, limits, options
        self.written: list[dict] = []
        self._count = 0
        self._bytes = 0
        self._open = False

    def add(self, sample: Sample) -> None:
        size = self.sample_bytes(sample)
        if self._open and (self._count >= self.limits.max_samples or self.projected(size) > self.limits.max_bytes):
            self.close_shard()
        if not self._open:
            self.open_shard()
        self.write(sample)
        self._count += 1
        self._bytes += size

    def sample_bytes(self, sample: Sample) -> int:
        return sample.nbytes

    def projected(self, more: int) -> int:
        """The shard's size once ``more`` bytes of samples are added (Parquet: before compression)."""
        return self._bytes + more

    def open_shard(self) -> None:
        self._open, self._count, self._bytes = True, 0, 0
        fd, self._path = tempfile.mkstemp(prefix="vidflow-export-", suffix=f".{self.ext}")
        os.close(fd)
        self.begin()

    def close_shard(self) -> None:
        if not self._open:
            return
        self.end()
        url = storage.join_url(self.to_url, f"{self.prefix}-{len(self.written):05d}.{self.ext}")
        try:
            storage.upload_file(self._path, url, self.options)
            self.written.append({"url": url, "samples": self._count, "bytes": os.path.getsize(self._path)})
        finally:
            os.unlink(self._path)
            self._open = False

    def begin(self) -> None:
        self._tar = tarfile.open(self._path, "w", format=tarfile.USTAR_FORMAT)

    def write(self, sample: Sample) -> None:
        for ext in sorted(sample.members):
            data = sample.members[ext]
            info = tarfile.TarInfo(f"{sample.key}.{ext}")
            info.size, info.mtime, info.mode, info.uname, info.gname = len(data), 0, 0o644, "", ""
            self._tar.addfile(info, io.BytesIO(data))

    def end(self) -> None:
        self._tar.close()

    def discard(self) -> None:
        """Drop a shard left open by a failure (nothing is uploaded)."""
        if self._open:
            self.end()
            os.unlink(self._path)
            self._open = False


class TarShardWriter(ShardWriter):
    """Exact tar sizes: a 512-byte header per member, data padded to 512 bytes, two zero blocks at
    the end and the file padded to tarfile's 10240-byte records."""

    def sample_bytes(self, sample: Sample) -> int:
        return sum(512 + -(-len(v) // 512) * 512 for v in sample.members.values())

    def projected(self, more: int) -> int:
        return -(-(self._bytes + more + 1024) // tarfile.RECORDSIZE) * tarfile.RECORDSIZE


class ParquetShardWriter(ShardWriter):
    """Samples as Parquet rows: ``key`` and one binary column per extension."""

    ext = "parquet"

    def begin(self) -> None:
        self._rows: list[dict] = []

    def write(self, sample: Sample) -> None:
        self._rows.append({"key": sample.key, **sample.members})

    def end(self) -> None:
        names = sorted({k for r in self._rows for k in r if k != "key"})
        schema = pa.schema([pa.field("key", pa.string())] + [pa.field(n, pa.binary()) for n in names])
        pq.write_table(pa.Table.from_pylist(self._rows, schema=schema), self._path)


@dataclass
class PartResult:
    shards: list[dict] = field(default_factory=list)
    samples: int = 0
    not_ok: int = 0
    superseded: int = 0
    unreadable: list[str] = field(default_factory=list)  # "job_id: reason", at most 20 kept


def _latest_ok(rows: list[dict], previous: PreviousOutput) -> Iterator[tuple[bool, dict]]:
    """(exported?, row) for each row: only the latest attempt of a job, when it is ok."""
    if not rows:
        return
    status, attempt = previous.lookup(job_keys([str(r["job_id"]) for r in rows]))
    for row, code, last in zip(rows, status, attempt):
        latest = int(row.get("attempt") or 0) == int(last)
        yield (latest and STATUS_NAMES[int(code)] == "ok" and row.get("status") == "ok"), row


def export_part(part_url: str, kind: str, to_url: str, prefix: str, fmt: str, limits: ExportLimits,
                previous: PreviousOutput, options: StorageOptions | None, with_video: bool = False) -> PartResult:
    """Export one manifest part / trajectory shard (one Ray task in a run)."""
    writer_cls = TarShardWriter if fmt == "webdataset" else ParquetShardWriter
    writer = writer_cls(to_url, prefix, limits, options)
    result = PartResult()
    if kind == "trajectories":
        from jobs.trajectory_shards import read_shard

        rows = read_shard(part_url, options)
    else:
        with storage.local_copy(part_url, options) as (path, _):
            rows = pq.read_table(path).to_pylist()
    try:
        for wanted, row in _latest_ok(rows, previous):
            if not wanted:
                if row.get("status") == "ok":
                    result.superseded += 1
                else:
                    result.not_ok += 1
                continue
            try:
                sample = (trajectory_sample(row, options, with_video) if kind == "trajectories"
                          else edit_sample(row, options))
            except (OSError, EOFError, ValueError, KeyError) as exc:
                if len(result.unreadable) < 20:
                    result.unreadable.append(f"{row.get('job_id')}: {type(exc).__name__}: {exc}")
                log.warning("export: skipping row %s: %s: %s", row.get("job_id"), type(exc).__name__, exc)
                continue
            writer.add(sample)
            result.samples += 1
        writer.close_shard()
    finally:
        writer.discard()
    result.shards = writer.written
    return result


def run_kind(run_url: str, options: StorageOptions | None) -> tuple[str, ManifestStore]:
    """``("trajectories", shards store)`` or ``("edit", manifest store)`` of a finished run."""
    for kind, subdir in (("trajectories", "shards"), ("edit", "manifest")):
        store = ManifestStore(run_url, "export", pa.schema([]), lambda r: r, subdir=subdir, options=options)
        if store.part_urls():
            return kind, store
    raise FileNotFoundError(f"{run_url} holds no finished run (no manifest/ or shards/ parts)")


def export_run(run_url: str, to_url: str, *, fmt: str = "webdataset", limits: ExportLimits | None = None,
               options: StorageOptions | None = None, with_video: bool = False,
               map_fn: Callable | None = None) -> dict:
    """Export a run (see the module docstring); ``map_fn(fn, list_of_arg_tuples)`` runs the parts
    (Ray tasks from the CLI; a plain loop by default). Returns what ``index.json`` holds."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r} (use {' or '.join(FORMATS)})")
    limits = limits or ExportLimits()
    kind, store = run_kind(run_url, options)
    previous = scan_previous(store)
    parts = store.part_urls()
    log.info("export: %s run with %d parts -> %s (%s)", kind, len(parts), to_url, fmt)
    args = [(url, kind, to_url, f"{i:05d}", fmt, limits, previous, options, with_video) for i, url in enumerate(parts)]
    results = map_fn(export_part, args) if map_fn else [export_part(*a) for a in args]
    index = {"format": fmt, "kind": kind, "run": run_url,
             "samples": sum(r.samples for r in results),
             "shards": [s for r in results for s in r.shards],
             "skipped": {"not_ok": sum(r.not_ok for r in results), "superseded": sum(r.superseded for r in results),
                         "unreadable": sum(len(r.unreadable) for r in results)},
             "unreadable_examples": [u for r in results for u in r.unreadable][:20],
             "limits": {"max_shard_bytes": limits.max_bytes, "max_shard_samples": limits.max_samples}}
    storage.write_bytes(storage.join_url(to_url, "index.json"), json.dumps(index, indent=1).encode(), options)
    log.info("export: %d samples in %d shards (%s skipped)", index["samples"], len(index["shards"]), index["skipped"])
    return index


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vidflow export", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="output URL of a finished edit or trajectory run")
    parser.add_argument("--to", required=True, help="where the shards and index.json go")
    parser.add_argument("--format", choices=FORMATS, default="webdataset")
    parser.add_argument("--max-shard-bytes", type=int, default=ExportLimits.max_bytes)
    parser.add_argument("--max-shard-samples", type=int, default=ExportLimits.max_samples)
    parser.add_argument("--with-video", action="store_true", help="trajectory runs: add the source video bytes")
    parser.add_argument("--config", help="job YAML whose storage options apply (credentials, endpoints)")
    parser.add_argument("--local", action="store_true", help="export in this process instead of Ray tasks")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    try:
        limits = ExportLimits(args.max_shard_bytes, args.max_shard_samples)
        options = None
        if args.config:
            from jobs.cli import resolved_config

            options = resolved_config(args.config, None)[1].storage
        map_fn = None
        if not args.local:
            from pipeline import runner

            runner.init_ray()
            map_fn = runner.ray_map
        index = export_run(args.run, args.to, fmt=args.format, limits=limits, options=options,
                           with_video=args.with_video, map_fn=map_fn)
    except (ValueError, FileNotFoundError) as exc:
        log.error("%s", exc)
        return EXIT_USAGE
    return EXIT_OK if index["samples"] or not index["skipped"]["unreadable"] else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
