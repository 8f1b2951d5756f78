"""Typed configs: plain dataclasses, filled from a YAML preset plus `--key value` overrides.

Nested dataclasses are addressed with dotted keys (`--vl.lr 3e-4`). Values are converted to
the field's declared type (int, float, bool, str, Literal choices, tuples, dicts, optionals);
anything that does not fit raises `ConfigError` naming the key, the value and what is allowed. NaN and
infinity are never valid config values: after a section's own `__post_init__` checks (which name the range,
e.g. "lr is nan; expected a finite number > 0"), any float left that is not finite is refused.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from shared.cli import InputError

T = TypeVar("T")
PRESET_DIR = Path(__file__).resolve().parent.parent / "configs"


class ConfigError(InputError):
    """A config key or value that does not fit the schema."""


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _convert(key: str, value: Any, tp: Any) -> Any:
    """Convert a YAML or command-line value to type tp, or raise ConfigError."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if isinstance(value, str) and tp is not str and origin is not Literal:
        if value.lower() in ("null", "none") and type(None) in args:
            return None
        value = yaml.safe_load(value)
    bad = ConfigError(f"config key {key!r}: value {value!r} is not valid; expected {_describe(tp)}")
    if tp is Any:
        return value
    if origin is Literal:
        if value not in args:
            raise bad
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(key, value, arg)
            except ConfigError:
                continue
        raise bad
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise bad
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(key, v, args[0]) for v in value)
        if len(value) != len(args):
            raise ConfigError(f"config key {key!r}: value {value!r} has {len(value)} items; expected {len(args)}")
        return tuple(_convert(key, v, a) for v, a in zip(value, args))
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise bad
        if not args:
            return dict(value)
        return {_convert(key, k, args[0]): _convert(key, v, args[1]) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if tp is float:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise bad from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise bad
        return str(value)
    raise ConfigError(f"config key {key!r}: unsupported field type {tp!r}")


def _finite(value: Any) -> bool:
    """False if `value` is, or holds (in a tuple, list or dict), a NaN or infinite float."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, (tuple, list)):
        return all(_finite(v) for v in value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    return True


def _build(cls: type[T], values: dict, prefix: str) -> T:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for name, value in values.items():
        key = prefix + name
        if name not in hints:
            close = difflib.get_close_matches(name, names, n=1)
            hint = f" (did you mean {prefix + close[0]!r}?)" if close else ""
            raise ConfigError(f"unknown config key {key!r}{hint}; expected one of {[prefix + n for n in names]}")
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise ConfigError(f"config key {key!r}: value {value!r} is not a mapping; expected a section")
            kwargs[name] = _build(tp, value, key + ".")
        else:
            kwargs[name] = _convert(key, value, tp)
    try:
        built = cls(**kwargs)
    except (ValueError, TypeError) as err:
        if isinstance(err, ConfigError):
            raise
        section = prefix.rstrip(".") or cls.__name__
        raise ConfigError(f"config section {section!r}: {err}") from err
    for name, value in kwargs.items():
        if not _finite(value):
            expected = "a finite number" if isinstance(value, float) else "finite numbers"
            raise ConfigError(f"config key {prefix + name!r}: value {value!r} is not valid; expected {expected}")
    return built


def _set_dotted(tree: dict, key: str, value: Any) -> None:
    node = tree
    *parents, leaf = key.split(".")
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"config key {key!r}: {part!r} is a value, not a section")
        node = child
    node[leaf] = value


def parse_overrides(args: list[str]) -> dict[str, str]:
    """Turn ['--a.b', '1', '--c=2'] into {'a.b': '1', 'c': '2'}."""
    out, i = {}, 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or len(arg) == 2:
            raise ConfigError(f"override {arg!r} is not of the form --key value or --key=value")
        if "=" in arg:
            key, value = arg[2:].split("=", 1)
            i += 1
        else:
            if i + 1 >= len(args):
                raise ConfigError(f"override {arg!r} has no value; expected --key value")
            key, value = arg[2:], args[i + 1]
            i += 2
        out[key.replace("-", "_")] = value
    return out


def resolve_preset(preset: str | Path) -> Path:
    """A preset name from configs/ (with or without .yaml), or a path to a YAML file."""
    path = Path(preset)
    if path.suffix not in (".yaml", ".yml"):
        path = PRESET_DIR / f"{preset}.yaml"
    if not path.is_file():
        names = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
        raise ConfigError(f"config preset {str(preset)!r} not found at {path}; expected a YAML file or one of {names}")
    return path


def _read_preset(preset: str | Path, chain: tuple[str, ...] = ()) -> dict:
    """A preset's tree; `extends: OTHER` at its top loads OTHER first and merges this one over it."""
    path = resolve_preset(preset)
    if str(path) in chain:
        raise ConfigError(f"config preset {path} extends itself through {list(chain)}")
    loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"config preset {path} holds {type(loaded).__name__}; expected a mapping")
    parent = loaded.pop("extends", None)
    return _merge(_read_preset(parent, (*chain, str(path))), loaded) if parent else loaded


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_config(cls: type[T], preset: str | Path | None = None, overrides: dict[str, Any] | None = None) -> T:
    """Build cls from a YAML preset (optional, may `extends:` another) with dotted-key overrides on top."""
    tree: dict = _read_preset(preset) if preset is not None else {}
    for key, value in (overrides or {}).items():
        _set_dotted(tree, key, value)
    return _build(cls, tree, "")


def to_dict(config: Any) -> dict:
    """A config as plain JSON/YAML-friendly data."""
    return dataclasses.asdict(config)
