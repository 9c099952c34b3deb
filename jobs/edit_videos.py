"""Edit videos at dataset scale.

    python -m jobs.edit_videos --manifest URL --output URL [--config FILE] [--method NAME]
                               [--limit N] [--dry-run] [--demo] [--set key=value ...]

Works alone (starts a local Ray) and under
``ray job submit --working-dir . -- python -m jobs.edit_videos ...`` (connects to the cluster).
Exit code: 0 done; 1 more rows failed than ``run.max_failure_fraction``; 2 config/preflight.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from dataclasses import dataclass, field

from jobs.common import (
    EXIT_PREFLIGHT,
    Job,
    PreflightError,
    RunConfig,
    absolute_url,
    add_common_args,
    check_output,
    execute,
    new_run_id,
    run_overrides,
    setup_logging,
)
from pipeline import storage
from pipeline.config import ConfigError, config_hash, from_dict, load_config, replace
from pipeline.input_source import describe_input, distinct_values
from pipeline.manifest import ManifestError, ManifestStore, output_schema, to_output_record
from pipeline.runner import StageSpec
from pipeline.stage import RunContext
from pipeline.storage import StorageOptions
from stages.decode import DecodeConfig, DecodeStage
from stages.edit import UnknownMethodError, get_method
from stages.encode import EncodeConfig, EncodeStage
from stages.registry import STAGE_ORDER, get_stage
from stages.validate import ValidateConfig, ValidateStage

log = logging.getLogger("jobs.edit_videos")
# the demo's settings: atlas_edit, "fast" preset (a few minutes for the sample on 2 CPU cores)
DEMO_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "atlas_edit.yaml")


@dataclass(frozen=True)
class EditJobConfig:
    run: RunConfig = field(default_factory=RunConfig)
    storage: StorageOptions = field(default_factory=StorageOptions)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    encode: EncodeConfig = field(default_factory=EncodeConfig)
    methods: dict[str, dict] = field(default_factory=dict)  # method name -> its config
    stages: dict[str, dict] = field(default_factory=dict)  # analysis stage name -> {enabled, ...config}


def stage_configs(config: EditJobConfig, methods: set[str], where: str) -> list[StageSpec]:
    """The analysis stages (stages/registry.py order) enabled in config or needed by a method.

    A stage only some rows need (a method's ``optional_needs``) and the config does not enable
    runs with ``apply_to: needing``: on the rows that ask for it (``EditStage.row_needs``).
    """
    unknown = sorted(set(config.stages) - set(STAGE_ORDER))
    if unknown:
        raise ConfigError(f"{where}: stages.{unknown[0]}: unknown stage (known: {', '.join(STAGE_ORDER)})")
    needed = {n for m in methods for n in get_method(m).needs}
    optional = {n for m in methods for n in get_method(m).optional_needs} - needed
    specs = []
    for name in STAGE_ORDER:
        data = dict(config.stages.get(name) or {})
        enabled = data.pop("enabled", name in config.stages)
        if not (enabled or name in needed or name in optional):
            continue
        cls = get_stage(name)
        if not enabled:  # pulled in by a method: its settings for the stage, and only its rows when optional
            for method in sorted(methods):
                for key, value in get_method(method).needs_config.get(name, {}).items():
                    data.setdefault(key, value)
            if name in optional and "apply_to" in {f.name for f in dataclasses.fields(cls.config_class)}:
                data.setdefault("apply_to", "needing")
        specs.append(StageSpec(cls, from_dict(cls.config_class, data, f"{where}: stages.{name}")))
    return specs


def method_configs(config: EditJobConfig, where: str) -> dict[str, object]:
    """Each configured method's config object, validated against its class."""
    out = {}
    for name, data in config.methods.items():
        try:
            cls = get_method(name)
        except UnknownMethodError as exc:
            raise ConfigError(f"{where}: methods.{name}: {exc}") from exc
        out[name] = from_dict(cls.config_class, data or {}, f"{where}: methods.{name}")
    return out


def build_specs(config: EditJobConfig, methods: set[str], configs: dict[str, object],
                where: str = "config") -> list[StageSpec]:
    """decode -> analysis stages (tracks, depth, atlas) -> one edit stage per method present -> encode."""
    specs = [StageSpec(DecodeStage, config.decode), *stage_configs(config, methods, where)]
    for name in sorted(methods):
        cls = get_method(name)
        specs.append(StageSpec(cls, configs.get(name) or cls.config_class()))
    specs.append(StageSpec(EncodeStage, config.encode))
    return specs


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m jobs.edit_videos", description=__doc__.splitlines()[0])
    add_common_args(parser)
    parser.add_argument("--method", help="method for rows that name none (and for glob inputs)")
    parser.add_argument("--demo", action="store_true",
                        help="make the synthetic sample under OUTPUT/sample (if absent) and edit it "
                             "(default config: jobs/configs/atlas_edit.yaml)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    if args.demo and not args.config:
        args.config = DEMO_CONFIG
    try:
        config = load_config(EditJobConfig, args.config, run_overrides(args))
        if args.method:
            config = replace(config, run=replace(config.run, method=args.method))
            get_method(args.method)
        configs = method_configs(config, args.config or "config")
        options = config.storage
        check_output(args.output, options)
        manifest_url = args.manifest
        if args.demo:
            from jobs.make_sample import make_sample, sample_exists

            sample_url = storage.join_url(args.output, "sample")
            manifest_url = storage.join_url(sample_url, "manifest.csv")
            if not sample_exists(sample_url):
                make_sample(sample_url, method=config.run.method)
        if not manifest_url:
            raise ConfigError("--manifest is required (or --demo)")
        info = describe_input(manifest_url, options, method=args.method)
    except (ConfigError, ManifestError, PreflightError, UnknownMethodError, OSError) as exc:
        log.error("%s", exc)
        return EXIT_PREFLIGHT
    passthrough = sorted(set(info.columns) - {"job_id", "status", "error"})
    output = absolute_url(args.output)
    cache = absolute_url(config.run.cache_url or storage.join_url(output, "cache"))
    context = RunContext(output_url=output, cache_url=cache, run_id=new_run_id(), config_hash=config_hash(config),
                         storage=options)
    store = ManifestStore(output, context.run_id, output_schema(passthrough),
                          lambda r: to_output_record(r, passthrough), options=options)
    validate = ValidateStage(ValidateConfig(default_method=config.run.method, decode=config.decode,
                                            method_configs=configs), context)
    try:
        # the stages of the default method and of every method the input names (one pass over that column)
        named = distinct_values(info, options, "method", args.limit)
        methods = {m for m in {config.run.method, *named} if m and _known(m)}
        specs = build_specs(config, methods, configs, args.config or "config")
        job = Job(info=info, checks=[validate], specs=specs, context=context, store=store, run=config.run,
                  title="vidflow edit run", method=args.method, limit=args.limit)
        return execute(job, dry_run=args.dry_run)
    except (ConfigError, PreflightError) as exc:
        log.error("%s", exc)
        return EXIT_PREFLIGHT


def _known(method: str) -> bool:
    try:
        get_method(method)
        return True
    except UnknownMethodError:
        return False


if __name__ == "__main__":
    sys.exit(main())
