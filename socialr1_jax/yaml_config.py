"""Typed configs from YAML with `key=value` overrides, for any (nested) config dataclass.

`load_yaml(cls, path, overrides)` builds a frozen dataclass from a YAML file plus command-line
overrides such as `model.num_layers=4` or `optim.lr=1e-6`, checking every key and value type so
a typo fails loudly instead of being ignored. Every mistake raises `ConfigError`, both a
`ValueError` (for library callers) and a `cli.UsageError` (a command prints it as one `error:`
line), naming the key and, for a misspelt key, the closest known one ("did you mean ...?").
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import types
import typing
from typing import Any

import yaml

from socialr1_jax.cli import UsageError


class ConfigError(UsageError, ValueError):
    """A config file, key or value the user got wrong (one line, names the key)."""


def check_at_least(cfg, section: str, minimum: int, *keys: str, error=None) -> None:
    """Raise `error` (ConfigError) naming `section.key=value` for the first of `keys` whose
    value in the dataclass `cfg` is below `minimum`."""
    for key in keys:
        value = getattr(cfg, key)
        if value < minimum:
            raise (error or ConfigError)(f"{section}.{key}={value} must be >= {minimum}")


def did_you_mean(name: str, choices, prefix: str = "") -> str:
    """' (did you mean PREFIX+X?)' for the closest of `choices` to `name`, or ''."""
    close = difflib.get_close_matches(name, [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {prefix}{close[0]}?)" if close else ""


def _coerce(value: Any, typ: Any, key: str) -> Any:
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(typ)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except (TypeError, ValueError):
                continue
        raise ConfigError(f"{key}: {value!r} does not fit {typ}")
    if dataclasses.is_dataclass(typ):
        if isinstance(value, typ):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping (a section), got {value!r}")
        return from_dict(typ, value, prefix=key + ".")
    if origin in (tuple, list):
        if isinstance(value, str):
            value = yaml.safe_load(value) if value.strip().startswith("[") else value.split(",")
        if not isinstance(value, (list, tuple)):
            value = [value]
        args = typing.get_args(typ)
        elem = args[0] if args else Any
        out = [_coerce(v, elem, key) for v in value]
        return tuple(out) if origin is tuple else out
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if typ is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if typ is float:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{key}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if typ is str:
        if not isinstance(value, (str, int, float)):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    return value


def from_dict(cls, data: dict, *, prefix: str = ""):
    """Build dataclass `cls` from a (nested) dict, refusing unknown keys and ill-typed values."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            raise ConfigError(f"unknown config key {prefix + str(key)}"
                              f"{did_you_mean(str(key), names, prefix)}; "
                              f"{prefix.rstrip('.') or 'the top level'} has {', '.join(names)}")
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:  # a dataclass's own checks (__post_init__)
        msg = str(e)
        if prefix and not msg.startswith(prefix):
            msg = f"{prefix.rstrip('.')}: {msg}"  # name the section the value is in
        raise ConfigError(msg) from None


def to_dict(cfg) -> dict:
    """A dataclass config as a plain nested dict of YAML/JSON types (tuples become lists), for
    dumps, logs and comparisons with a dump read back."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `a.b.c=value` strings onto a nested dict (values parsed as YAML scalars)."""
    data = json.loads(json.dumps(data))  # deep copy, plain types
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node = data
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {p} is not a section")
        try:
            node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: not valid YAML ({' '.join(str(e).split())}); "
                              "quote values with braces, or put them in the --config file") from None
    return data


def load_yaml(cls, path: str | os.PathLike | None = None, overrides: list[str] = (), *,
              defaults: dict | None = None):
    """Load dataclass `cls` from YAML `path` (optional) with `key=value` overrides applied on top."""
    data = dict(defaults or {})
    if path is not None:
        try:
            with open(path) as f:
                loaded = yaml.safe_load(f) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"config file {path}: cannot be read ({e})") from None
        except yaml.YAMLError as e:
            where = getattr(e, "problem_mark", None)
            at = f" at line {where.line + 1}" if where is not None else ""
            raise ConfigError(f"config file {path}: not valid YAML{at}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
        data.update(loaded)
    file_data, overrides = data, list(overrides)
    data = apply_overrides(data, overrides)
    try:
        return from_dict(cls, data)
    except ValueError as e:
        raise ConfigError(_where(cls, file_data, path, overrides, str(e))) from None


def _where(cls, file_data: dict, path, overrides: list[str], msg: str) -> str:
    """`msg` prefixed with where the mistake is: the command-line override that makes it (the
    file alone does not), else the config file."""
    if overrides:
        try:
            from_dict(cls, file_data)
            alone = None
        except ValueError as e:
            alone = str(e)
        if alone != msg:
            named = [o for o in overrides if o.split("=", 1)[0].strip() in msg]
            return f"command-line {named[0] if named else 'override'}: {msg}"
    return f"{path}: {msg}" if path is not None else msg
