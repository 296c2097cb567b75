"""A name -> implementation registry that refuses duplicates and lists the known names on a miss."""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from autocompress.errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to implementations (classes or callables) of one kind, e.g. "quantizer".

    Contract: `register` refuses a name already taken; `get` of an unknown name raises `UserError`
    listing every known name, so a typo in a plan or config is reported with its fix.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(item: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = item
            return item

        return add

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items)) or "(none)"
            raise UserError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
