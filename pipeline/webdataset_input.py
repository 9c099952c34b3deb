"""WebDataset tar shards as input: video2dataset's layout, one manifest row per sample.

A shard is a tar whose members are grouped into samples by key, as the ``webdataset`` package
does: the key is the member path up to the first ``.`` of its file name, the rest is the
extension (``00001.mp4``, ``00001.json``, ``00001.txt`` make sample ``00001``). An input URL is
a ``.tar`` file, a glob (``s3://b/webvid/*.tar``) or a brace range
(``s3://b/webvid/{00000..00099}.tar``).

Shards are indexed by Ray tasks, one per shard, reading only the 512-byte tar headers (the
video bytes are skipped by seeking). Each sample becomes a row whose ``video_uri`` is a
*member URL* (``tar-member://OFFSET:SIZE/NAME::SHARD_URL``): the decode stage reads exactly
that byte range, so no sample is copied or unpacked ahead of time and a row stays ~200 bytes.

Row fields: ``video_uri`` (member URL), ``video_id`` and ``sample_key`` (the key),
``source_shard``, ``caption`` (the ``.txt`` member, else the JSON's ``caption``),
``source_prompt`` (the JSON's, else the caption), ``prompt``/``params``/``mask_uri`` when the
JSON has them, and ``sample_json`` (the ``.json`` member as text, at most 8 kB). The row's
``job_id`` is derived from the key (not the shard or offset), so a rerun skips finished samples
even after the collection was re-sharded. A sample without a video member, and a shard that is
not a readable tar, become error rows (``WebDatasetSampleError``, ``WebDatasetShardError``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import tarfile
from collections.abc import Iterator

from pipeline import storage
from pipeline.prepare import BAD_INPUT_KEY
from pipeline.storage import StorageOptions

log = logging.getLogger(__name__)

MEMBER_PREFIX = "tar-member://"
VIDEO_EXTENSIONS = ("mp4", "webm", "mkv", "mov", "avi", "m4v")
COLUMNS = ("video_uri", "video_id", "sample_key", "source_shard", "caption", "source_prompt", "prompt", "params",
           "mask_uri", "sample_json")
MAX_JSON_BYTES = 8192  # sample_json kept per row (the rest of a larger JSON is dropped)
HEADER_BLOCK = 1 << 16  # read size for remote shards: headers are 512 B, data is skipped by seeking


def is_webdataset_url(url: str) -> bool:
    """Whether an input URL names tar shards (a .tar file, glob or brace range)."""
    return url.lower().rstrip("/").endswith(".tar")


_BRACES = re.compile(r"\{(\d+)\.\.(\d+)\}")


def expand_braces(url: str) -> list[str]:
    """``a/{00..02}.tar`` -> ``a/00.tar, a/01.tar, a/02.tar`` (zero padding kept; ranges nest left to right)."""
    match = _BRACES.search(url)
    if not match:
        return [url]
    lo, hi = match.group(1), match.group(2)
    width = len(lo) if lo.startswith("0") or len(lo) == len(hi) else 0
    head, tail = url[:match.start()], url[match.end():]
    step = 1 if int(hi) >= int(lo) else -1
    return [u for i in range(int(lo), int(hi) + step, step) for u in expand_braces(f"{head}{i:0{width}d}{tail}")]


def shard_urls(url: str, options: StorageOptions | None = None) -> list[str]:
    """The shards an input URL names, sorted (globs listed; brace ranges expanded, not checked)."""
    if _BRACES.search(url):
        return expand_braces(url)
    if storage.is_glob(url):
        fs, path = storage.get_fs(url, options)
        protocol = storage.protocol_of(url)
        found = sorted(p for p in fs.glob(path) if p.lower().endswith(".tar"))
        return [p if protocol == "file" else storage.unstrip(fs, p, protocol) for p in found]
    return [url]


def split_key(name: str) -> tuple[str, str]:
    """``dir/00001.mp4`` -> (``dir/00001``, ``mp4``); ``a/b.seg.json`` -> (``a/b``, ``seg.json``)."""
    folder, base = os.path.split(name)
    if "." not in base:
        return name, ""
    stem, ext = base.split(".", 1)
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def member_url(shard_url: str, member: str, offset: int, size: int) -> str:
    """The URL of one tar member's bytes (see the module docstring)."""
    return f"{MEMBER_PREFIX}{offset}:{size}/{member}::{shard_url}"


def is_member_url(url: str) -> bool:
    return isinstance(url, str) and url.startswith(MEMBER_PREFIX)


def parse_member_url(url: str) -> tuple[str, str, int, int]:
    """``(shard_url, member, offset, size)`` of a member URL; ValueError when malformed."""
    if not is_member_url(url) or "::" not in url:
        raise ValueError(f"not a tar member URL: {url!r}")
    spec, shard = url[len(MEMBER_PREFIX):].split("::", 1)
    span, _, member = spec.partition("/")
    offset, _, size = span.partition(":")
    if not (offset.isdigit() and size.isdigit() and member and shard):
        raise ValueError(f"malformed tar member URL: {url!r}")
    return shard, member, int(offset), int(size)


def read_member(url: str, options: StorageOptions | None = None, chunk: int = 1 << 22):
    """Yield the bytes of a member URL in chunks; FileNotFoundError when the shard is gone."""
    shard, _, offset, size = parse_member_url(url)
    fs, path = storage.get_fs(shard, options)
    if not fs.exists(path):
        raise FileNotFoundError(f"shard not found: {shard}")
    with fs.open(path, "rb") as handle:
        handle.seek(offset)
        left = size
        while left > 0:
            data = handle.read(min(chunk, left))
            if not data:
                raise EOFError(f"shard {shard} ends {left} bytes before the end of its member")
            left -= len(data)
            yield data


def _text(data: bytes | None) -> str | None:
    return data.decode("utf-8", errors="replace").strip() if data is not None else None


def _sample_row(shard_url: str, key: str, members: dict[str, tarfile.TarInfo], small: dict[str, bytes]) -> dict:
    video = next((ext for ext in members if ext in VIDEO_EXTENSIONS), None)
    meta: dict = {}
    raw_json = small.get("json")
    if raw_json is not None:
        try:
            value = json.loads(raw_json)
            meta = value if isinstance(value, dict) else {}
        except ValueError:
            meta = {}
    caption = _text(small.get("txt")) or (str(meta["caption"]) if meta.get("caption") is not None else None)
    source_prompt = meta.get("source_prompt") or caption
    row = {"video_id": key, "sample_key": key, "source_shard": shard_url, "caption": caption,
           "source_prompt": str(source_prompt) if source_prompt else None,
           "sample_json": raw_json.decode("utf-8", errors="replace")[:MAX_JSON_BYTES] if raw_json else None}
    for name in ("prompt", "params", "mask_uri"):
        if meta.get(name) is not None:
            value = meta[name]
            row[name] = json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else str(value)
    if video is None:
        row["video_uri"] = ""
        row[BAD_INPUT_KEY] = (f"WebDatasetSampleError: sample {key!r} of {shard_url} has no video member "
                              f"(members: {', '.join(sorted(members)) or 'none'}; expected one of "
                              f"{', '.join(VIDEO_EXTENSIONS)})")
    else:
        info = members[video]
        row["video_uri"] = member_url(shard_url, info.name, info.offset_data, info.size)
    return row


def index_shard(shard_url: str, options: StorageOptions | None = None) -> list[dict]:
    """The rows of one shard (see the module docstring), in tar order; small members (.json,
    .txt) are read, video members only located."""
    rows: list[dict] = []
    key: str | None = None
    members: dict[str, tarfile.TarInfo] = {}
    small: dict[str, bytes] = {}

    def close_sample() -> None:
        if key is not None:
            rows.append(_sample_row(shard_url, key, members, small))

    try:
        fs, path = storage.get_fs(shard_url, options)
        if not fs.exists(path):
            raise FileNotFoundError(f"shard not found: {shard_url}")
        with fs.open(path, "rb", block_size=HEADER_BLOCK) as handle, tarfile.open(fileobj=handle, mode="r:") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                member_key, ext = split_key(info.name)
                if member_key != key:  # samples are contiguous in a shard, as webdataset writes them
                    close_sample()
                    key, members, small = member_key, {}, {}
                members[ext] = info
                if ext in ("json", "txt") and info.size <= 1 << 20:
                    small[ext] = tar.extractfile(info).read()
        close_sample()
    except Exception as exc:  # noqa: BLE001 - a bad shard is an error row; the other shards go on
        close_sample()
        reason = (f"WebDatasetShardError: {shard_url} is not a readable tar after {len(rows)} samples: "
                  f"{type(exc).__name__}: {exc}")
        log.warning("%s", reason)
        rows.append({"video_uri": "", "video_id": os.path.basename(shard_url) or "shard",
                     "source_shard": shard_url, BAD_INPUT_KEY: reason})
    return rows


def index_shards_task(batch, options: StorageOptions | None = None):
    """Ray Data batch function: shard URLs (column ``shard``) -> JSONL rows (column ``text``)."""
    import pyarrow as pa

    lines = [json.dumps(row, sort_keys=True) for url in batch.column("shard").to_pylist()
             for row in index_shard(url, options)]
    return pa.table({"text": pa.array(lines, pa.string())})


@contextlib.contextmanager
def member_local_copy(url: str, options: StorageOptions | None = None) -> Iterator[tuple[str, str]]:
    """Yield ``(local_path, sha256_hex)`` of a member URL's bytes in a temporary file (removed on exit)."""
    _, member, _, _ = parse_member_url(url)
    with storage.hashed_temp_copy(read_member(url, options), os.path.splitext(member)[1][:8]) as copied:
        yield copied
