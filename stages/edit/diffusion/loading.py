"""Load a method's diffusers/transformers components from a hub id, a local folder or an fsspec URL.

One code path for production and tests: every component goes through its class's
``from_pretrained``. A method declares its components either as names of the Stable Diffusion
1.x set (:data:`COMPONENTS`: ``unet vae text_encoder tokenizer scheduler``) or as a mapping
``name -> ComponentSpec`` naming each component's class, the file that marks its folder, and the
config field whose folder holds it (``model`` unless the spec says otherwise, e.g. ReVideo's
``controlnet`` in its converted ``checkpoint`` folder). A config field named like the component
(``unet: DIR``) always wins and names the component's own folder.

:func:`check_sources` is the preflight: a local path must exist and hold the component's marker
file; a remote URL (``s3://``, ``gs://``, ...) must hold it too; with ``HF_HUB_OFFLINE=1`` a hub
id must already be in the local Hugging Face cache. Remote folders are copied once per process
into a local cache before ``from_pretrained``.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pipeline import storage
from pipeline.config import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ComponentSpec:
    """How to load one component.

    ``module``/``cls``: the class whose ``from_pretrained`` loads it; ``marker``: the file that marks
    its folder; ``ref_field``: the config field holding the hub id / folder / URL that contains it;
    ``subfolder``: its folder inside that reference (default: the component's name); ``variant``:
    whether the config's ``variant`` (e.g. ``fp16`` weight files) applies to it.
    """

    module: str
    cls: str
    marker: str = "config.json"
    ref_field: str = "model"
    subfolder: str | None = None
    variant: bool = False


# the Stable Diffusion 1.x set; a method naming components by a tuple gets these classes
COMPONENTS: dict[str, ComponentSpec] = {
    "unet": ComponentSpec("diffusers", "UNet2DConditionModel", variant=True),
    "vae": ComponentSpec("diffusers", "AutoencoderKL", variant=True),
    "text_encoder": ComponentSpec("transformers", "CLIPTextModel", variant=True),
    "tokenizer": ComponentSpec("transformers", "CLIPTokenizer", "tokenizer_config.json"),
    "scheduler": ComponentSpec("diffusers", "DDIMScheduler", "scheduler_config.json"),
}
Components = tuple[str, ...] | Mapping[str, ComponentSpec]
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


@dataclass(frozen=True)
class Source:
    """Where one component comes from: ``ref`` (hub id, local folder or URL) and its ``subfolder``."""

    component: str
    ref: str
    subfolder: str | None

    @property
    def local(self) -> bool:
        return is_local(self.ref)

    @property
    def remote(self) -> bool:
        return is_remote(self.ref)

    def describe(self) -> str:
        return f"{self.ref.rstrip('/')}/{self.subfolder}" if self.subfolder else self.ref


def is_remote(ref: str) -> bool:
    """An fsspec URL other than a local file (``s3://``, ``gs://``, ``memory://``, ...)."""
    return "://" in ref and storage.protocol_of(ref) not in ("file", "local")


def is_local(ref: str) -> bool:
    """A local path (absolute, relative with ./ or ~, file://, or an existing folder), not a hub id."""
    if ref.startswith("file://"):
        return True
    if "://" in ref:
        return False
    return ref.startswith(("/", ".", "~")) or os.path.isdir(os.path.expanduser(ref)) or "\\" in ref


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def component_specs(components: Components) -> dict[str, ComponentSpec]:
    """``name -> ComponentSpec`` of a method's components (names resolve through :data:`COMPONENTS`)."""
    if isinstance(components, Mapping):
        return dict(components)
    unknown = [name for name in components if name not in COMPONENTS]
    if unknown:
        raise ValueError(f"component {unknown[0]!r} has no default class; declare a ComponentSpec for it")
    return {name: COMPONENTS[name] for name in components}


def source_of(config: Any, component: str, spec: ComponentSpec | None = None) -> Source:
    """The component's own reference when the config names one, else its spec's folder's subfolder."""
    own = getattr(config, component, None)
    if own:
        return Source(component, own, None)
    spec = spec or COMPONENTS.get(component) or ComponentSpec("", "")
    ref = getattr(config, spec.ref_field, None)
    if not ref:
        raise ConfigError(f"{component}: no source configured: set {spec.ref_field!r} (the folder that holds "
                          f"{spec.subfolder or component}/) or {component!r}")
    return Source(component, ref, spec.subfolder or component)


def check_sources(config: Any, components: Components) -> None:
    """Preflight: raise ConfigError when a component's source cannot be loaded as configured."""
    for name, spec in component_specs(components).items():
        src = source_of(config, name, spec)
        marker = spec.marker
        if src.local:
            folder = _local_path(src.ref)
            if not os.path.isdir(folder):
                raise ConfigError(f"{name}: local model path {src.ref!r} does not exist")
            path = os.path.join(folder, src.subfolder or "", marker)
            if not os.path.isfile(path):
                raise ConfigError(f"{name}: {src.describe()!r} is not a diffusers folder (no {marker})")
            continue
        if src.remote:
            url = storage.join_url(src.ref, *([src.subfolder] if src.subfolder else []), marker)
            try:
                found = storage.exists(url)
            except Exception as exc:  # noqa: BLE001 - any storage failure is a configuration problem here
                raise ConfigError(f"{name}: cannot reach {src.describe()!r}: {exc}") from exc
            if not found:
                raise ConfigError(f"{name}: {src.describe()!r} is not a diffusers folder (no {marker})")
            continue
        if not _HUB_ID.match(src.ref):
            raise ConfigError(f"{name}: {src.ref!r} is neither an existing local path nor a hub id")
        if hub_offline():
            from huggingface_hub import try_to_load_from_cache

            filename = f"{src.subfolder}/{marker}" if src.subfolder else marker
            found = try_to_load_from_cache(src.ref, filename, revision=getattr(config, "revision", None))
            if not isinstance(found, str):
                raise ConfigError(f"{name}: model {src.describe()!r} is not in the local Hugging Face cache "
                                  "and HF_HUB_OFFLINE=1 forbids downloading it: fetch it beforehand with "
                                  "`vidflow models download --config YOUR.yaml [--to DIR]` (then HF_HUB_CACHE=DIR/hub, "
                                  "or run.model_cache_url: DIR)")


def _local_path(ref: str) -> str:
    return os.path.expanduser(ref[len("file://"):] if ref.startswith("file://") else ref)


def fetch_remote_folder(url: str, cache_dir: str | None = None) -> str:
    """A local copy of the remote folder ``url`` (every file under it); returns its path.

    The copy is keyed by the URL and every file's name, size and version stamp (ETag/mtime), so it
    is made once per content and a changed folder is fetched again.
    """
    fs, path = storage.get_fs(url)
    listing = fs.find(path, detail=True)
    files = sorted(name for name, info in listing.items() if info.get("type", "file") != "directory")
    if not files:
        raise FileNotFoundError(f"no files under {url!r}")
    stamps = [(name, listing[name].get("size"), str(next((listing[name][k] for k in
              ("ETag", "etag", "mtime", "LastModified", "created") if listing[name].get(k)), "")))
              for name in files]
    digest = hashlib.sha256(repr((url, stamps)).encode()).hexdigest()[:16]
    local = os.path.join(cache_dir or os.path.join(tempfile.gettempdir(), "vidflow-models"), digest)
    done = os.path.join(local, ".complete")
    if os.path.exists(done):
        return local
    root = path.rstrip("/")
    staging = f"{local}.part-{os.getpid()}"  # another process may be fetching the same folder
    for file in files:
        target = os.path.join(staging, os.path.relpath(file, root))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        fs.get(file, target)
    with open(os.path.join(staging, ".complete"), "w") as handle:
        handle.write(url)
    try:
        os.rename(staging, local)
    except OSError:  # the other process won; its copy is the same content
        shutil.rmtree(staging, ignore_errors=True)
        if not os.path.exists(done):
            raise
    log.info("copied %d files of %s to %s", len(files), url, local)
    return local


def load_component(config: Any, component: str, spec: ComponentSpec | None = None) -> Any:
    """``from_pretrained`` of one component (weights in float32; the caller casts and places)."""
    spec = spec or component_specs((component,))[component]
    cls = getattr(importlib.import_module(spec.module), spec.cls)
    src = source_of(config, component, spec)
    kwargs: dict[str, Any] = {}
    if src.remote:
        ref = fetch_remote_folder(src.describe())
    else:
        ref = _local_path(src.ref) if src.local else src.ref
        if src.subfolder:
            kwargs["subfolder"] = src.subfolder
        if getattr(config, "revision", None) and not src.local:
            kwargs["revision"] = config.revision
    if getattr(config, "variant", None) and spec.variant:
        kwargs["variant"] = config.variant
    log.info("loading %s (%s) from %s", component, spec.cls, src.describe())
    obj = cls.from_pretrained(ref, **kwargs)
    if hasattr(obj, "eval"):
        obj.eval()
        obj.requires_grad_(False)
    return obj


def load_components(config: Any, components: Components) -> dict[str, Any]:
    return {name: load_component(config, name, spec) for name, spec in component_specs(components).items()}
