"""The ``vidflow`` console command: one entry point for every job and tool.

    vidflow edit ...            = python -m jobs.edit_videos ...
    vidflow trajectories ...    = python -m jobs.preprocess_trajectories ...
    vidflow sample ...          = python -m jobs.make_sample ...
    vidflow export ...          = python -m jobs.export ...
    vidflow train-revideo ...   = python -m jobs.train_revideo ...
    vidflow train-lamd ...      = python -m jobs.train_lamd ...
    vidflow models download --config FILE [--to DIR]
    vidflow config --print [--config FILE] [--job edit|trajectories] [--set key=value ...]
    vidflow env

The job subcommands pass their arguments through unchanged, so ``vidflow edit --help`` is the
job's own help and ``ray job submit ... -- vidflow edit ...`` works like ``python -m jobs.edit_videos``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

import yaml

log = logging.getLogger("vidflow")

EXIT_USAGE = 2


def _edit(argv: list[str]) -> int:
    from jobs import edit_videos

    return edit_videos.main(argv)


def _trajectories(argv: list[str]) -> int:
    from jobs import preprocess_trajectories

    return preprocess_trajectories.main(argv)


def _sample(argv: list[str]) -> int:
    from jobs import make_sample

    return make_sample.main(argv)


def _train_revideo(argv: list[str]) -> int:
    from jobs import train_revideo

    return train_revideo.main(argv)


def _train_lamd(argv: list[str]) -> int:
    from jobs import train_lamd

    return train_lamd.main(argv)


def _export(argv: list[str]) -> int:
    from jobs import export

    return export.main(argv)


# subcommand -> (the job it runs, one line of help)
PASSTHROUGH: dict[str, tuple[Callable[[list[str]], int], str]] = {
    "edit": (_edit, "edit videos (= python -m jobs.edit_videos; --help for its options)"),
    "trajectories": (_trajectories, "ReVideo trajectory shards (= python -m jobs.preprocess_trajectories)"),
    "sample": (_sample, "make the synthetic sample (= python -m jobs.make_sample)"),
    "train-revideo": (_train_revideo, "train ReVideo's control module on trajectory shards (= python -m "
                                      "jobs.train_revideo)"),
    "train-lamd": (_train_lamd, "train LaMD's MCD-VAE and motion generator (= python -m jobs.train_lamd)"),
    "export": (_export, "a finished run as WebDataset shards or Parquet files (= python -m jobs.export)"),
}


def job_config_class(job: str) -> type:
    """The config dataclass of job ``edit``, ``trajectories`` or ``train-revideo``."""
    if job == "edit":
        from jobs.edit_videos import EditJobConfig

        return EditJobConfig
    if job == "trajectories":
        from jobs.preprocess_trajectories import TrajectoryJobConfig

        return TrajectoryJobConfig
    if job == "train-revideo":
        from jobs.train_revideo import TrainJobConfig

        return TrainJobConfig
    raise ValueError(f"unknown job {job!r} (edit, trajectories or train-revideo)")


def guess_job(data: dict) -> str:
    """The job a config's top-level keys belong to: ``train-revideo`` (``train`` and ``revideo``),
    ``trajectories`` (``window``/``trajectories``/``shards``), else ``edit``."""
    if {"train", "revideo"} <= set(data):
        return "train-revideo"
    return "trajectories" if {"window", "trajectories", "shards"} & set(data) else "edit"


def resolved_config(path: str | None, job: str | None, overrides: Sequence[str] = ()) -> tuple[str, object]:
    """``(job, config)``: the config file (or the defaults) with overrides, validated."""
    from pipeline.config import apply_overrides, load_config, read_yaml

    if job is None:
        job = guess_job(apply_overrides(read_yaml(path) if path else {}, overrides))
    return job, load_config(job_config_class(job), path, overrides)


def resolved_dict(config: object) -> dict:
    """Plain data of a job config with every default filled in, the free-form ``methods:`` and
    ``stages:`` sections of the edit job included (each validated against its class)."""
    from pipeline.config import from_dict, to_dict

    data = to_dict(config)
    if hasattr(config, "methods") and hasattr(config, "stages"):
        from jobs.edit_videos import method_configs
        from stages.registry import STAGE_ORDER, get_stage

        data["methods"] = {name: to_dict(cfg) for name, cfg in method_configs(config, "config").items()}
        stages = {}
        for name, section in config.stages.items():
            if name not in STAGE_ORDER:
                raise ValueError(f"stages.{name}: unknown stage (known: {', '.join(STAGE_ORDER)})")
            section = dict(section or {})
            enabled = section.pop("enabled", True)
            cls = get_stage(name)
            stages[name] = {"enabled": enabled, **to_dict(from_dict(cls.config_class, section, f"stages.{name}"))}
        data["stages"] = stages
    return data


def config_yaml(config: object) -> str:
    """The fully resolved config as YAML, secrets masked; loading it with ``--config`` gives the same config."""
    from pipeline.config import redact

    return yaml.safe_dump(redact(resolved_dict(config)), sort_keys=False, default_flow_style=False)


def _cmd_config(args: argparse.Namespace) -> int:
    from pipeline.config import ConfigError
    from stages.edit import UnknownMethodError

    if not args.print:
        args.parser.error("nothing to do: give --print")
    try:
        _, config = resolved_config(args.config, args.job, args.overrides)
        text = config_yaml(config)
    except (ConfigError, UnknownMethodError, OSError, ValueError) as exc:
        log.error("%s", exc)
        return EXIT_USAGE
    sys.stdout.write(text)
    return 0


def _cmd_env(args: argparse.Namespace) -> int:
    from jobs.environment import describe_environment

    sys.stdout.write(describe_environment())
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from jobs import models

    return models.download_command(args.config, args.to, args.job, args.overrides)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vidflow", description="Dataset-scale video editing and motion-trajectory "
                                     "preprocessing on Ray Data.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, text) in PASSTHROUGH.items():
        sub.add_parser(name, help=text, add_help=False)

    text = "model weights: download every model a config names"
    models = sub.add_parser("models", help=text, description=text)
    models_sub = models.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    download = models_sub.add_parser(
        "download", help="fetch every model a config names into a cache (HF cache layout + torch hub dir)",
        description="Fetch every model the config names. Afterwards run with HF_HUB_OFFLINE=1 and "
                    "HF_HUB_CACHE=DIR/hub TORCH_HOME=DIR/torch (or stage DIR onto every node with "
                    "run.model_cache_url).")
    download.add_argument("--config", help="job YAML (default: the job's defaults)")
    download.add_argument("--to", help="cache folder (default: the usual HF cache and torch hub dir)")
    _add_job_args(download)
    download.set_defaults(func=_cmd_models)

    text = "print the fully resolved config (defaults filled in) as YAML; it loads back with --config"
    config = sub.add_parser("config", help=text, description=text)
    config.add_argument("--print", action="store_true", help="print it (secret values masked as ***)")
    config.add_argument("--config", help="job YAML (default: the job's defaults)")
    _add_job_args(config)
    config.set_defaults(func=_cmd_config, parser=config)

    text = "versions of Python, torch, CUDA, Ray, diffusers, transformers, PyAV; FFmpeg codecs; GPUs seen"
    env = sub.add_parser("env", help=text, description=text)
    env.set_defaults(func=_cmd_env)
    return parser


def _add_job_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--job", choices=("edit", "trajectories", "train-revideo"),
                        help="which job's config (default: guessed from the file's sections)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value (repeatable)")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in PASSTHROUGH:
        return PASSTHROUGH[argv[0]][0](argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
