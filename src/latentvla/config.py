"""One config system for every stage: typed dataclasses, YAML presets per profile, dotted overrides, a hash.

A stage's config is a (nested) dataclass. It is resolved as: dataclass defaults <- profile preset
(``latentvla/configs/<stage>/<profile>.yaml``) <- user YAML file <- ``key.sub=value`` overrides. Unknown keys and
wrongly typed values are rejected with the list of valid names, so a typo never silently becomes a default.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

PROFILES = ("quick", "demo", "full")
_CONFIG_DIR = Path(__file__).parent / "configs"

T = TypeVar("T")


class ConfigError(ValueError):
    """A config value, key or file is invalid; the message says which and what is allowed."""


HASH_OMIT_DEFAULT = {"hash_omit_default": True}  # field metadata: see config_hash


def _omitted(f: dataclasses.Field, value: Any) -> bool:
    return bool(f.metadata.get("hash_omit_default")) and f.default is not dataclasses.MISSING and value == f.default


def to_dict(cfg: Any, for_hash: bool = False) -> Any:
    """Dataclass (nested) -> plain dict/list/scalars, in field order. ``for_hash``: without the fields marked
    ``HASH_OMIT_DEFAULT`` that hold their default (what ``config_hash`` digests)."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: to_dict(getattr(cfg, f.name), for_hash) for f in dataclasses.fields(cfg)
                if not (for_hash and _omitted(f, getattr(cfg, f.name)))}
    if isinstance(cfg, dict):
        return {str(k): to_dict(v, for_hash) for k, v in cfg.items()}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v, for_hash) for v in cfg]
    return cfg


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert a YAML/CLI value to the annotated type, or raise ConfigError naming the key."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except ConfigError as e:  # try the next member of the union
                errors.append(str(e))
        raise ConfigError(f"{where}: {value!r} matches none of {args}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if dataclasses.is_dataclass(tp):
        if dataclasses.is_dataclass(value):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, where)
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        out = [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        vt = args[1] if len(args) == 2 else Any
        return {str(k): _coerce(v, vt, f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            out = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
        if out != out or out in (float("inf"), float("-inf")):
            raise ConfigError(f"{where}: {value!r} is not a finite number")
        return out
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def from_dict(cls: type[T], data: Mapping[str, Any], where: str = "") -> T:
    """Build dataclass ``cls`` from a mapping; unknown keys raise with the valid ones listed."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs = {}
    for key, value in data.items():
        name = f"{where}.{key}" if where else str(key)
        if key not in fields:
            raise ConfigError(f"unknown config key '{name}'; valid keys here: {sorted(fields)}")
        kwargs[key] = _coerce(value, hints[key], name)
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()
    return obj


def merge(base: dict, update: Mapping) -> dict:
    """Deep-merge ``update`` into a copy of ``base`` (mappings merge, everything else replaces)."""
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def parse_overrides(pairs: list[str] | None) -> dict:
    """``["a.b=1", "c=x,y"]`` -> nested dict with YAML-parsed scalar values."""
    out: dict = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ConfigError(f"override '{pair}' must look like key.sub=value")
        key, raw = pair.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at top level")
    return data


def profile_preset(stage: str, profile: str) -> dict:
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile '{profile}'; valid profiles: {list(PROFILES)}")
    path = _CONFIG_DIR / stage / f"{profile}.yaml"
    return load_yaml(path) if path.is_file() else {}


def resolve(
    cls: type[T],
    stage: str,
    profile: str = "demo",
    config_file: str | Path | None = None,
    overrides: list[str] | None = None,
) -> T:
    """defaults <- profile preset <- config file <- dotted overrides, validated."""
    data = to_dict(cls())
    data = merge(data, profile_preset(stage, profile))
    if config_file is not None:
        data = merge(data, load_yaml(config_file))
    data = merge(data, parse_overrides(overrides))
    return from_dict(cls, data)


def dump_yaml(cfg: Any, path: str | Path | None = None) -> str:
    text = yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=None)
    if path is not None:
        from latentvla.runtime.io import atomic_write_text

        atomic_write_text(Path(path), text)
    return text


def config_hash(cfg: Any, exclude: tuple[str, ...] = ()) -> str:
    """Stable 16-hex digest of the resolved config (top-level keys in ``exclude`` left out).

    A field added after runs existed can carry ``metadata=HASH_OMIT_DEFAULT``: at its default it is left out of
    the digest, so the new option does not orphan every finished run (and everything downstream of it)."""
    data = to_dict(cfg, for_hash=True)
    for key in exclude:
        data.pop(key, None)
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
