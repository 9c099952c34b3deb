"""Train LaMD's MCD-VAE, then its diffusion motion generator, on Ray Train.

    python -m jobs.train_lamd (--data URL | --synthetic) --output URL [--config FILE]
                              [--phase vae|dmg|all] [--resume] [--set key=value ...]

``--synthetic`` renders the project's sample clips on the fly (64 x 64, L = 16 by default);
``--data`` reads a vidflow manifest (or a glob of videos, WebDataset shards, or a trajectory run's
output URL: the ``ok`` rows' videos with their captions as prompts) and trains on decoded windows
of its ``video_uri`` videos (Ray Data). Phase ``vae`` trains the MCD-VAE and exports it to
``{output}/model/mcd_vae``; phase ``dmg`` trains the DMG on that frozen MCD-VAE (or
``dmg.mcd_vae``) and exports ``{output}/model/dmg``. ``{output}/model`` is then the ``model`` of
the ``lamd`` method. Checkpoints: ``{output}/ray_train/lamd-vae|lamd-dmg``; metrics:
``{output}/metrics/lamd-vae|lamd-dmg.csv`` and ``.jsonl``. ``--resume`` continues an interrupted
run from its newest checkpoint. Exit code: 0 done; 2 config/preflight.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from jobs.common import EXIT_OK, EXIT_PREFLIGHT, PreflightError, absolute_url, check_output, setup_logging
from pipeline import storage
from pipeline.config import ConfigError, load_config
from pipeline.manifest import MANIFEST_EXTENSIONS, ManifestError
from pipeline.storage import StorageOptions
from pipeline.training import TrainingRunExistsError, TrainResult, fit
from stages.edit.lamd.data import decode_windows
from stages.edit.lamd.train_config import LamdDataConfig, TrainLamdConfig
from stages.edit.lamd.train_task import dmg_task, vae_task

log = logging.getLogger("jobs.train_lamd")
PHASES = ("vae", "dmg", "all")
MODEL_DIR = "model"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m jobs.train_lamd", description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", help="manifest URL (.parquet/.csv/.jsonl with video_uri), a glob of videos, "
                                       "WebDataset .tar shards, or a trajectory run's output URL (its shards' videos)")
    source.add_argument("--synthetic", action="store_true", help="train on synthetic sample clips made on the fly")
    parser.add_argument("--output", required=True, help="output URL (local path, s3://, gs://, memory://)")
    parser.add_argument("--config", help="YAML config file (default: built-in defaults)")
    parser.add_argument("--phase", choices=PHASES, default="all", help="vae, dmg, or all (vae then dmg)")
    parser.add_argument("--resume", action="store_true", help="continue the phases' runs from their checkpoints")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set vae.train.steps=100 (repeatable)")
    parser.add_argument("--verbose", action="store_true")
    return parser.parse_args(argv)


def _windows(row: dict, data: LamdDataConfig, options: StorageOptions) -> list[dict]:
    """Ray Data flat_map: a manifest row -> its decoded training windows with the row's prompt (none for an
    unreadable video)."""
    uri = row.get("video_uri")
    if uri is None and "text" in row:  # a JSONL manifest arrives as text lines
        row = json.loads(row["text"])
        uri = row.get("video_uri")
    if not isinstance(uri, str) or not uri.strip():
        return []
    try:
        clips = decode_windows(uri, data.num_frames, data.frame_stride, data.size, data.max_windows_per_video,
                               options)
    except Exception as exc:  # noqa: BLE001 - one bad video must not end a training run
        logging.getLogger(__name__).warning("skipping %s: %s: %s", uri, type(exc).__name__, exc)
        return []
    prompt = row.get("prompt") if isinstance(row.get("prompt"), str) else ""
    return [{"clip": clip, "prompt": prompt} for clip in clips]


def trajectory_shard_files(url: str, options: StorageOptions) -> list[str]:
    """The Parquet shards of a trajectory run (``{url}/shards/*.parquet``); empty for anything else."""
    if url.lower().endswith(MANIFEST_EXTENSIONS + (".tar",)) or storage.is_glob(url):
        return []
    return [u for u in storage.list_files(storage.join_url(url, "shards"), options) if u.endswith(".parquet")]


def _shard_row(row: dict) -> dict:
    """A trajectory shard row as a manifest row: its video, with the caption as the prompt."""
    return {"video_uri": row.get("video_uri") if row.get("status") == "ok" else None, "prompt": row.get("caption")}


def window_dataset(url: str, data: LamdDataConfig, options: StorageOptions):
    """A Ray Data dataset of decoded windows ``{"clip": uint8 [L, size, size, 3]}`` of the videos of a
    manifest, a glob of videos, WebDataset shards, or a trajectory run (its ``ok`` rows' videos and
    captions, read from the shards' scalar columns only)."""
    import ray

    from pipeline.input_source import describe_input, open_dataset, pyarrow_filesystem

    shards = trajectory_shard_files(url, options)
    if shards:
        fs, _ = pyarrow_filesystem(shards[0], options)
        paths = [storage.get_fs(u, options)[1] for u in shards]
        ds = ray.data.read_parquet(paths, filesystem=fs, columns=["video_uri", "caption", "status"],
                                   partitioning=None).map(_shard_row)
    else:
        ds = open_dataset(describe_input(url, options), options)
    return ds.flat_map(_windows, fn_kwargs={"data": data, "options": options})


def model_folder_exists(url: str, options: StorageOptions) -> bool:
    return storage.exists(storage.join_url(url, "config.json"), options)


def run_phase(phase: str, config: TrainLamdConfig, output: str, source: str, datasets: dict | None,
              resume: bool) -> TrainResult:
    options = {"data": config.data, "source": source}
    if phase == "vae":
        task = vae_task({**options, "phase": config.vae})
        train = config.vae.train
    else:
        vae_url = config.dmg.mcd_vae or storage.join_url(output, MODEL_DIR, "mcd_vae")
        if not model_folder_exists(vae_url, config.storage):
            raise PreflightError(f"phase dmg needs a trained MCD-VAE at {vae_url!r} (run --phase vae first, or set "
                                 "dmg.mcd_vae)")
        task = dmg_task({**options, "phase": config.dmg, "mcd_vae": vae_url})
        train = config.dmg.train
    export_dir = f"{MODEL_DIR}/{'mcd_vae' if phase == 'vae' else 'dmg'}"
    result = fit(task, train, output, resume=resume, datasets=datasets, export_dir=export_dir,
                 options=config.storage)
    log.info("phase %s done: %s; model %s; metrics %s", phase,
             {k: round(v, 5) if isinstance(v, float) else v for k, v in result.metrics.items()},
             result.export_url, result.metrics_url)
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    try:
        config = load_config(TrainLamdConfig, args.config, args.overrides)
        check_output(args.output, config.storage)
    except (ConfigError, PreflightError, OSError) as exc:
        log.error("%s", exc)
        return EXIT_PREFLIGHT
    from pipeline.runner import init_ray

    output = absolute_url(args.output)
    init_ray(config.num_cpus)
    phases = ("vae", "dmg") if args.phase == "all" else (args.phase,)
    try:
        datasets = None if args.synthetic else {"train": window_dataset(args.data, config.data, config.storage)}
        for phase in phases:
            run_phase(phase, config, output, "synthetic" if args.synthetic else "manifest", datasets, args.resume)
    except (ConfigError, PreflightError, ManifestError, TrainingRunExistsError) as exc:
        log.error("%s", exc)
        return EXIT_PREFLIGHT
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
