"""Typed configs from YAML: dataclasses in, clear errors naming the key path out.

`from_dict(TrainConfig, data, source="run.yaml")` builds nested dataclasses, rejecting unknown
keys and wrong types with messages like `run.yaml: drpo.radii[1]: expected a number, got 'x'`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar, get_args, get_origin, get_type_hints

import yaml

from drpo.io import read_text

T = TypeVar("T")


class ConfigError(ValueError):
    """A config value or key that is wrong; the message names the file and key path."""


def _describe(value: Any) -> str:
    return f"{value!r}" if not isinstance(value, (dict, list)) else type(value).__name__


def _convert(value: Any, tp: Any, path: str, source: str) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, path, source)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{source}: {path}: {_describe(value)} matches none of {tp}")
    if origin is typing.Literal:
        if value not in get_args(tp):
            raise ConfigError(f"{source}: {path}: {value!r} is not one of {list(get_args(tp))}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {path}: expected a mapping, got {_describe(value)}")
        return from_dict(tp, value, source=source, prefix=f"{path}.")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: {path}: expected a list, got {_describe(value)}")
        args = get_args(tp)
        item = args[0] if args else Any
        items = [_convert(v, item, f"{path}[{i}]", source) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {path}: expected a mapping, got {_describe(value)}")
        _, vt = get_args(tp) or (str, Any)
        return {str(k): _convert(v, vt, f"{path}.{k}", source) for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            # YAML reads "1e-4" (no dot) as a string; accept numeric strings
            try:
                return float(value) if isinstance(value, str) else _bad(value, "a number", path, source)
            except ValueError:
                _bad(value, "a number", path, source)
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            _bad(value, "an integer", path, source)
        return value
    if tp is bool:
        if not isinstance(value, bool):
            _bad(value, "true or false", path, source)
        return value
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            _bad(value, "a string", path, source)
        return str(value)
    return value


def _bad(value: Any, expected: str, path: str, source: str):
    raise ConfigError(f"{source}: {path}: expected {expected}, got {_describe(value)}")


def from_dict(cls: type[T], data: dict | None, *, source: str = "config", prefix: str = "") -> T:
    """Build dataclass `cls` from a (nested) dict; unknown keys and wrong types are errors."""
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: {prefix.rstrip('.') or '<top>'}: expected a mapping, got {_describe(data)}")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"{source}: unknown key {prefix}{unknown[0]!s} (allowed under {prefix.rstrip('.') or 'the top level'}: "
            f"{', '.join(sorted(names))})"
        )
    kwargs = {k: _convert(v, hints[k], f"{prefix}{k}", source) for k, v in data.items()}
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as err:
        where = f"{prefix.rstrip('.')}: " if prefix else ""
        raise ConfigError(f"{source}: {where}{err}") from None
    return obj


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys; a config that says a thing twice is a typo."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(f"line {key_node.start_mark.line + 1}: key {key!r} appears twice in one mapping "
                                  f"(first on line {seen[key]}); keep one")
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        data = yaml.load(read_text(path), Loader=_UniqueKeyLoader) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return data


def to_dict(obj: Any) -> Any:
    """Dataclass → plain dict (tuples as lists), for YAML/JSON and MLflow params."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} → {"a.b": 1}; lists become JSON strings (MLflow params are flat)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = json.dumps(v) if isinstance(v, list) else v
    return out


def config_hash(obj: Any) -> str:
    """Stable short hash of a config (dataclass or dict)."""
    blob = json.dumps(to_dict(obj), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def deep_merge(base: dict, override: dict) -> dict:
    """Recursively merge `override` into a copy of `base` (mappings merge, everything else replaces)."""
    out = dict(base)
    for k, v in override.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# Blocks that name a component: an override naming another component replaces the block instead
# of merging into it, so the default's options (a latent-MAE checkpoint path) never reach DINOv2.
COMPONENT_BLOCKS = ("features",)


def merge_overrides(base: dict, overrides: dict) -> dict:
    """deep_merge, except that a component block (`features`) whose override names another
    component is replaced, not merged."""
    base = dict(base)
    for key in COMPONENT_BLOCKS:
        new = overrides.get(key)
        if isinstance(new, dict) and "name" in new and new["name"] != base.get(key, {}).get("name"):
            base.pop(key, None)
    return deep_merge(base, overrides)
