"""``vidflow models download``: every model a job config names, fetched into one cache.

:func:`collect_models` reads a config the way the job does (the methods it runs and their
declared components, the analysis stages enabled or needed) and lists each model reference:
a diffusers/transformers hub id with its revision and the files its components need (their
subfolders; with a ``variant`` only that variant's weights), a ``torch.hub`` repo with its entry
point (CoTracker), or a local path / object-store URL, which is left alone and reported.
:func:`download` fetches hub ids with ``huggingface_hub.snapshot_download`` into
``{to}/hub`` (the Hugging Face cache layout) and torch.hub repos into ``{to}/torch/hub``, so a
run with ``HF_HUB_OFFLINE=1 HF_HUB_CACHE={to}/hub TORCH_HOME={to}/torch`` needs no network; a
job with ``run.model_cache_url: {to}`` copies the cache onto every node first.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from pipeline.config import ConfigError, from_dict

log = logging.getLogger("vidflow.models")

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2
# weight formats none of the loaders reads (TF, Flax, ONNX, original checkpoints)
IGNORE_PATTERNS: tuple[str, ...] = ("*.msgpack", "*.h5", "*.ckpt", "*.onnx", "*.onnx_data", "*.ot", "*.tflite")


@dataclass(frozen=True)
class ModelRef:
    """One model a config names. ``kind``: ``hf`` (hub id), ``torch_hub`` (repo + ``entry``),
    ``local`` (a path), ``url`` (an fsspec URL copied by the stage at run time) or ``unset``
    (a component with no source configured; ``note`` says which field)."""

    kind: Literal["hf", "torch_hub", "local", "url", "unset"]
    ref: str
    used_by: tuple[str, ...]
    revision: str | None = None
    allow_patterns: tuple[str, ...] | None = None  # None: the whole repository
    entry: str | None = None
    pretrained: bool = True
    note: str = ""


@dataclass
class _Hub:
    """The files one (repo, revision) must provide: subfolders with the variant they need."""

    subfolders: dict[str | None, str | None] = field(default_factory=dict)  # None: the whole repo
    used_by: list[str] = field(default_factory=list)

    def patterns(self) -> tuple[str, ...] | None:
        if None in self.subfolders:
            return None
        out = ["model_index.json"]
        for sub, variant in sorted(self.subfolders.items()):
            out += [f"{sub}/*.json", f"{sub}/*.{variant}*"] if variant else [f"{sub}/*"]
        return tuple(out)


def _classify(ref: str) -> str:
    from stages.edit.diffusion.loading import is_local, is_remote

    return "local" if is_local(ref) else "url" if is_remote(ref) else "hf"


class _Collector:
    def __init__(self) -> None:
        self.hub: dict[tuple[str, str | None], _Hub] = {}
        self.other: list[ModelRef] = []

    def add(self, ref: str, used_by: str, *, revision: str | None = None, subfolder: str | None = None,
            variant: str | None = None) -> None:
        kind = _classify(ref)
        if kind != "hf":
            for i, known in enumerate(self.other):
                if known.ref == ref and known.kind == kind:
                    self.other[i] = replace(known, used_by=(*known.used_by, used_by))
                    return
            self.other.append(ModelRef(kind, ref, (used_by,)))  # type: ignore[arg-type]
            return
        entry = self.hub.setdefault((ref, revision), _Hub())
        entry.subfolders[subfolder] = variant if subfolder is not None else None
        if used_by not in entry.used_by:
            entry.used_by.append(used_by)

    def refs(self) -> list[ModelRef]:
        hub = [ModelRef("hf", repo, tuple(h.used_by), revision=rev, allow_patterns=h.patterns())
               for (repo, rev), h in self.hub.items()]
        return hub + self.other


def _add_diffusion(collector: _Collector, name: str, cls: type, config: Any) -> None:
    from stages.edit.diffusion.loading import component_specs, source_of

    for comp, spec in component_specs(cls.components).items():
        where = f"methods.{name}.{comp}"
        try:
            src = source_of(config, comp, spec)
        except ConfigError as exc:
            collector.other.append(ModelRef("unset", "", (where,), note=str(exc)))
            continue
        variant = getattr(config, "variant", None) if spec.variant else None
        collector.add(src.ref, where, revision=getattr(config, "revision", None), subfolder=src.subfolder,
                      variant=variant)


def _add_stage(collector: _Collector, where: str, config: Any) -> None:
    """Models of an analysis stage's config: depth's DPT, the trajectory stage's CoTracker."""
    from stages.depth.stage import DepthConfig
    from stages.trajectories import TrajectoryConfig

    if isinstance(config, DepthConfig):
        collector.add(config.model, f"{where}.model")
    elif isinstance(config, TrajectoryConfig) and config.tracking.backend == "cotracker":
        co = config.tracking.cotracker
        used = f"{where}.tracking.cotracker"
        if co.source == "local":
            collector.other.append(ModelRef("local", co.repo_or_dir, (used,), entry=co.model))
        else:
            collector.other.append(ModelRef("torch_hub", co.repo_or_dir, (used,), entry=co.model,
                                            pretrained=co.checkpoint is None))
        if co.checkpoint:
            collector.add(co.checkpoint, f"{used}.checkpoint")


def collect_models(job: str, config: Any) -> list[ModelRef]:
    """Every model reference the ``edit``, ``trajectories`` or ``train-revideo`` job ``config`` would load."""
    collector = _Collector()
    if job == "train-revideo":  # SVD, the UNet to train against and a control module to start from
        models = config.revideo
        collector.add(models.model, "revideo.model", revision=models.revision, variant=models.variant)
        for name in ("checkpoint", "controlnet"):
            if getattr(models, name):
                collector.add(getattr(models, name), f"revideo.{name}")
        return collector.refs()
    if job == "trajectories":
        _add_stage(collector, "trajectories", config.trajectories)
        return collector.refs()
    from jobs.edit_videos import method_configs, stage_configs
    from stages.edit import get_method

    configs = method_configs(config, "config")
    methods = sorted({config.run.method, *config.methods})
    for name in methods:
        cls = get_method(name)
        if getattr(cls, "components", None):
            method_cfg = configs.get(name) or from_dict(cls.config_class, {}, f"methods.{name}")
            _add_diffusion(collector, name, cls, method_cfg)
    for spec in stage_configs(config, set(methods), "config"):
        _add_stage(collector, f"stages.{spec.stage_cls.name}", spec.config)
    return collector.refs()


def cache_dirs(to: str | None) -> tuple[str | None, str | None]:
    """``(hf_cache, torch_hub_dir)`` under ``to`` (``{to}/hub``, ``{to}/torch/hub``); None: the defaults."""
    if not to:
        return None, None
    root = os.path.abspath(os.path.expanduser(to))
    return os.path.join(root, "hub"), os.path.join(root, "torch", "hub")


def download(refs: list[ModelRef], to: str | None = None) -> list[tuple[ModelRef, str]]:
    """Fetch every hub model of ``refs``; returns ``(ref, "ok: PATH" | "error: ..." | "left alone: ...")``."""
    hf_cache, torch_hub = cache_dirs(to)
    results = []
    for ref in refs:
        try:
            results.append((ref, _fetch(ref, hf_cache, torch_hub)))
        except Exception as exc:  # noqa: BLE001 - report every model, then fail the command
            results.append((ref, f"error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"))
    return results


def _fetch(ref: ModelRef, hf_cache: str | None, torch_hub: str | None) -> str:
    if ref.kind == "hf":
        from huggingface_hub import snapshot_download

        path = snapshot_download(repo_id=ref.ref, revision=ref.revision,
                                 allow_patterns=list(ref.allow_patterns) if ref.allow_patterns else None,
                                 ignore_patterns=list(IGNORE_PATTERNS), cache_dir=hf_cache)
        return f"ok: {path}"
    if ref.kind == "torch_hub":
        import torch

        if torch_hub:
            torch.hub.set_dir(torch_hub)
        torch.hub.load(ref.ref, ref.entry, source="github", pretrained=ref.pretrained, trust_repo=True)
        return f"ok: {torch.hub.get_dir()}"
    if ref.kind == "unset":
        return f"not configured: {ref.note}"
    return "left alone: a local path is used as it is" if ref.kind == "local" else \
        "left alone: the stage copies this URL at run time"


def _hub_offline() -> bool:
    from stages.edit.diffusion.loading import hub_offline

    return hub_offline()


def describe(ref: ModelRef) -> str:
    rev = f"@{ref.revision}" if ref.revision else ""
    files = f" files {list(ref.allow_patterns)}" if ref.allow_patterns else ""
    entry = f" entry {ref.entry}" if ref.entry else ""
    return f"{ref.kind} {ref.ref}{rev}{entry}{files} (used by {', '.join(ref.used_by)})"


def download_command(config_path: str | None, to: str | None, job: str | None, overrides: list[str]) -> int:
    """``vidflow models download``: exit 0 when every hub model is fetched, 1 when one failed, 2 on a bad config."""
    from jobs.cli import resolved_config
    from stages.edit import UnknownMethodError

    try:
        job, config = resolved_config(config_path, job, overrides)
        refs = collect_models(job, config)
    except (ConfigError, UnknownMethodError, OSError, ValueError) as exc:
        log.error("%s", exc)
        return EXIT_CONFIG
    if not refs:
        log.info("the %s config names no model (nothing to download)", job)
        return EXIT_OK
    if any(r.kind == "hf" for r in refs) and _hub_offline():
        log.warning("HF_HUB_OFFLINE is set: only models already in the cache can be found; unset it to download")
    failed = 0
    for ref, outcome in download(refs, to):
        failed += outcome.startswith(("error", "not configured"))
        (log.error if outcome.startswith(("error", "not configured")) else log.info)("%s: %s", describe(ref), outcome)
    hf_cache, torch_hub = cache_dirs(to)
    if to:
        log.info("run offline with: HF_HUB_OFFLINE=1 HF_HUB_CACHE=%s TORCH_HOME=%s (or run.model_cache_url: %s "
                 "to copy it onto every node)", hf_cache, os.path.dirname(torch_hub or ""), os.path.abspath(to))
    return EXIT_FAILED if failed else EXIT_OK
