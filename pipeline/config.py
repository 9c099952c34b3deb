"""Typed, validated, frozen configs: YAML in, frozen dataclasses out.

Any frozen dataclass can be a config. :func:`from_dict` checks every key and value against
the dataclass fields (nested dataclasses, ``Optional``, ``Literal``, tuples, lists, dicts),
and an unknown or mistyped key is a :class:`ConfigError` naming the key and the file.
CLI overrides are ``dotted.key=value`` strings whose value is parsed as YAML.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration is invalid: unknown key, wrong type, or bad value."""


@dataclasses.dataclass(frozen=True)
class Resources:
    """How a stage runs on Ray: actor pool size, per-actor resources, batch size and row time limit.

    ``compute: actors`` keeps a pool of long-lived actors (a stage that loads a model);
    ``compute: tasks`` runs the stage in short Ray tasks that hold their CPU only while a row is
    processed (light stages: decode, encode), so idle light stages never starve the others.
    ``row_timeout_s`` turns a row that runs longer than this in the stage into a
    ``TimeoutError`` on that row (the worker is restarted; None: no limit).
    """

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    min_actors: int = 1
    max_actors: int = 1
    batch_size: int = 1
    compute: Literal["actors", "tasks"] = "actors"
    row_timeout_s: float | None = None

    def __post_init__(self) -> None:
        if self.num_cpus < 0 or self.num_gpus < 0:
            raise ConfigError(f"num_cpus/num_gpus must be >= 0, got {self.num_cpus}/{self.num_gpus}")
        if self.min_actors < 1 or self.max_actors < self.min_actors:
            raise ConfigError(
                f"need 1 <= min_actors <= max_actors, got {self.min_actors}..{self.max_actors}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.compute not in ("actors", "tasks"):
            raise ConfigError(f"compute must be 'actors' or 'tasks', got {self.compute!r}")
        if self.row_timeout_s is not None and self.row_timeout_s <= 0:
            raise ConfigError(f"row_timeout_s must be > 0 (or null), got {self.row_timeout_s}")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, where: str) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is typing.Union or origin is types.UnionType:
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{where}: {value!r} is not {_type_name(tp)}")
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(f"{where}: {value!r} is not one of {list(get_args(tp))}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, where)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
            items = [_convert(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args))]
        else:
            item_tp = args[0] if args else Any
            items = [_convert(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        args = get_args(tp) or (str, Any)
        return {_convert(k, args[0], where): _convert(v, args[1], f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


def from_dict(cls: type[T], data: Mapping[str, Any] | None, where: str = "config") -> T:
    """Build the frozen dataclass ``cls`` from ``data``, checking keys and types.

    ``where`` prefixes error messages (use the file name). Raises ConfigError.
    """
    data = dict(data or {})
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key {unknown[0]!r} for {cls.__name__} (known: {', '.join(sorted(fields))})")
    for name, value in data.items():
        # a partial mapping for a nested config keeps the defaults its parent gives that field
        # (TrajectoryJobConfig's run: rows_per_block 32 stays when only run.num_cpus is set)
        default = fields[name].default_factory
        if isinstance(value, Mapping) and default is not dataclasses.MISSING and dataclasses.is_dataclass(hints[name]):
            base = default()
            if dataclasses.is_dataclass(base):
                data[name] = _deep_merge(to_dict(base), value)
    kwargs = {name: _convert(value, hints[name], f"{where}.{name}") for name, value in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def _deep_merge(base: dict, over: Mapping) -> dict:
    """``over`` on top of ``base``; nested mappings merge key by key."""
    out = dict(base)
    for key, value in over.items():
        out[key] = _deep_merge(out[key], value) if isinstance(value, Mapping) and isinstance(out.get(key), dict) \
            else value
    return out


def to_dict(config: Any) -> dict:
    """Plain-dict form of a config dataclass (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config), default=list))


# a key is secret when one of its words (split on "_", "-" and ".") is one of these, or it is session_token
SECRET_WORDS = frozenset({"key", "secret", "token", "password", "passwd", "credentials", "session_token"})
MASK = "***"


def is_secret_key(name: str) -> bool:
    """Whether a config key names a secret (``key``, ``secret``, ``aws_secret_access_key``, ``session_token``,
    ``password``, ``credentials``...); ``tokenizer`` or ``num_keyframes`` are not."""
    lowered = str(name).lower()
    return lowered in SECRET_WORDS or bool(SECRET_WORDS & set(lowered.replace("-", "_").replace(".", "_").split("_")))


def redact(data: Any) -> Any:
    """A copy of plain config data with every set value under a secret-like key replaced by ``***``.

    Used wherever a config leaves the process in readable form: ``config_hash`` (so the manifest's
    ``config_hash`` column does not depend on credentials), ``vidflow config --print`` and logs.
    """
    if isinstance(data, Mapping):
        return {k: (MASK if is_secret_key(k) and v not in (None, "", False) else redact(v)) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [redact(v) for v in data]
    return data


def config_hash(config: Any) -> str:
    """Stable 16-hex-digit hash of a config's values (secrets masked: changing a credential changes nothing)."""
    text = json.dumps(redact(to_dict(config)), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def read_yaml(path: str) -> dict:
    """``yaml.safe_load`` of a local or fsspec file; an empty file is ``{}``."""
    import fsspec

    with fsspec.open(path, "r") as handle:
        data = yaml.safe_load(handle)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def apply_overrides(data: dict, overrides: Iterable[str]) -> dict:
    """Apply ``a.b.c=value`` overrides (value parsed as YAML) to a nested dict copy."""
    out = json.loads(json.dumps(data))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.path=value")
        key, raw = item.split("=", 1)
        parts = [p for p in key.strip().split(".") if p]
        if not parts:
            raise ConfigError(f"override {item!r} has an empty key")
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
        node[parts[-1]] = yaml.safe_load(raw)
    return out


def load_config(cls: type[T], path: str | None = None, overrides: Iterable[str] = ()) -> T:
    """Load ``cls`` from an optional YAML file plus CLI overrides."""
    data = read_yaml(path) if path else {}
    data = apply_overrides(data, overrides)
    where = path or "config"
    if overrides:
        where = f"{where} (with overrides)"
    return from_dict(cls, data, where)


def replace(config: T, **changes: Any) -> T:
    return dataclasses.replace(config, **changes)
