"""cluster.yaml and cluster-docker.yaml against the cluster-launcher schema that ships with Ray, and the
Dockerfile against the project's pins."""

from __future__ import annotations

import copy
import json
import os
import re

import jsonschema
import pytest
import ray
import torch
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = ("cluster.yaml", "cluster-docker.yaml")


@pytest.fixture(scope="module")
def schema() -> dict:
    path = os.path.join(os.path.dirname(ray.__file__), "autoscaler", "ray-schema.json")
    with open(path) as handle:
        return json.load(handle)


def _load(name: str) -> dict:
    with open(os.path.join(ROOT, name)) as handle:
        return yaml.safe_load(handle)


@pytest.mark.parametrize("name", CONFIGS)
def test_cluster_config_matches_rays_schema(schema, name):
    config = _load(name)
    jsonschema.validate(config, schema)
    assert config["head_node_type"] in config["available_node_types"]


def test_the_schema_catches_a_mistake(schema):
    bad = copy.deepcopy(_load("cluster-docker.yaml"))
    bad["docker"]["imgae"] = bad["docker"].pop("image")  # a typo Ray's launcher would reject
    with pytest.raises(jsonschema.ValidationError, match="imgae"):
        jsonschema.validate(bad, schema)


def test_docker_variant_is_the_same_cluster_without_reinstalling():
    plain, docker = _load("cluster.yaml"), _load("cluster-docker.yaml")
    assert docker["docker"]["image"].endswith("vidflow:0.1.0")
    assert docker["available_node_types"] == plain["available_node_types"]
    assert docker["provider"] == plain["provider"]
    commands = " ".join(docker["setup_commands"] + docker["head_start_ray_commands"] +
                        docker["worker_start_ray_commands"])
    assert "pip install" not in commands and "~/venv" not in commands


def test_dockerfile_uses_the_pinned_ray_torch_and_every_extra():
    with open(os.path.join(ROOT, "Dockerfile")) as handle:
        text = handle.read()
    with open(os.path.join(ROOT, "pyproject.toml")) as handle:
        project = handle.read()
    base = re.search(r"^ARG RAY_IMAGE=rayproject/ray:(\S+)$", text, re.M).group(1)
    assert base.startswith(f"{ray.__version__}-py311-cu")  # the image's Ray is the one the project pins
    assert f'ray[data,default]=={ray.__version__}"' in project
    assert f"ARG TORCH_VERSION={torch.__version__.split('+')[0]}" in text
    assert "download.pytorch.org/whl/${TORCH_CUDA}" in text
    extras = set(re.search(r'pip install --no-cache-dir "\.\[([a-z0-9,]+)\]"', text).group(1).split(","))
    section = project.split("[project.optional-dependencies]")[1].split("\n[")[0]
    declared = {line.split("=")[0].strip() for line in section.splitlines() if "=" in line}
    assert extras == declared
