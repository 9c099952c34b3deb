"""fsspec I/O: URLs, atomic writes, safe keys, content hashes.

Every path the pipeline writes is built with :func:`join_url` from a run's output URL and
sanitised parts, so no input (a hostile ``video_id`` such as ``../../x``) can name a location
outside that URL. Local writes go through a temporary file and ``os.replace``; object stores
get a single PUT, which is atomic there.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import re
import tempfile
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import fsspec
from fsspec.core import url_to_fs

_SAFE_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
_GLOB_CHARS = re.compile(r"[*?\[]")
MAX_ID_LENGTH = 96


def _default_file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _default_file_mode()


# fsspec protocols that share one set of options (the key of ``storage.options`` is either name)
_PROTOCOL_ALIASES = {"s3a": "s3", "gcs": "gs", "https": "http"}


def _merge(base: dict, extra: Mapping[str, Any]) -> dict:
    """``base`` with ``extra`` merged over it; nested mappings (``client_kwargs``, ...) merge key by key."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


@dataclass(frozen=True, repr=False)
class StorageOptions:
    """Credentials, endpoint and free-form fsspec ``storage_options`` for object stores.

    The five fixed fields cover the common S3 case; unset ones fall back to the usual environment
    variables (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
    ``GOOGLE_APPLICATION_CREDENTIALS``). ``options`` maps a protocol (``s3``, ``gs``, ``http``, ...)
    to fsspec storage options merged over them (``profile``, ``token``, ``requester_pays``,
    ``config_kwargs: {retries: ...}``, ``default_block_size``, ...); ``prefixes`` maps a URL prefix
    (``s3://requester-pays-bucket/``) to options merged over those for every URL under it, the
    longest prefix last. Nested mappings merge key by key. Secret values in here never reach
    ``summary.json``, the manifest or the logs (:func:`pipeline.config.redact`).
    """

    endpoint_url: str | None = None
    region: str | None = None
    key: str | None = None
    secret: str | None = None
    anon: bool = False
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    prefixes: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for prefix in self.prefixes:
            if "://" not in prefix:
                raise ValueError(f"storage.prefixes: {prefix!r} must be a URL prefix such as 's3://bucket/'")

    def __repr__(self) -> str:  # secrets never reach a log line through a repr
        from pipeline.config import redact

        fields = redact({f.name: getattr(self, f.name) for f in dataclasses.fields(self)})
        return f"StorageOptions({', '.join(f'{k}={v!r}' for k, v in fields.items())})"

    def _fixed(self, protocol: str) -> dict:
        if protocol == "s3":
            opts: dict = {}
            endpoint = self.endpoint_url or os.environ.get("AWS_ENDPOINT_URL")
            client: dict = {}
            if endpoint:
                client["endpoint_url"] = endpoint
            if self.region:
                client["region_name"] = self.region
            if client:
                opts["client_kwargs"] = client
            if self.key:
                opts["key"] = self.key
            if self.secret:
                opts["secret"] = self.secret
            if self.anon:
                opts["anon"] = True
            return opts
        if protocol == "gs" and self.anon:
            return {"token": "anon"}
        return {}

    def for_protocol(self, protocol: str, url: str | None = None) -> dict:
        """fsspec storage options for ``protocol`` (and, given ``url``, every matching prefix)."""
        canonical = _PROTOCOL_ALIASES.get(protocol, protocol)
        opts = self._fixed(canonical)
        for name in (canonical, *[a for a, c in _PROTOCOL_ALIASES.items() if c == canonical]):
            if name in self.options:
                opts = _merge(opts, self.options[name])
        if url is not None:
            for prefix in sorted((p for p in self.prefixes if url.startswith(p)), key=len):
                opts = _merge(opts, self.prefixes[prefix])
        return opts


def protocol_of(url: str) -> str:
    """The fsspec protocol of ``url`` ("file" for plain paths)."""
    if "://" not in url:
        return "file"
    return url.split("://", 1)[0].lower()


def get_fs(url: str, options: StorageOptions | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """Filesystem and protocol-stripped path for ``url``."""
    opts = (options or StorageOptions()).for_protocol(protocol_of(url), url)
    return url_to_fs(url, **opts)


def join_url(base: str, *parts: str) -> str:
    """Join ``parts`` under ``base``; every part must be a safe relative key.

    Raises ValueError for an absolute part, an empty part, or one containing ``..``.
    """
    out = base.rstrip("/")
    for part in parts:
        for piece in str(part).split("/"):
            if piece in ("", ".", "..") or "\\" in piece:
                raise ValueError(f"unsafe path component {part!r}")
            out = f"{out}/{piece}"
    return out


def safe_id(raw: str) -> str:
    """A filesystem- and URL-safe identifier derived from ``raw``.

    Keeps ``[A-Za-z0-9._-]``, replaces other runs with ``_``, strips leading dots and
    underscores, and appends a short hash whenever it changed anything, so two different
    raw ids never collide. ``"../../x"`` becomes ``"x-<hash>"``.
    """
    raw = str(raw)
    cleaned = _SAFE_CHARS.sub("_", raw).strip("._-")
    cleaned = cleaned.replace("..", "_")[:MAX_ID_LENGTH]
    if cleaned != raw or not cleaned:
        digest = hashlib.sha1(raw.encode("utf-8")).hexdigest()[:8]
        cleaned = f"{cleaned}-{digest}" if cleaned else f"id-{digest}"
    return cleaned


def is_glob(url: str) -> bool:
    return bool(_GLOB_CHARS.search(url))


def exists(url: str, options: StorageOptions | None = None) -> bool:
    fs, path = get_fs(url, options)
    return fs.exists(path)


def read_bytes(url: str, options: StorageOptions | None = None) -> bytes:
    fs, path = get_fs(url, options)
    return fs.cat_file(path)


@contextlib.contextmanager
def _atomic_local_file(path: str) -> Iterator[str]:
    """A temporary file beside local ``path`` to write; it replaces ``path`` only if the block succeeds.

    Readers never see a half-written file, and a failed write leaves nothing behind.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_bytes(url: str, data: bytes, options: StorageOptions | None = None) -> str:
    """Write ``data`` to ``url`` atomically; returns ``url``."""
    fs, path = get_fs(url, options)
    if protocol_of(url) == "file":
        with _atomic_local_file(path) as tmp, open(tmp, "wb") as handle:
            handle.write(data)
    else:
        fs.pipe_file(path, data)
    return url


def upload_file(local_path: str, url: str, options: StorageOptions | None = None) -> str:
    """Copy a local file to ``url`` atomically; returns ``url``."""
    fs, path = get_fs(url, options)
    if protocol_of(url) == "file":
        with _atomic_local_file(path) as tmp, open(local_path, "rb") as src, open(tmp, "wb") as dst:
            while chunk := src.read(1 << 22):
                dst.write(chunk)
    else:
        fs.put_file(local_path, path)
    return url


def remove(url: str, options: StorageOptions | None = None) -> None:
    fs, path = get_fs(url, options)
    with contextlib.suppress(FileNotFoundError):
        fs.rm_file(path)


def list_files(url_or_glob: str, options: StorageOptions | None = None) -> list[str]:
    """Full URLs of the files matching a glob, or under a prefix, sorted."""
    fs, path = get_fs(url_or_glob, options)
    protocol = protocol_of(url_or_glob)
    if is_glob(url_or_glob):
        found = fs.glob(path)
    elif fs.isdir(path):
        found = fs.find(path)
    else:
        found = [path] if fs.exists(path) else []
    found = [p for p in found if not fs.isdir(p)]
    if protocol == "file":
        return sorted(found)
    return sorted(unstrip(fs, p, protocol) for p in found)


def unstrip(fs: fsspec.AbstractFileSystem, path: str, protocol: str) -> str:
    if protocol == "memory":
        return f"memory://{path.lstrip('/')}"
    return fs.unstrip_protocol(path)


def file_fingerprint(url: str, options: StorageOptions | None = None) -> str:
    """Size plus ETag or mtime: cheap identity of a stored file's version."""
    fs, path = get_fs(url, options)
    return fingerprint_of(fs.info(path))


def fingerprint_of(info: dict) -> str:
    """``size:ETag`` (or mtime) from an fsspec ``info``/listing entry."""
    stamp = info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("LastModified") or ""
    return f"{info.get('size', '')}:{str(stamp).strip(chr(34))}"


@contextlib.contextmanager
def local_copy(url: str, options: StorageOptions | None = None) -> Iterator[tuple[str, str]]:
    """Yield ``(local_path, sha256_hex)`` for ``url``, hashing while it is copied.

    A local file is hashed in place; a remote one, or a WebDataset member URL
    (``tar-member://...``, :mod:`pipeline.webdataset_input`), is streamed into a temporary file
    that is removed on exit. Raises FileNotFoundError when the URL does not exist.
    """
    if url.startswith("tar-member://"):
        from pipeline.webdataset_input import member_local_copy

        with member_local_copy(url, options) as copied:
            yield copied
        return
    fs, path = get_fs(url, options)
    digest = hashlib.sha256()
    if protocol_of(url) == "file":
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 22):
                digest.update(chunk)
        yield path, digest.hexdigest()
        return
    if not fs.exists(path):
        raise FileNotFoundError(f"no such object: {url}")

    def chunks() -> Iterator[bytes]:
        with fs.open(path, "rb") as src:
            while chunk := src.read(1 << 22):
                yield chunk

    with hashed_temp_copy(chunks(), os.path.splitext(path)[1][:8]) as copied:
        yield copied


@contextlib.contextmanager
def hashed_temp_copy(chunks: Iterable[bytes], suffix: str = "") -> Iterator[tuple[str, str]]:
    """Write ``chunks`` to a temporary file, hashing them; yield ``(path, sha256_hex)``; remove it on exit."""
    digest = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(prefix="vidflow-", suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as dst:
            for chunk in chunks:
                digest.update(chunk)
                dst.write(chunk)
        yield tmp, digest.hexdigest()
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def artifact_dir(cache_url: str, stage: str, content_hash: str, config_hash: str) -> str:
    """``{cache}/{stage}/{content_hash[:32]}-{config_hash}``: where a stage caches one video's artifacts.

    Keyed by the video's content and the stage's config, so ten prompts on one video share one
    fit, and a rerun (or another job with the same cache URL) finds it.
    """
    return join_url(cache_url, safe_id(stage), f"{safe_id(content_hash[:32])}-{safe_id(config_hash)}")


def content_hash(url: str, options: StorageOptions | None = None) -> str:
    """SHA-256 hex digest of the bytes at ``url``."""
    with local_copy(url, options) as (_, digest):
        return digest


def check_writable(url: str, options: StorageOptions | None = None) -> None:
    """Write and delete a probe object under ``url``; raises OSError naming the URL."""
    probe = join_url(url, f".vidflow-probe-{uuid.uuid4().hex}")
    try:
        write_bytes(probe, b"ok", options)
        remove(probe, options)
    except Exception as exc:  # noqa: BLE001 - any backend error means not writable
        raise OSError(f"output location {url!r} is not writable: {type(exc).__name__}: {exc}") from exc
