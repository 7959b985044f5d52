"""Read-only JSON containers for the values memsdk shares with its cache.

A Context served from L1 holds the very objects L1 keeps, so that a hit costs a lookup and
a slice. A caller that mutated `turn.attributes` or `meta.page_context` would change what
later reads serve and what the next write persists, past every validation and size check.
These containers are still a `dict` and a `list` (isinstance, equality, JSON encoding and
iteration work as usual) but refuse every mutation; copying one (`dict(x)`, `list(x)`,
`copy.copy`, `copy.deepcopy`, pickling) gives plain, mutable containers.
"""

from __future__ import annotations

import copy
from typing import Any, NoReturn

__all__ = ["ReadOnlyDict", "ReadOnlyList", "freeze"]

_WHY = (
    "this value is shared with memsdk's cache and is read-only: copy it first "
    "(dict(value), list(value) or copy.deepcopy(value))"
)


def _refuse(*args: Any, **kwargs: Any) -> NoReturn:
    raise TypeError(_WHY)


class ReadOnlyDict(dict[str, Any]):
    """A dict that refuses mutation; its copies are plain dicts."""

    __slots__ = ()
    __setitem__ = __delitem__ = __ior__ = _refuse
    clear = pop = popitem = setdefault = update = _refuse

    def copy(self) -> dict[str, Any]:
        """A plain, mutable shallow copy."""
        return dict(self)

    def __copy__(self) -> dict[str, Any]:
        return dict(self)

    def __deepcopy__(self, memo: dict[int, Any]) -> dict[str, Any]:
        return {key: copy.deepcopy(value, memo) for key, value in self.items()}

    def __reduce__(self) -> tuple[Any, ...]:
        return (dict, (dict(self),))


class ReadOnlyList(list[Any]):
    """A list that refuses mutation; its copies are plain lists."""

    __slots__ = ()
    __setitem__ = __delitem__ = __iadd__ = __imul__ = _refuse
    append = clear = extend = insert = pop = remove = reverse = sort = _refuse

    def copy(self) -> list[Any]:
        """A plain, mutable shallow copy."""
        return list(self)

    def __copy__(self) -> list[Any]:
        return list(self)

    def __deepcopy__(self, memo: dict[int, Any]) -> list[Any]:
        return [copy.deepcopy(value, memo) for value in self]

    def __reduce__(self) -> tuple[Any, ...]:
        return (list, (list(self),))


def freeze(value: Any) -> Any:
    """`value` (JSON-like) with every dict and list replaced by a read-only one."""
    if isinstance(value, ReadOnlyDict | ReadOnlyList):
        return value  # built by freeze: read-only all the way down
    if isinstance(value, dict):
        return ReadOnlyDict({key: freeze(item) for key, item in value.items()})
    if isinstance(value, list):
        return ReadOnlyList(freeze(item) for item in value)
    return value
