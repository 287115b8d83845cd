"""How a config section checks itself: ``Literal`` choices, rules, and the error that names the key."""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Sequence
from typing import Any, Literal

from dualforge.errors import UserError


class ConfigError(UserError, ValueError):
    """A config file or override is invalid; the message names the key."""


Check = tuple[bool, str, str]
"""``(ok, field, what it must be)``, one rule of a section."""


def _check_choice(value: Any, allowed: tuple[Any, ...], key: str) -> None:
    """Raise naming ``key`` unless ``value`` is one of ``allowed`` (same type, not ``1 == True``)."""
    if not any(value == a and type(value) is type(a) for a in allowed):
        raise ConfigError(f"{key}={value!r}: must be one of {list(allowed)}")


_CHOICES: dict[type, dict[str, tuple[Any, ...]]] = {}


def _literal_values(hint: Any) -> tuple[Any, ...] | None:
    """The values a ``Literal`` (or ``Literal | None``) hint allows, else None."""
    if typing.get_origin(hint) is Literal:
        return typing.get_args(hint)
    if typing.get_origin(hint) not in (typing.Union, types.UnionType):
        return None
    args = typing.get_args(hint)
    inner = [a for a in args if a is not type(None)]
    if len(inner) != 1 or typing.get_origin(inner[0]) is not Literal:
        return None
    return (*typing.get_args(inner[0]), *((None,) if type(None) in args else ()))


def _choices(cls: type) -> dict[str, tuple[Any, ...]]:
    """``{field: allowed values}`` of the ``Literal`` fields of dataclass ``cls`` (cached)."""
    if cls not in _CHOICES:
        hints = typing.get_type_hints(cls)
        found = {f.name: _literal_values(hints[f.name]) for f in dataclasses.fields(cls)}
        _CHOICES[cls] = {name: values for name, values in found.items() if values is not None}
    return _CHOICES[cls]


def _validate(section: Any, name: str, checks: Sequence[Check] = ()) -> None:
    """Check a section's ``Literal`` fields, then ``checks``; raise naming the first bad key.

    Args:
        section: The dataclass instance.
        name: Its key path, e.g. ``"loss.matryoshka"``.
        checks: Rules beyond the choices.

    Raises:
        ConfigError: ``name.field=value: must be ...``.
    """
    for key, allowed in _choices(type(section)).items():
        _check_choice(getattr(section, key), allowed, f"{name}.{key}")
    for ok, key, want in checks:
        if not ok:
            raise ConfigError(f"{name}.{key}={getattr(section, key)!r}: must be {want}")


def _optional_at_least(value: int | None, low: int) -> bool:
    return value is None or value >= low
