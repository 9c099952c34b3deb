"""Shared fixtures: a local Ray (started once per session) and the project's synthetic sample."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")

# real clips (bear.mp4, car-turn.mp4, apple.mp4 + apple_mask.png, man-skiing.mp4; sources in the README) are not
# part of the repository: tests that use them run when VIDFLOW_TEST_CLIPS names a folder holding them
REAL_CLIPS = os.environ.get("VIDFLOW_TEST_CLIPS", "")


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
    """Path of a real clip in $VIDFLOW_TEST_CLIPS, or skip the test when it is absent."""
    path = os.path.join(REAL_CLIPS, name)
    if not REAL_CLIPS or not os.path.exists(path):
        pytest.skip(f"real clip {name} not available")
    return path
