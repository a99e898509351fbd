"""Small argument checks shared across :mod:`birl` (errors name the argument)."""

from __future__ import annotations

from typing import Any, Iterable, List


def nonempty_list_of(items: Iterable[Any], cls: type, name: str) -> List[Any]:
    """``items`` as a list, which must be non-empty and hold only ``cls`` instances.

    Raises ``ValueError`` (empty) or ``TypeError`` naming ``name[i]`` (wrong type)."""
    items = list(items)
    if not items:
        raise ValueError(f"{name} must not be empty (at least one {cls.__name__})")
    for i, item in enumerate(items):
        if not isinstance(item, cls):
            raise TypeError(f"{name}[{i}] must be a {cls.__module__}.{cls.__qualname__}, got {type(item).__name__}")
    return items
