"""Load a method's diffusers/transformers components from a hub id or a local folder.

One code path for production and tests: every component goes through its class's
``from_pretrained``; ``model`` supplies ``unet/ vae/ text_encoder/ tokenizer/ scheduler/``
subfolders unless the config names a component's own reference. :func:`check_sources` is the
preflight: a local path must exist and hold the component's config file; with
``HF_HUB_OFFLINE=1`` a hub id must already be in the local Hugging Face cache.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
from dataclasses import dataclass
from typing import Any

from pipeline.config import ConfigError
from stages.edit.diffusion.config import DiffusionConfig

log = logging.getLogger(__name__)

# component -> (module, class, the file that marks its folder)
COMPONENTS: dict[str, tuple[str, str, str]] = {
    "unet": ("diffusers", "UNet2DConditionModel", "config.json"),
    "vae": ("diffusers", "AutoencoderKL", "config.json"),
    "text_encoder": ("transformers", "CLIPTextModel", "config.json"),
    "tokenizer": ("transformers", "CLIPTokenizer", "tokenizer_config.json"),
    "scheduler": ("diffusers", "DDIMScheduler", "scheduler_config.json"),
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


@dataclass(frozen=True)
class Source:
    """Where one component comes from: ``ref`` (hub id or local folder) and its ``subfolder``."""

    component: str
    ref: str
    subfolder: str | None

    @property
    def local(self) -> bool:
        return is_local(self.ref)

    def describe(self) -> str:
        return f"{self.ref}/{self.subfolder}" if self.subfolder else self.ref


def is_local(ref: str) -> bool:
    """A local path (absolute, relative with ./ or ~, or an existing folder), not a hub id."""
    return ref.startswith(("/", ".", "~")) or os.path.isdir(os.path.expanduser(ref)) or "\\" in ref


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def source_of(config: DiffusionConfig, component: str) -> Source:
    """The component's own reference when the config names one, else ``model``'s subfolder."""
    own = getattr(config, component, None)
    if own:
        return Source(component, own, None)
    return Source(component, config.model, component)


def check_sources(config: DiffusionConfig, components: tuple[str, ...]) -> None:
    """Preflight: raise ConfigError when a component's source cannot be loaded as configured."""
    for name in components:
        src = source_of(config, name)
        marker = COMPONENTS[name][2]
        if src.local:
            folder = os.path.expanduser(src.ref)
            if not os.path.isdir(folder):
                raise ConfigError(f"{name}: local model path {src.ref!r} does not exist")
            path = os.path.join(folder, src.subfolder or "", marker)
            if not os.path.isfile(path):
                raise ConfigError(f"{name}: {src.describe()!r} is not a diffusers folder (no {marker})")
            continue
        if not _HUB_ID.match(src.ref):
            raise ConfigError(f"{name}: {src.ref!r} is neither an existing local path nor a hub id")
        if hub_offline():
            from huggingface_hub import try_to_load_from_cache

            filename = f"{src.subfolder}/{marker}" if src.subfolder else marker
            found = try_to_load_from_cache(src.ref, filename, revision=config.revision)
            if not isinstance(found, str):
                raise ConfigError(f"{name}: {src.describe()!r} is not in the local Hugging Face cache "
                                  "and HF_HUB_OFFLINE=1 forbids downloading it")


def load_component(config: DiffusionConfig, component: str) -> Any:
    """``from_pretrained`` of one component (weights in float32; the caller casts and places)."""
    module, cls_name, _ = COMPONENTS[component]
    cls = getattr(importlib.import_module(module), cls_name)
    src = source_of(config, component)
    kwargs: dict[str, Any] = {}
    if src.subfolder:
        kwargs["subfolder"] = src.subfolder
    if config.revision:
        kwargs["revision"] = config.revision
    if config.variant and component in ("unet", "vae", "text_encoder"):
        kwargs["variant"] = config.variant
    ref = os.path.expanduser(src.ref) if src.local else src.ref
    log.info("loading %s from %s", component, src.describe())
    obj = cls.from_pretrained(ref, **kwargs)
    if hasattr(obj, "eval"):
        obj.eval()
        obj.requires_grad_(False)
    return obj


def load_components(config: DiffusionConfig, components: tuple[str, ...]) -> dict[str, Any]:
    return {name: load_component(config, name) for name in components}
