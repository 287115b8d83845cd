"""Configs from YAML files and ``key.sub=value`` overrides, checked key by key; and back to YAML."""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from dualforge.config.checks import ConfigError, _check_choice
from dualforge.config.loss import BUILTIN_LOSSES, LossConfig
from dualforge.config.sections import Config
from dualforge.files import write_text_atomic

T = TypeVar("T")
Variants = Mapping[type, Mapping[str, type]]
"""For a tagged-union section (a base class with a ``TAG`` class attribute naming its tag key):
the concrete class of each tag value."""


def load_config(
    path: str | Path | None = None,
    overrides: Sequence[str] = (),
    losses: Mapping[str, type[LossConfig]] = BUILTIN_LOSSES,
) -> Config:
    """Read a YAML config (or defaults when ``path`` is None) and apply ``key.sub=value`` overrides.

    Relative paths in the config are relative to the working directory.

    Args:
        path: The YAML file, or None for the defaults.
        overrides: ``key.sub=value`` items, applied in order.
        losses: The ``loss:`` section's class of each ``loss.name`` (default: dualforge's own;
            ``LossRegistry.sections`` adds the losses a user registered).

    Raises:
        ConfigError: For a missing file, invalid YAML (``file:line:column``), a malformed
            override, an unknown key, a wrong type or a bad value; the message names the key.
    """
    raw: dict[str, Any] = _read_yaml(Path(path)) if path is not None else {}
    for item in overrides:
        apply_override(raw, item)
    return from_dict(Config, raw, variants={LossConfig: losses})


def _read_yaml(path: Path) -> dict[str, Any]:
    """The top-level mapping of a YAML config file."""
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = getattr(err, "problem", None) or "cannot be parsed"
        raise ConfigError(f"{where}: invalid YAML: {problem}") from err
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return loaded


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Set ``raw[a][b] = value`` for ``"a.b=value"`` (value parsed as YAML)."""
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {item!r} must look like key.sub=value")
    parts = key.strip().split(".")
    node = raw
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {item!r}: {part!r} is not a section")
        node = child
    try:
        node[parts[-1]] = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        raise ConfigError(f"override {item!r}: the value is not valid YAML") from None


def from_dict(
    cls: type[T], data: Mapping[str, Any], where: str = "", variants: Variants | None = None
) -> T:
    """Build dataclass ``cls`` from ``data``, checking keys, types and choices recursively.

    Args:
        cls: The dataclass.
        data: Its keys and values.
        where: Key path of ``data`` (``""`` for a whole :class:`Config`), named in errors.
        variants: Concrete classes of tagged-union sections (default: the built-in losses).

    Raises:
        ConfigError: Naming the key (``optim.lr: expected a number, got 'abc'``).
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(data).__name__}")
    variants = variants if variants is not None else {LossConfig: BUILTIN_LOSSES}
    cls, chosen = _variant(cls, data, where, variants)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{where or 'config'}: unknown key(s) {unknown}{chosen}; known: {sorted(fields)}"
        )
    hints = typing.get_type_hints(cls)
    prefix = f"{where}." if where else ""
    kwargs = {
        name: _coerce(hints[name], value, prefix + name, variants) for name, value in data.items()
    }
    return cls(**kwargs)


def _variant(
    cls: type[T], data: Mapping[str, Any], where: str, variants: Variants
) -> tuple[type[T], str]:
    """The class a tagged-union section's tag picks (and ``" for <tag>=<value>"`` for errors);
    ``cls`` itself when it is not a union."""
    if cls not in variants:
        return cls, ""
    tag: str = getattr(cls, "TAG")  # noqa: B009 (a ClassVar of the union's base)
    default = next(f.default for f in dataclasses.fields(cls) if f.name == tag)  # type: ignore[arg-type]
    value = data.get(tag, default)
    choices = variants[cls]
    if not isinstance(value, str) or value not in choices:
        raise ConfigError(f"{where}.{tag}={value!r}: must be one of {sorted(choices)}")
    return choices[value], f" for {where}.{tag}={value!r}"


def _coerce(hint: Any, value: Any, where: str, variants: Variants) -> Any:
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value or {}, where, variants)  # type: ignore[arg-type]
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is Literal:
        _check_choice(value, args, where)
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, where, variants)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return tuple(_coerce(args[0], v, f"{where}[{i}]", variants) for i, v in enumerate(value))
    return _scalar(hint, value, where)


def _scalar(hint: Any, value: Any, where: str) -> Any:
    if hint is float and isinstance(value, (int, str)) and not isinstance(value, bool):
        try:
            return float(value)  # YAML reads 3e-5 (no dot) as a string
        except ValueError:
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if hint is bool and not isinstance(value, bool):
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if hint is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if hint in (float, str) and not isinstance(value, hint):
        raise ConfigError(f"{where}: expected {hint.__name__}, got {value!r}")
    return value


def save_config(cfg: Config, path: str | Path) -> None:
    """Write ``cfg`` as YAML that :func:`load_config` reads back to an equal config."""
    write_text_atomic(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
