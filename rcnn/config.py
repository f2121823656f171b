"""Configuration: nested frozen dataclasses, read from TOML or JSON, overridden with key=value.

Each component owns a small frozen dataclass (AnchorConfig, RPNConfig, ...); a run's
configuration nests them. This module turns such a tree into a plain dict and back, checking
every key and type on the way in, so that a typo or a wrong type in a config file or a
``--set`` is reported with the key's full dotted name and what was expected.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from rcnn.errors import RcnnError

T = TypeVar("T")


def to_dict(config: Any) -> dict[str, Any]:
    """A config dataclass -> nested dicts, lists and scalars (JSON-ready)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Build ``cls`` from nested dicts; missing keys keep their defaults; unknown keys and
    wrong types raise RcnnError naming the dotted key."""
    if not isinstance(data, dict):
        raise RcnnError(f"{where or 'config'}: expected a table of settings, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise RcnnError(
            f"unknown setting {_join(where, unknown[0])}; valid here: {', '.join(sorted(names))}"
        )
    values = {key: _convert(hints[key], value, _join(where, key)) for key, value in data.items()}
    return cls(**values)


def merge(config: T, data: dict[str, Any]) -> T:
    """``config`` with the settings in ``data`` (nested dicts) replaced, checked as from_dict."""
    merged = _deep_update(to_dict(config), data)
    return from_dict(type(config), merged)


def load_file(path: str | Path) -> dict[str, Any]:
    """The settings in a .toml or .json file, as nested dicts."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise RcnnError(f"{path}: cannot read the config file ({error.strerror})") from error
    try:
        return json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as error:
        raise RcnnError(
            f"{path}: not a valid {path.suffix.lstrip('.') or 'TOML'} file: {error}"
        ) from error


def parse_overrides(assignments: list[str]) -> dict[str, Any]:
    """``["rpn.loss.sigma=3", "train.epochs=4"]`` -> nested dicts. Values are Python/TOML-like
    literals (numbers, true/false, strings, lists); anything else is taken as a string."""
    result: dict[str, Any] = {}
    for assignment in assignments:
        key, sep, text = assignment.partition("=")
        if not sep or not key.strip():
            raise RcnnError(f"--set {assignment!r}: expected KEY=VALUE, e.g. train.epochs=4")
        node = result
        *parents, leaf = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = _literal(text.strip())
    return result


def _literal(text: str) -> Any:
    lowered = {"true": "True", "false": "False", "none": "None", "null": "None"}.get(
        text.lower(), text
    )
    try:
        return ast.literal_eval(lowered)
    except (ValueError, SyntaxError):
        return text


def _convert(hint: Any, value: Any, where: str) -> Any:
    """Check ``value`` against the type ``hint`` and convert lists to tuples and dicts to
    dataclasses."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, where)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        return _convert(next(a for a in args if a is not type(None)), value, where)
    if origin is typing.Literal:
        if value not in args:
            raise RcnnError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise RcnnError(f"{where}: expected a list, got {value!r}")
        element_types = [args[0]] * len(value) if args[-1] is Ellipsis else list(args)
        if len(element_types) != len(value):
            raise RcnnError(f"{where}: expected {len(element_types)} values, got {len(value)}")
        return tuple(
            _convert(t, v, f"{where}[{i}]")
            for i, (t, v) in enumerate(zip(element_types, value, strict=True))
        )
    return _scalar(hint, value, where)


def _scalar(hint: Any, value: Any, where: str) -> Any:
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint in (int, str, bool) and type(value) is hint:
        return value
    if hint is Any:
        return value
    raise RcnnError(f"{where}: expected {getattr(hint, '__name__', hint)}, got {value!r}")


def _deep_update(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _deep_update(base[key], value)
        else:
            base[key] = value
    return base


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key
