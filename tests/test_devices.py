"""The one device/dtype resolver (pipeline/devices.py) and every GPU-capable stage's use of it.

A stage uses a GPU only when Ray granted it one. CUDA is never present on the test machine, so
``torch.cuda.is_available`` is patched: to True to show that a ``num_gpus: 0`` stage stays on the
CPU even where a GPU is visible (Ray >= 2.5x no longer hides it), and to False to show that an
explicit ``device: cuda`` is a clear ConfigError before any model is loaded, not a crash mid-run.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from pipeline import devices
from pipeline.config import ConfigError, Resources
from pipeline.stage import RunContext
from stages.atlas import AtlasConfig, AtlasStage
from stages.depth import DepthConfig, DepthStage
from stages.edit.tune_a_video import TuneAVideoConfig, TuneAVideoStage
from stages.tracking import CoTrackerConfig, TrackingConfig
from stages.tracking.cotracker import CoTracker
from stages.trajectories import TrajectoryConfig, TrajectoryStage

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CPU, GPU = Resources(num_gpus=0), Resources(num_gpus=1)


@pytest.fixture
def cuda_visible(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


@pytest.fixture
def cuda_absent(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_auto_is_cpu_without_a_granted_gpu_even_when_cuda_is_visible(cuda_visible):
    assert devices.resolve_device("auto", 0) == torch.device("cpu")
    assert devices.resolve_device("auto", 1) == torch.device("cuda")
    assert devices.resolve_device("auto", 0.5) == torch.device("cuda")  # a fraction of a GPU is a grant
    assert devices.resolve_device("cpu", 1) == torch.device("cpu")
    assert devices.resolve_device("cuda:1", 1) == torch.device("cuda:1")


def test_auto_with_a_granted_gpu_but_no_cuda_falls_back_to_cpu(cuda_absent, caplog):
    assert devices.resolve_device("auto", 1, "depth") == torch.device("cpu")
    assert "no CUDA device is visible" in caplog.text


def test_explicit_cuda_needs_a_granted_and_visible_gpu(cuda_visible, monkeypatch):
    with pytest.raises(ConfigError, match="atlas: device 'cuda' needs resources.num_gpus > 0"):
        devices.resolve_device("cuda", 0, "atlas")
    with pytest.raises(ConfigError, match="num_gpus > 0"):
        devices.check_device("cuda:0", 0)
    devices.check_device("cuda", 1)
    devices.check_device("auto", 0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="no CUDA device is visible"):
        devices.resolve_device("cuda", 1, "atlas")
    for bad in ("gpu", "cuda:x", "tpu"):
        with pytest.raises(ConfigError, match="device must be"):
            devices.check_device(bad, 1)
    with pytest.raises(ConfigError, match="dtype must be one of"):
        devices.resolve_dtype("int8", torch.device("cpu"))


def test_pipeline_devices_imports_without_torch():
    code = "import sys, pipeline.devices; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --- every stage ------------------------------------------------------------------------------

def _context(tmp_path) -> RunContext:
    return RunContext(output_url=str(tmp_path / "out"), cache_url=str(tmp_path / "cache"))


def _stages(tmp_path, device: str, resources: Resources) -> dict:
    """Each GPU-capable stage configured with ``device`` and ``resources`` (models need not exist)."""
    ctx = _context(tmp_path)
    return {
        "atlas": AtlasStage(AtlasConfig(device=device, resources=resources), ctx),
        "depth": DepthStage(DepthConfig(model=str(tmp_path / "no-model"), device=device, resources=resources), ctx),
        "edit:tune_a_video": TuneAVideoStage(TuneAVideoConfig(model=str(tmp_path / "no-model"), device=device,
                                                              resources=resources), ctx),
        "trajectories": TrajectoryStage(TrajectoryConfig(
            tracking=TrackingConfig(backend="cotracker", cotracker=CoTrackerConfig(device=device)),
            resources=resources), ctx),
    }


@pytest.mark.parametrize("name", ["atlas", "depth", "edit:tune_a_video", "trajectories"])
def test_preflight_refuses_cuda_without_a_gpu_in_resources(tmp_path, cuda_visible, name):
    stage = _stages(tmp_path, "cuda", CPU)[name]
    with pytest.raises(ConfigError, match=f"{name}: device 'cuda' needs resources.num_gpus > 0"):
        stage.preflight()  # before the model reference is even looked at


@pytest.mark.parametrize("name", ["atlas", "depth", "edit:tune_a_video", "trajectories"])
def test_setup_with_cuda_absent_is_a_clear_config_error_before_loading(tmp_path, cuda_absent, monkeypatch, name):
    def no_hub(*args, **kwargs):
        raise AssertionError("the model must not be loaded when the device is unusable")

    monkeypatch.setattr(torch.hub, "load", no_hub)
    stage = _stages(tmp_path, "cuda", GPU)[name]
    with pytest.raises(ConfigError, match=f"{name}: device 'cuda' requested but no CUDA device is visible"):
        stage.setup()


def test_stages_without_a_gpu_resolve_auto_to_cpu_where_cuda_is_visible(tmp_path, cuda_visible, monkeypatch):
    stages = _stages(tmp_path, "auto", CPU)
    stages["atlas"].setup()
    assert stages["atlas"].device == torch.device("cpu")
    tav = stages["edit:tune_a_video"]
    tav.resolve_placement()
    assert (tav.device, tav.dtype, tav.precision.describe()) == (torch.device("cpu"), torch.float32, "float32")
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: pytest.fail("a CPU actor touched the GPU"))
    tav.close()
    monkeypatch.setattr(torch.hub, "load", lambda *a, **k: torch.nn.Linear(1, 1))
    tracker = CoTracker(CoTrackerConfig(device="auto"), num_gpus=0)
    tracker.load()
    assert tracker.device == torch.device("cpu") and next(tracker.model.parameters()).device.type == "cpu"
    # the same stages granted a GPU would take it
    gpu = _stages(tmp_path, "auto", GPU)
    gpu["atlas"].setup()
    assert gpu["atlas"].device == torch.device("cuda")


def test_depth_loads_on_cpu_without_a_gpu_where_cuda_is_visible(tmp_path, cuda_visible):
    from tests.test_depth import save_tiny_dpt

    path = save_tiny_dpt(tmp_path / "dpt")
    stage = DepthStage(DepthConfig(model=path, device="auto", resources=CPU), _context(tmp_path))
    stage.setup()
    assert stage.estimator.device == torch.device("cpu") and stage.estimator.dtype == torch.float32
    assert {p.device.type for p in stage.estimator.model.parameters()} == {"cpu"}
