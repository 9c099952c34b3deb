"""`vidflow models download` against a fake local hub (no network), the offline preflight message,
and staging a model cache onto every node of the local Ray."""

from __future__ import annotations

import logging
import os

import pytest

from jobs import cli, models
from jobs.cli import resolved_config
from pipeline import model_staging
from pipeline.config import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def fake_snapshot(cache_dir: str, repo_id: str, files: dict[str, str]) -> str:
    """Write ``files`` into a Hugging Face cache layout (refs/main -> snapshots/COMMIT/...), as a download would."""
    repo = os.path.join(cache_dir, "models--" + repo_id.replace("/", "--"))
    os.makedirs(os.path.join(repo, "refs"), exist_ok=True)
    with open(os.path.join(repo, "refs", "main"), "w") as handle:
        handle.write(COMMIT)
    snap = os.path.join(repo, "snapshots", COMMIT)
    for name, text in files.items():
        os.makedirs(os.path.dirname(os.path.join(snap, name)), exist_ok=True)
        with open(os.path.join(snap, name), "w") as handle:
            handle.write(text)
    return snap


@pytest.fixture
def fake_hub(monkeypatch):
    """huggingface_hub.snapshot_download and torch.hub replaced by recorders that write a fake cache."""
    import huggingface_hub
    import torch

    calls: dict[str, list] = {"hf": [], "torch": [], "set_dir": []}

    def snapshot_download(**kwargs):
        calls["hf"].append(kwargs)
        subs = {p.split("/")[0] for p in kwargs["allow_patterns"] or ["unet/x"] if "/" in p}
        marker = {"tokenizer": "tokenizer_config.json", "scheduler": "scheduler_config.json",
                  "feature_extractor": "preprocessor_config.json"}
        files = {f"{s}/{marker.get(s, 'config.json')}": "{}" for s in subs}
        return fake_snapshot(kwargs["cache_dir"], kwargs["repo_id"], {**files, "config.json": "{}"})

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setattr(torch.hub, "load", lambda *a, **kw: calls["torch"].append((a, kw)))
    monkeypatch.setattr(torch.hub, "set_dir", lambda d: calls["set_dir"].append(d))
    return calls


def test_tune_a_video_config_downloads_its_components_with_revision_and_variant(fake_hub, tmp_path):
    path = os.path.join(ROOT, "jobs/configs/tune_a_video.yaml")
    to = str(tmp_path / "cache")
    assert models.download_command(path, to, None, ["methods.tune_a_video.revision=v1.0"]) == 0
    assert fake_hub["hf"] == [{
        "repo_id": "stable-diffusion-v1-5/stable-diffusion-v1-5", "revision": "v1.0",
        "allow_patterns": ["model_index.json", "scheduler/*", "text_encoder/*", "tokenizer/*", "unet/*", "vae/*"],
        "ignore_patterns": list(models.IGNORE_PATTERNS), "cache_dir": os.path.join(to, "hub")}]
    _, config = resolved_config(path, None, ["methods.tune_a_video.variant=fp16"])
    (ref,) = models.collect_models("edit", config)
    # the variant narrows weights to that variant's files; tokenizer and scheduler have no variant
    assert ref.allow_patterns == ("model_index.json", "scheduler/*", "text_encoder/*.json", "text_encoder/*.fp16*",
                                  "tokenizer/*", "unet/*.json", "unet/*.fp16*", "vae/*.json", "vae/*.fp16*")


def test_revideo_local_checkpoint_is_left_alone_and_svd_is_fetched(fake_hub, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    path = os.path.join(ROOT, "jobs/configs/revideo.yaml")
    assert models.download_command(path, str(tmp_path), None, []) == 0
    (call,) = fake_hub["hf"]
    assert call["repo_id"] == "stabilityai/stable-video-diffusion-img2vid" and call["revision"] is None
    assert call["allow_patterns"] == ["model_index.json", "feature_extractor/*", "image_encoder/*", "vae/*"]
    assert "local /models/revideo" in caplog.text and "left alone" in caplog.text
    assert "methods.revideo.unet, methods.revideo.controlnet" in caplog.text


def test_depth_and_cotracker_models_are_collected_and_fetched(fake_hub, tmp_path):
    to = str(tmp_path / "c")
    args = ["run.method=reencode", "stages.depth.enabled=true", "stages.trajectories.enabled=true",
            "stages.trajectories.tracking.backend=cotracker"]
    assert models.download_command(None, to, "edit", args) == 0
    assert [c["repo_id"] for c in fake_hub["hf"]] == ["Intel/dpt-hybrid-midas"]
    assert fake_hub["hf"][0]["allow_patterns"] is None  # a whole-repository reference
    assert fake_hub["set_dir"] == [os.path.join(to, "torch", "hub")]
    assert fake_hub["torch"] == [(("facebookresearch/co-tracker", "cotracker3_offline"),
                                  {"source": "github", "pretrained": True, "trust_repo": True})]
    # the trajectory job's own config names CoTracker the same way
    _, traj = resolved_config(None, "trajectories", ["trajectories.tracking.backend=cotracker",
                                                     "trajectories.tracking.cotracker.checkpoint=/ckpt/co.pth"])
    refs = models.collect_models("trajectories", traj)
    assert [(r.kind, r.ref, r.pretrained) for r in refs] == [
        ("torch_hub", "facebookresearch/co-tracker", False), ("local", "/ckpt/co.pth", True)]


def test_failed_or_unconfigured_models_exit_1_and_bad_configs_exit_2(monkeypatch, tmp_path, caplog):
    import huggingface_hub

    def offline(**kwargs):
        raise OSError(f"neither cached nor reachable: {kwargs['repo_id']}")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    assert cli.main(["models", "download", "--job", "edit", "--set", "stages.depth.enabled=true",
                     "--to", str(tmp_path)]) == 1
    assert "error: OSError: neither cached nor reachable: Intel/dpt-hybrid-midas" in caplog.text
    # ReVideo with no checkpoint configured: named, and the command fails
    assert models.download_command(None, str(tmp_path), "edit", ["run.method=revideo"]) == 1
    assert "not configured" in caplog.text and "methods.revideo.unet" in caplog.text
    assert models.download_command(None, None, "edit", ["run.method=no_such_method"]) == 2
    assert models.download_command(None, None, "edit", []) == 0  # reencode names no model


def test_offline_preflight_names_the_missing_model_and_the_fix_then_passes_after_download(
        fake_hub, monkeypatch, tmp_path):
    from huggingface_hub import constants

    from stages.edit.diffusion.loading import check_sources
    from stages.edit.tune_a_video import TuneAVideoConfig, TuneAVideoStage

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache" / "hub"))
    config = TuneAVideoConfig(model="vidflow-test/tiny-sd")
    with pytest.raises(ConfigError) as err:
        check_sources(config, TuneAVideoStage.components)
    assert "vidflow-test/tiny-sd/unet" in str(err.value) and "vidflow models download" in str(err.value)
    refs = [r for r in models.collect_models("edit", resolved_config(None, "edit", [
        "run.method=tune_a_video", "methods.tune_a_video.model=vidflow-test/tiny-sd"])[1])]
    assert [o for _, o in models.download(refs, str(tmp_path / "cache"))][0].startswith("ok: ")
    check_sources(config, TuneAVideoStage.components)  # now in the cache: preflight passes offline


def test_offline_preflight_names_a_missing_cotracker_repo(monkeypatch, tmp_path):
    import torch

    from stages.tracking import CoTrackerConfig
    from stages.tracking.cotracker import check_cached

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    config = CoTrackerConfig(repo_or_dir="facebookresearch/co-tracker")
    with pytest.raises(ConfigError, match="'facebookresearch/co-tracker'.*vidflow models download"):
        check_cached(config)
    (tmp_path / "hub" / "facebookresearch_co-tracker_main").mkdir(parents=True)  # what torch.hub.load leaves
    check_cached(config)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    check_cached(CoTrackerConfig(repo_or_dir="someone/else"))  # online: torch.hub fetches it at setup


def _model_cache(root) -> str:
    """A `models download --to` folder: an HF cache with a blob and a snapshot symlink, and a torch hub dir."""
    repo = root / "hub" / "models--org--m"
    (repo / "blobs").mkdir(parents=True)
    (repo / "blobs" / "abc").write_text('{"a": 1}')
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    (repo / "snapshots" / COMMIT).mkdir(parents=True)
    os.symlink("../../blobs/abc", repo / "snapshots" / COMMIT / "config.json")
    (root / "torch" / "hub" / "checkpoints").mkdir(parents=True)
    (root / "torch" / "hub" / "checkpoints" / "co.pth").write_bytes(b"\0" * 100)
    return str(root)


@pytest.mark.slow
def test_staging_copies_the_cache_onto_every_node_once(ray_local, tmp_path):
    src = _model_cache(tmp_path / "src")
    hf, hub = str(tmp_path / "node" / "hf" / "hub"), str(tmp_path / "node" / "torch" / "hub")
    results = model_staging.stage_model_cache(src, hf_cache=hf, torch_hub=hub)
    alive = [n for n in ray_local.nodes() if n["Alive"]]
    assert len(results) == len(alive) == 1 and not results[0]["skipped"] and results[0]["copied"] == 4
    link = os.path.join(hf, "models--org--m", "snapshots", COMMIT, "config.json")
    assert os.path.islink(link) and open(link).read() == '{"a": 1}'  # the snapshot still points into blobs/
    assert os.path.getsize(os.path.join(hub, "checkpoints", "co.pth")) == 100
    again = model_staging.stage_model_cache(src, hf_cache=hf, torch_hub=hub)
    assert again[0]["skipped"] and again[0]["copied"] == 0
    with pytest.raises(Exception, match="holds neither hub/ nor torch/hub/"):
        model_staging.stage_model_cache(str(tmp_path / "empty"), hf_cache=hf, torch_hub=hub)


def test_the_revideo_training_config_names_svd_and_its_starting_points():
    from jobs import cli, models

    job, config = cli.resolved_config(None, "train-revideo", ["revideo.controlnet=/models/rv/controlnet"])
    refs = {r.ref: r for r in models.collect_models(job, config)}
    assert job == "train-revideo" and set(refs) == {config.revideo.model, "/models/rv/controlnet"}
    assert refs["/models/rv/controlnet"].used_by == ("revideo.controlnet",)
