"""Shared fixtures: a local Ray (started once per session) and the project's synthetic sample."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")

SHARED_VIDEOS = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "videos"))


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray with 2 CPUs, shared by every test that runs a pipeline on Ray."""
    import ray

    from pipeline.runner import init_ray

    os.environ.pop("RAY_ADDRESS", None)
    init_ray(num_cpus=2)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory) -> str:
    """The synthetic sample (videos, ground truth, manifest.csv), made once per session."""
    from jobs.make_sample import make_sample

    out = str(tmp_path_factory.mktemp("sample"))
    make_sample(out, count=3, seed=0)
    return out


def shared_video(name: str) -> str:
    """Path of a real clip in ../shared/data/videos, or skip the test when it is absent."""
    path = os.path.join(SHARED_VIDEOS, name)
    if not os.path.exists(path):
        pytest.skip(f"real clip {name} not available")
    return path
