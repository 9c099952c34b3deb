"""The `vidflow` command: help of every subcommand, config --print round trip, env, pass-through."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys

import pytest
import yaml

from jobs import cli
from pipeline.config import load_config, to_dict


def test_console_script_is_installed_and_runs():
    scripts = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="console_scripts")}
    assert scripts.get("vidflow") == "jobs.cli:main"
    exe = shutil.which("vidflow", path=os.path.dirname(sys.executable))
    assert exe, "pip install -e . did not create the vidflow script"
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    for name in ("edit", "trajectories", "sample", "export", "models", "config", "env"):
        assert name in out.stdout


@pytest.mark.parametrize("argv, expect", [
    (["--help"], "COMMAND"),
    (["config", "--help"], "--print"),
    (["models", "download", "--help"], "--to"),
    (["env", "--help"], "GPUs"),
    (["edit", "--help"], "--manifest"),  # the job's own parser: arguments pass through
    (["trajectories", "--help"], "--manifest"),
    (["sample", "--help"], "--count"),
    (["export", "--help"], "--max-shard-bytes"),
    (["train-revideo", "--help"], "--shards"),
    (["train-lamd", "--help"], "--synthetic"),
])
def test_every_subcommand_has_help(capsys, argv, expect):
    with pytest.raises(SystemExit) as stop:
        cli.main(argv)
    assert stop.value.code == 0
    assert expect in capsys.readouterr().out


def test_no_command_prints_help_and_exits_2(capsys):
    assert cli.main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


def test_sample_passes_its_arguments_through(tmp_path):
    assert cli.main(["sample", "--output", str(tmp_path / "s"), "--count", "1", "--sizes", "64x64"]) == 0
    assert (tmp_path / "s" / "manifest.csv").exists()


@pytest.mark.parametrize("job, source", [("edit", "jobs/configs/tune_a_video.yaml"), ("edit", None),
                                         ("trajectories", "jobs/configs/preprocess_trajectories.yaml")])
def test_config_print_round_trips_through_config(capsys, tmp_path, job, source):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.path.join(root, source) if source else None
    args = ["config", "--print", "--set", "decode.threads=3"] + (["--config", path] if path else ["--job", job])
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    data = yaml.safe_load(printed)
    assert data["decode"]["threads"] == 3 and "storage" in data and "run" in data
    again = tmp_path / "resolved.yaml"
    again.write_text(printed)
    cls = cli.job_config_class(job)
    reloaded = load_config(cls, str(again))
    assert to_dict(reloaded) == data  # every default is in the print, and the print loads back to the same config
    if source and "tune_a_video" in source:  # a method's section is resolved too: its defaults are filled in
        assert data["methods"]["tune_a_video"]["seed"] == 33 and "learning_rate" in data["methods"]["tune_a_video"]
    assert cli.main(["config", "--print", "--config", str(again)]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == data  # a fixed point (1 and 1.0 compare equal)


def test_config_print_masks_secrets(capsys):
    assert cli.main(["config", "--print", "--set", "storage.secret=hunter2-secret", "--set", "storage.key=AKIAKEY",
                     "--set", "storage.options.s3.session_token=tok-123",
                     "--set", "storage.options.s3.profile=research"]) == 0
    printed = capsys.readouterr().out
    for secret in ("hunter2-secret", "AKIAKEY", "tok-123"):
        assert secret not in printed
    data = yaml.safe_load(printed)
    assert data["storage"]["secret"] == "***" and data["storage"]["options"]["s3"]["session_token"] == "***"
    assert data["storage"]["options"]["s3"]["profile"] == "research"  # not a secret: shown
    assert data["methods"] == {} and data["storage"]["anon"] is False


def test_config_print_bad_config_exits_2(tmp_path, caplog):
    bad = tmp_path / "bad.yaml"
    bad.write_text("decode: {no_such_key: 1}\n")
    assert cli.main(["config", "--print", "--config", str(bad)]) == 2
    assert "no_such_key" in caplog.text


def test_env_reports_versions_codecs_and_gpus(capsys):
    assert cli.main(["env"]) == 0
    text = capsys.readouterr().out
    data = yaml.safe_load(text)
    import av
    import ray
    import torch

    assert data["packages"]["torch"] == torch.__version__ and data["packages"]["ray"] == ray.__version__
    assert data["packages"]["av"] == av.__version__
    assert data["torch_cuda"]["cuda_available"] == torch.cuda.is_available()
    assert len(data["torch_cuda"]["gpus"]) == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    has_h264 = "libx264" in av.codecs_available
    assert data["pyav_ffmpeg"]["encoders"]["libx264"] is has_h264
    assert data["h264_encoder"].startswith("present" if has_h264 else "MISSING")


def test_the_training_config_is_recognised_and_round_trips(capsys, tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.path.join(root, "jobs/configs/train_revideo.yaml")
    assert cli.guess_job(yaml.safe_load(open(path))) == "train-revideo"
    assert cli.main(["config", "--print", "--config", path]) == 0
    printed = capsys.readouterr().out
    data = yaml.safe_load(printed)
    assert {"train", "revideo", "window", "data"} <= set(data)
    again = tmp_path / "resolved.yaml"
    again.write_text(printed)
    assert to_dict(load_config(cli.job_config_class("train-revideo"), str(again))) == data
