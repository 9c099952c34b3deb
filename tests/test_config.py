import dataclasses
from dataclasses import dataclass, field
from typing import Literal

import pytest

from pipeline.config import ConfigError, Resources, apply_overrides, config_hash, from_dict, load_config


@dataclass(frozen=True)
class Inner:
    size: int = 4
    mode: Literal["a", "b"] = "a"


@dataclass(frozen=True)
class Outer:
    name: str = "x"
    scale: float = 1.0
    limit: int | None = None
    inner: Inner = field(default_factory=Inner)
    sizes: tuple[int, ...] = (1, 2)
    resources: Resources = field(default_factory=Resources)


def test_yaml_with_nested_sections_and_int_to_float(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: y\nscale: 2\ninner:\n  size: 8\n  mode: b\nsizes: [3, 4]\n")
    cfg = load_config(Outer, str(path))
    assert cfg == Outer(name="y", scale=2.0, inner=Inner(size=8, mode="b"), sizes=(3, 4))
    assert isinstance(cfg.scale, float)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.name = "z"  # type: ignore[misc]


def test_unknown_key_names_key_and_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("inner:\n  sise: 3\n")
    with pytest.raises(ConfigError) as err:
        load_config(Outer, str(path))
    assert "sise" in str(err.value) and "bad.yaml" in str(err.value)


@pytest.mark.parametrize("data, fragment", [
    ({"scale": "big"}, "scale"),
    ({"limit": 1.5}, "limit"),
    ({"inner": {"mode": "c"}}, "mode"),
    ({"inner": 3}, "inner"),
    ({"resources": {"min_actors": 2, "max_actors": 1}}, "min_actors"),
    ({"name": True}, "name"),
])
def test_mistyped_values_are_errors(data, fragment):
    with pytest.raises(ConfigError) as err:
        from_dict(Outer, data, "f.yaml")
    assert fragment in str(err.value)


def test_cli_overrides_parse_yaml_values(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("inner: {size: 2}\n")
    cfg = load_config(Outer, str(path), ["inner.size=16", "limit=null", "sizes=[5]", "name=hello"])
    assert cfg.inner.size == 16 and cfg.limit is None and cfg.sizes == (5,) and cfg.name == "hello"
    assert apply_overrides({"a": {"b": 1}}, ["a.c=2"]) == {"a": {"b": 1, "c": 2}}
    with pytest.raises(ConfigError):
        apply_overrides({}, ["novalue"])


def test_config_hash_tracks_values():
    assert config_hash(Outer()) == config_hash(Outer())
    assert config_hash(Outer()) != config_hash(Outer(scale=2.0))


def test_a_partial_nested_mapping_keeps_the_parents_defaults_for_that_field():
    from jobs.edit_videos import EditJobConfig
    from jobs.preprocess_trajectories import TrajectoryJobConfig
    from pipeline.config import load_config

    traj = load_config(TrajectoryJobConfig, None, ["run.num_cpus=2"])
    assert (traj.run.num_cpus, traj.run.rows_per_block, traj.run.method) == (2, 32, "trajectories")
    edit = load_config(EditJobConfig, None, ["decode.resources.num_gpus=0.5"])
    assert edit.decode.resources.num_gpus == 0.5 and edit.decode.resources.compute == "tasks"
    assert edit.decode.resources.row_timeout_s == 600.0
