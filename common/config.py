"""Typed configuration from YAML + ``key=value`` overrides, validated against dataclasses.

The one validator of every config of the project (run configs, cluster profiles, recipe options;
sweep and tune files build run configs through it). A config source is a YAML file, a dict, or a
list of dotted overrides; they are merged in order, ``${...}`` interpolation is resolved (OmegaConf,
only when a value uses it), and the plain dict is checked against a dataclass schema here, so every
error is one line naming the source, the key path and what was expected, with a close-match
suggestion for misspelt keys::

    config.yaml: unknown key 'trainer.max_step' (did you mean 'trainer.max_steps'?)
    override 'trainer.max_steps=ten': trainer.max_steps expects an integer, got 'ten'

Fields may use: bool, int, float, str, Optional[X], Literal[...], list[X], dict[str, X], Any and
nested dataclasses. Text that spells a number or a boolean (``"7"``, ``"1e-3"``, ``"true"``: what a
``key=value`` command line gives) is accepted for an int, float or bool field. A field's help text
lives in ``metadata["help"]`` (see :func:`field_help`). ``ConfigError`` is a
`common.errors.InputError` (exit 2).

Value rules live here, once per value: a number is always finite (NaN/inf refused in every float field
and inside ``Any`` values), and a field declares its range with ``option(..., ge=/gt=/le=/lt=)``. The
same rule checks a command-line option (`check_value`, used by `orchestrator.cliutil`), so a value one
command refuses no other accepts::

    optim.weight_decay: expected a number >= 0, got -1
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import io
import math
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml

from common.errors import InputError

T = TypeVar("T")


class ConfigError(InputError):
    """A config value or key is wrong. The message is one line: source, key path, expectation.

    ``key_path`` is the dotted key the error is about, when there is one.
    """

    def __init__(self, message: str, key_path: str | None = None):
        super().__init__(message)
        self.key_path = key_path


BOUNDS = ("ge", "gt", "le", "lt")
_BOUND_TEXT = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}


def option(default: Any = dataclasses.MISSING, help: str = "", *, factory: Any = None, ge: float | None = None,
           gt: float | None = None, le: float | None = None, lt: float | None = None) -> Any:
    """A dataclass field with a help text (shown by ``--help``-style listings and docs) and its range:
    ``ge``/``gt``/``le``/``lt`` bound a number (None and non-numbers such as ``"auto"`` are not bounded)."""
    metadata = {"help": help, **{k: v for k, v in zip(BOUNDS, (ge, gt, le, lt)) if v is not None}}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def bounds_text(bounds: dict) -> str:
    """``{"ge": 0, "lt": 1}`` -> ``">= 0 and < 1"``."""
    return " and ".join(f"{_BOUND_TEXT[k]} {bounds[k]:g}" if isinstance(bounds[k], float) else
                        f"{_BOUND_TEXT[k]} {bounds[k]}" for k in BOUNDS if k in bounds)


def check_bounds(value: Any, bounds: dict, path: str, tp_name: str = "a number", shown: Any = None) -> None:
    """ConfigError ``"<path>: expected <tp_name> >= 0, got -1"`` when number ``value`` breaks ``bounds``
    (keys of `BOUNDS`); ``shown``: the value as the user wrote it (default ``value``)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    ok = all((k != "ge" or value >= b) and (k != "gt" or value > b) and (k != "le" or value <= b)
             and (k != "lt" or value < b) for k, b in bounds.items() if k in _BOUND_TEXT)
    if not ok:
        raise ConfigError(f"{path}: expected {tp_name} {bounds_text(bounds)}, got {value if shown is None else shown}",
                          path)


def field_rule(schema: type, key: str) -> tuple[Any, dict]:
    """(type, bounds) of dotted ``key`` of dataclass ``schema``: the rule a command-line option shares with
    the config value it sets (`check_value`)."""
    cls, parts = schema, key.split(".")
    for part in parts[:-1]:
        cls = _hints(cls)[part]
    f = {f.name: f for f in dataclasses.fields(cls)}[parts[-1]]
    return _hints(cls)[parts[-1]], {k: v for k, v in f.metadata.items() if k in _BOUND_TEXT}


def check_value(value: Any, tp: Any, bounds: dict | None, path: str) -> Any:
    """``value`` (text from a command line, or a parsed value) converted to type ``tp`` and checked against
    ``bounds`` with the rule of config fields: ConfigError naming ``path`` and what was expected."""
    coerced = _coerce_item(value, tp, path)
    check_bounds(coerced, bounds or {}, path, _number_name(tp), shown=value)
    return coerced


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    """The resolved field types of a dataclass (``typing.get_type_hints`` is slow: once per class)."""
    return typing.get_type_hints(cls)


def field_help(cls: type) -> dict[str, str]:
    """Dotted key → help text for every leaf field of a dataclass schema."""
    out: dict[str, str] = {}
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out.update({f"{f.name}.{k}": v for k, v in field_help(tp).items()})
        else:
            out[f.name] = f.metadata.get("help", "")
    return out


# ----------------------------------------------------------------------------- sources


def load_yaml(path: str | os.PathLike) -> dict:
    """Read a YAML mapping; errors name the file."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file; expected a YAML mapping (key: value lines)") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror or e}); expected a YAML mapping") from None
    try:
        data = OmegaConf.to_container(OmegaConf.load(io.StringIO(text)), resolve=False)
    except (yaml.YAMLError, OmegaConfBaseException) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"{path}: not valid YAML ({first})") from None
    except OSError:  # OmegaConf.load on a top-level scalar (42, true): "Invalid loaded object type"
        data = yaml.safe_load(text)
    if data is None:
        return {}
    if not isinstance(data, dict):
        kind = "a list" if isinstance(data, list) else f"the scalar {data!r}"[:60]
        raise ConfigError(f"{path}: expected a YAML mapping (key: value lines) at the top level, got {kind}")
    return data


def shown(text: str) -> str:
    """``text`` with control characters escaped (``\\n``, ``\\r``, ``\\x00``): a message quoting user text
    stays one line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def parse_overrides(overrides: list[str]) -> list[tuple[str, Any, str]]:
    """``["a.b=1", "c=[x, y]"]`` → ``[(path, value, original_text)]``; values parsed as YAML."""
    parsed = []
    for text in overrides:
        if "=" not in text or text.startswith("="):
            raise ConfigError(f"override '{shown(text)}': expected key=value (e.g. trainer.max_steps=100)")
        key, raw = text.split("=", 1)
        key = key.strip().lstrip("+")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        parsed.append((key, value, text))
    return parsed


def _set_path(d: dict, path: str, value: Any) -> None:
    parts = path.split(".")
    for p in parts[:-1]:
        nxt = d.get(p)
        if not isinstance(nxt, dict):
            nxt = {}
            d[p] = nxt
        d = nxt
    d[parts[-1]] = value


def merge(base: dict, update: dict) -> dict:
    """Recursive dict merge (update wins); dict values merge, everything else replaces."""
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


# ----------------------------------------------------------------------------- validation


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is bool:
        return "true or false"
    if tp is str:
        return "a string"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (list, tuple):
        return "a list"
    if origin is dict or tp is dict:
        return "a mapping"
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        return " or ".join(_type_name(a) for a in args) + (" or null" if len(args) < len(get_args(tp)) else "")
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


def _number_name(tp: Any) -> str:
    """"an integer" / "a number": the numeric part of ``tp`` (``Optional[int]`` -> "an integer")."""
    args = get_args(tp) if get_origin(tp) in (Union, types.UnionType) else (tp,)
    return "an integer" if int in args and float not in args else "a number"


class _Mismatch(Exception):
    pass


_FLOAT_RE = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
_INT_RE = re.compile(r"[-+]?\d+")
_BOOL_TEXT = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


def _defaults(cls: type) -> dict:
    """The schema's default values as a dict (required fields left out)."""
    hints = _hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
            out[f.name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
        elif dataclasses.is_dataclass(hints[f.name]):
            out[f.name] = _defaults(hints[f.name])
    return out


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Check ``value`` against type ``tp``; return it converted (int→float, dict→dataclass)."""
    origin = get_origin(tp)
    if tp is Any:  # a copy: configs never share a mutable value with their sources (or each other)
        _check_finite(value, path)
        return copy.deepcopy(value) if isinstance(value, (dict, list)) else value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, path)
            except _Mismatch:
                continue
        raise _Mismatch
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _BOOL_TEXT:
            return _BOOL_TEXT[value.strip().lower()]
        raise _Mismatch
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and _INT_RE.fullmatch(value.strip()):
            return int(value)
        raise _Mismatch
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str) and _FLOAT_RE.fullmatch(value.strip()):
            number = float(value)  # YAML 1.1 reads "1e-3" (no dot) as a string; key=value text
        elif isinstance(value, str) and value.strip().lower().lstrip("+-.") in ("nan", "inf", "infinity"):
            number = math.nan
        else:
            raise _Mismatch
        if not math.isfinite(number):  # NaN/inf (also 1e999) is never a setting
            raise ConfigError(f"{path}: expected a finite number, got {value!r}", path)
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        raise _Mismatch
    if origin is Literal:
        if value in get_args(tp):
            return value
        raise _Mismatch
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise _Mismatch
        (item_tp,) = get_args(tp)[:1] or (Any,)
        return [_coerce_item(v, item_tp, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise _Mismatch
        args = get_args(tp)
        val_tp = args[1] if len(args) == 2 else Any
        return {str(k): _coerce_item(v, val_tp, f"{path}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise _Mismatch
        return _build(tp, value, path)
    raise _Mismatch


def _check_finite(value: Any, path: str) -> None:
    """No NaN/inf anywhere inside a free-form (``Any``) value."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{path}: expected a finite number, got {value!r}", path)
    if isinstance(value, dict):
        for k, v in value.items():
            _check_finite(v, f"{path}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_finite(v, f"{path}[{i}]")


def _coerce_item(value: Any, tp: Any, path: str) -> Any:
    try:
        return _coerce(value, tp, path)
    except _Mismatch:
        raise ConfigError(f"{path} expects {_type_name(tp)}, got {value!r}", path) from None


def _build(cls: type[T], data: dict, prefix: str = "") -> T:
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            path = f"{prefix}.{key}" if prefix else str(key)
            close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.6)
            hint = f" (did you mean '{prefix + '.' if prefix else ''}{close[0]}'?)" if close else (
                f" (valid keys: {', '.join(sorted(fields))})"
            )
            raise ConfigError(f"unknown key '{path}'{hint}", path)
    kwargs = {}
    for name, f in fields.items():
        path = f"{prefix}.{name}" if prefix else name
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                if dataclasses.is_dataclass(hints[name]):
                    kwargs[name] = _build(hints[name], {}, path)
                    continue
                raise ConfigError(f"missing required key '{path}' ({_type_name(hints[name])})", path)
            continue
        kwargs[name] = _coerce_item(data[name], hints[name], path)
        check_bounds(kwargs[name], f.metadata, path, _number_name(hints[name]), shown=data[name])
    try:
        return cls(**kwargs)
    except ValueError as e:  # __post_init__ checks name the field they reject: "max_steps must be > 0"
        key = getattr(e, "key_path", None)
        path = f"{prefix}.{key}" if prefix and key else (key or prefix or None)
        raise ConfigError(f"{prefix + '.' if prefix else ''}{e}", path) from None


def _has_path(d: Any, path: str) -> bool:
    for part in path.split("."):
        if not isinstance(d, dict) or part not in d:
            return False
        d = d[part]
    return True


def _locate_source(err: ConfigError, sources: list[tuple[str, dict]], overrides: list[tuple[str, Any, str]]) -> str:
    """Prefix an error with the override or file that set the offending key."""
    path = err.key_path
    if path:
        for key, _value, text in reversed(overrides):
            if key == path or path.startswith((key + ".", key + "[")) or key.startswith(path + "."):
                return f"override '{shown(text)}': {err}"
        for name, d in reversed(sources):
            if _has_path(d, path):
                return f"{name}: {err}"
    return f"{sources[-1][0]}: {err}" if sources else str(err)


def build_config(
    schema: type[T],
    sources: list[tuple[str, dict]] | None = None,
    overrides: list[str] | None = None,
) -> T:
    """Merge ``sources`` (name, mapping) in order, apply dotted ``overrides``, resolve, validate.

    Raises :class:`ConfigError` naming the source (file or override) and the key path.
    """
    sources = list(sources or [])
    # Start from the schema's defaults so that ${...} may point at keys nobody set.
    merged: dict = _defaults(schema)
    for _name, d in sources:
        merged = merge(merged, d)
    parsed = parse_overrides(list(overrides or []))
    for key, value, _text in parsed:
        _set_path(merged, key, value)
    resolved = _resolve(merged, sources, parsed) if _interpolates(merged) else merged
    try:
        return _build(schema, resolved or {})
    except ConfigError as e:
        raise ConfigError(_locate_source(e, sources, parsed), e.key_path) from None


def _interpolates(value: Any) -> bool:
    """Whether any string in ``value`` (nested dicts/lists) holds a ``${...}`` interpolation."""
    if isinstance(value, str):
        return "${" in value
    if isinstance(value, dict):
        return any(_interpolates(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_interpolates(v) for v in value)
    return False


def _resolve(merged: dict, sources: list[tuple[str, dict]], parsed: list[tuple[str, Any, str]]) -> dict:
    """``${...}`` interpolation resolved by OmegaConf; errors name the override or file that used it."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        return OmegaConf.to_container(OmegaConf.create(merged), resolve=True)
    except OmegaConfBaseException as e:
        msg = str(e).strip().splitlines()[0]
        culprits = [text for _k, _v, text in parsed if "${" in text]
        where = f"override '{shown(culprits[-1])}': " if culprits else (f"{sources[-1][0]}: " if sources else "")
        raise ConfigError(f"{where}cannot resolve interpolation: {msg}") from None


def to_container(cfg: Any) -> dict:
    """A dataclass config as plain nested dicts/lists (YAML- and JSON-safe)."""
    return dataclasses.asdict(cfg)


def to_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_container(cfg), sort_keys=False, default_flow_style=None)


def flatten(d: Any, prefix: str = "") -> dict[str, str]:
    """Dotted key → string value of every leaf (for MLflow params)."""
    if dataclasses.is_dataclass(d):
        d = to_container(d)
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = str(v)
    return out
