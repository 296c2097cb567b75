"""Reading a user's YAML file: safe loading only (plain data; a tag that would build a Python object is refused),
and a mapping that names one key twice is refused instead of keeping the last value silently.

`safe_load(stream)` is `yaml.safe_load` with that check: it raises `DuplicateKeyError` (a `yaml.YAMLError`)
naming the key and both lines. `read_yaml(path, what)` reads a file with it and turns every way the file can
be wrong (missing, a directory, unreadable, not UTF-8, not YAML, a duplicate key) into a one-line `UserError`
naming the file. Merge keys (`<<: *anchor`) still override what they merge, as YAML defines.
"""

from __future__ import annotations

import os
from typing import Any

import yaml

from autocompress.errors import UserError, echo


class DuplicateKeyError(yaml.YAMLError):
    """A mapping names the same key twice; the message names the key and both lines."""


class UniqueKeyLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that refuses a mapping with a repeated key (`DuplicateKeyError`)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base`: merged keys may be overridden
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError:  # a list or mapping as a key: SafeLoader refuses it with its own message
                continue
            line = key_node.start_mark.line + 1
            if key in first_line:
                where = f"both on line {line}" if first_line[key] == line else f"lines {first_line[key]} and {line}"
                raise DuplicateKeyError(f"duplicate key {echo(key)} ({where}); keep one of them")
            first_line[key] = line
        return super().construct_mapping(node, deep=deep)


def safe_load(stream: Any) -> Any:
    """`yaml.safe_load(stream)`, refusing a repeated key in any mapping (`DuplicateKeyError`)."""
    loader = UniqueKeyLoader(stream)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def read_yaml(path: str | os.PathLike, what: str = "config") -> Any:
    """The data of the YAML file `path` (None for an empty file); `UserError` naming `what` and the file when it
    cannot be read as YAML."""
    shown = echo(str(path))
    try:
        with open(path, encoding="utf-8") as fh:
            return safe_load(fh)
    except FileNotFoundError:
        raise UserError(f"{what} {shown} does not exist") from None
    except IsADirectoryError:
        raise UserError(f"{what} {shown} is a directory; give the path of a YAML file in it") from None
    except UnicodeDecodeError:
        raise UserError(f"{what} {shown} is not UTF-8 text") from None
    except OSError as exc:  # permission denied, an I/O error
        raise UserError(f"{what} {shown} cannot be read: {exc.strerror or exc}") from None
    except DuplicateKeyError as exc:
        raise UserError(f"{what} {shown}: {exc}") from None
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0]
        raise UserError(f"{what} {shown} is not valid YAML (safe_load refuses it: {first})") from None
