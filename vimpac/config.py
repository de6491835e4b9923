"""Configs are plain dataclasses. This module turns presets, YAML files and `key=value`
command-line overrides into one dataclass instance, and back into plain dicts for JSON.

    cfg = build_config(ModelConfig, presets=MODEL_PRESETS, preset="small",
                       yaml_path="my.yaml", overrides=["dim=384", "layout=T,H,W"])

Nested dataclass fields are addressed with dots (`optim.lr=3e-4`). Values are converted to
the field's declared type, so a wrong value is an error that names the field. A list field takes
comma-separated items (`seeds=0,1,2`) or a YAML list (`seeds=[0,1,2]`); a list of KEY=VALUE
items (a field declared with `metadata=KEY_VALUE_ITEMS`) keeps the commas of a value with its
key: `model_overrides=layout=T,H,W,dim=64` is ("layout=T,H,W", "dim=64"), and so is the unquoted
YAML list `model_overrides=[layout=T,H,W,dim=64]`.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Mapping, Sequence, TypeVar

import yaml

T = TypeVar("T")

# Field metadata of a list of KEY=VALUE strings, e.g. `field(default=(), metadata=KEY_VALUE_ITEMS)`.
KEY_VALUE_ITEMS = {"items": "KEY=VALUE"}


class ConfigError(ValueError):
    """A config field, preset or file is wrong; the message names it."""


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-able dict of a (nested) dataclass; tuples become lists."""
    return _plain(dataclasses.asdict(cfg))


def from_dict(cls: type[T], data: Mapping[str, Any], where: str = "config") -> T:
    """Build `cls` from a mapping, checking field names and converting value types."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping for {cls.__name__}, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown} for {cls.__name__}; known: {sorted(names)}")
    kwargs = {key: _convert(value, hints[key], f"{where}.{key}") for key, value in data.items()}
    return cls(**kwargs)


def record_differences(before: Any, now: Any, key: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted key, before, now) for every leaf where two recorded settings (nested dicts, as
    `to_dict` and JSON give them) differ, in key order."""
    if isinstance(before, dict) and isinstance(now, dict):
        return [d for k in sorted(set(before) | set(now), key=str)
                for d in record_differences(before.get(k), now.get(k), f"{key}.{k}" if key else str(k))]
    return [] if before == now else [(key, before, now)]


def apply_overrides(cfg: T, overrides: Mapping[str, Any] | Sequence[str]) -> T:
    """Return a copy of `cfg` with `overrides` applied ('a.b=value' strings or a mapping)."""
    if not isinstance(overrides, Mapping):
        overrides = dict(_split_override(item) for item in overrides)
    for dotted, value in overrides.items():
        cfg = _set_path(cfg, dotted.split("."), value, dotted, root=cfg)
    return cfg


def build_config(
    cls: type[T],
    presets: Mapping[str, T] | None = None,
    preset: str | None = None,
    yaml_path: str | Path | None = None,
    overrides: Mapping[str, Any] | Sequence[str] = (),
) -> T:
    """Preset (or the class defaults), then the YAML file, then command-line overrides."""
    if preset is not None:
        if not presets or preset not in presets:
            raise ConfigError(f"unknown preset {preset!r}; choose one of {sorted(presets or {})}")
        cfg = presets[preset]
    else:
        cfg = cls()
    if yaml_path is not None:
        path = Path(yaml_path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (OSError, UnicodeDecodeError, RecursionError) as exc:
            # RecursionError: PyYAML builds nested collections recursively; a few kB of '[' overflow it.
            reason = "nested too deeply" if isinstance(exc, RecursionError) else exc
            raise ConfigError(f"{path}: cannot read YAML config: {reason}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {_yaml_problem(exc)}") from exc
        if not isinstance(data, Mapping):
            raise ConfigError(f"{path}: expected a mapping of field: value at the top level")
        try:
            cfg = apply_overrides(cfg, _flatten(data))
        except ConfigError as exc:  # say which of the file and the command line holds the bad setting
            raise ConfigError(f"{path}: {exc}") from exc
    return apply_overrides(cfg, overrides)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's report on one line (it spans several, with a caret under the spot)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None)
    if mark is not None and problem:
        return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"
    return " ".join(str(exc).split())


def _split_override(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {item!r}: expected key=value")
    return key.strip(), value.strip()


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _set_path(cfg: Any, path: list[str], value: Any, dotted: str, root: Any) -> Any:
    if not dataclasses.is_dataclass(cfg):
        raise ConfigError(f"{dotted}: {type(cfg).__name__} has no fields")
    names = {f.name for f in dataclasses.fields(cfg)}
    head = path[0]
    if head not in names:
        guesses = _close_keys(dotted, _dotted_keys(root))
        hint = f" (did you mean {' or '.join(map(repr, guesses))}?)" if guesses else ""
        raise ConfigError(f"unknown config field {dotted!r}{hint}; {type(cfg).__name__} has {sorted(names)}")
    if len(path) > 1:
        new_value = _set_path(getattr(cfg, head), path[1:], value, dotted, root)
    elif value is None and dataclasses.is_dataclass(getattr(cfg, head)):
        return cfg  # a YAML section whose keys are all commented out (`train:`) changes nothing
    else:
        if _holds_key_value_items(cfg, head):
            value = _key_value_items(value, dotted)
        new_value = _convert(value, typing.get_type_hints(type(cfg))[head], dotted)
    return dataclasses.replace(cfg, **{head: new_value})


def _holds_key_value_items(cfg: Any, name: str) -> bool:
    return any(f.name == name and f.metadata.get("items") == KEY_VALUE_ITEMS["items"] for f in dataclasses.fields(cfg))


def _key_value_items(value: Any, where: str) -> Any:
    """The items of a KEY=VALUE list field: 'layout=T,H,W,dim=64' -> ['layout=T,H,W', 'dim=64'].
    Split at the commas, then a piece without '=' cannot be an item of its own and is the rest of
    the value before it. The same holds for a YAML list (text starting with '[', or a list from a
    YAML file): unquoted, `[layout=T,H,W]` is the YAML items 'layout=T', 'H', 'W', rejoined to
    'layout=T,H,W'; quoted items (`["layout=T,H,W"]`) all hold '=' and stay as they are."""
    if isinstance(value, str):
        value = _yaml_list(value, where) if value.strip().startswith("[") else value.split(",")
    if not isinstance(value, (list, tuple)):
        return value  # _convert says what was expected
    items: list[Any] = []
    for piece in value:
        piece = piece.strip() if isinstance(piece, str) else piece
        if items and isinstance(piece, str) and "=" not in piece and isinstance(items[-1], str):
            items[-1] += "," + piece
        elif piece != "":
            items.append(piece)
    return items


def _yaml_list(text: str, where: str) -> Any:
    """A list setting given as YAML text (`[0, 1, 2]`); bad YAML is a ConfigError naming the setting."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: {text!r} is not a valid YAML list: {_yaml_problem(exc)}") from None
    except RecursionError:  # PyYAML builds nested collections recursively
        raise ConfigError(f"{where}: {text!r} is not a valid YAML list: nested too deeply") from None


def _dotted_keys(cfg: Any, prefix: str = "") -> list[str]:
    """Every settable key of a (nested) dataclass instance: `train`, `train.lr`, ..."""
    keys = []
    for f in dataclasses.fields(cfg):
        keys.append(prefix + f.name)
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            keys += _dotted_keys(value, f"{prefix}{f.name}.")
    return keys


def _close_keys(dotted: str, keys: list[str]) -> list[str]:
    """Keys the user may have meant: the same last part in another section (`lr` -> `train.lr`),
    then near spellings of the whole key (`trian.lr`, `train.lrr`)."""
    last = dotted.rsplit(".", 1)[-1]
    same_name = [k for k in keys if k.rsplit(".", 1)[-1] == last]
    similar = difflib.get_close_matches(dotted, keys, n=3, cutoff=0.75)
    return list(dict.fromkeys(same_name + similar))[:3]


def _convert(value: Any, annotation: Any, where: str) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{where}: {value!r} fits none of {annotation}: {errors}")
    if origin is typing.Literal:
        for choice in args:
            if value == choice or str(value) == str(choice):
                return choice
        raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
    if origin in (tuple, list):
        if isinstance(value, str):
            value = _yaml_list(value, where) if value.strip().startswith("[") else [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        item_type = args[0] if args else Any
        items = [_convert(v, item_type, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if dataclasses.is_dataclass(annotation):
        if dataclasses.is_dataclass(value):
            return value
        return from_dict(annotation, value, where)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if annotation in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected {annotation.__name__}, got {value!r}")
        try:
            number = float(value) if annotation is float else _to_int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected {annotation.__name__}, got {value!r}") from None
        return number
    if annotation is str:
        if value is None:  # `key:` / `key: null` in YAML; str(None) would be the text "None"
            raise ConfigError(f"{where}: expected a string, got null")
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value


def _to_int(value: Any) -> int:
    if isinstance(value, int):
        return value
    as_float = float(value)
    if not as_float.is_integer():
        raise ValueError(value)
    return int(as_float)


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj
