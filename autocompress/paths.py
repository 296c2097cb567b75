"""Paths a command is about to create and write, checked before it writes anything.

`check_dir(path, label)`: `path` is a directory, or can be made one (`mkdir -p`), that this process can
write files into. `check_file(path, label)`: `path` is a file, or can be created as one, in such a directory
(SQLite and Optuna's journal also write beside the file: -wal, -shm, lock files). For both, every name in
the path fits the file system (`NAME_MAX` bytes, from the nearest existing directory), the nearest existing
ancestor is a directory (not a file, not a dangling link) and `os.access` grants it write and search (a
read-only mount says so). Each failure is a one-line `UserError` starting with `label` (e.g.
"run_dir 'runs/x'"), naming the path at fault and the fix. Nothing is created here.
"""

from __future__ import annotations

import os

from autocompress.errors import UserError, echo

NAME_MAX = 255  # bytes in one name when the file system does not say (Linux, macOS, Windows)


def check_dir(path: str | os.PathLike, label: str) -> None:
    """`UserError` unless `path` is, or can be created as, a directory this process writes into."""
    full = _checked_names(path, label)
    if os.path.lexists(full) and not os.path.isdir(full):
        what = "a dangling symbolic link" if os.path.islink(full) and not os.path.exists(full) else "a file"
        raise UserError(f"{label} is {what}, not a directory; name a directory (created if missing) or move "
                        "it away")
    _writable_ancestor(full, label)


def check_file(path: str | os.PathLike, label: str) -> None:
    """`UserError` unless `path` is, or can be created as, a file this process writes, in a directory it
    writes into."""
    full = _checked_names(path, label)
    if os.path.isdir(full):
        raise UserError(f"{label} is a directory; name a file in it")
    if os.path.exists(full) and not os.access(full, os.W_OK):
        raise UserError(f"{label} {_unwritable(full)}; make it writable or name another file")
    _writable_ancestor(os.path.dirname(full), label)


def _checked_names(path: str | os.PathLike, label: str) -> str:
    """The absolute form of `path`, after checking that every name in it fits the file system."""
    text = os.fspath(path)
    if "\0" in text:
        raise UserError(f"{label} contains a NUL character; remove it")
    full = os.path.abspath(text)
    limit = _name_max(_nearest_existing(full))
    for part in full.split(os.sep):
        size = len(os.fsencode(part))
        if size > limit:
            raise UserError(f"{label}: the name {echo(part, 40)} is {size} bytes, longer than the file system's "
                            f"limit of {limit}; use a shorter name")
    return full


def _writable_ancestor(directory: str, label: str) -> None:
    """The nearest existing one of `directory` and its ancestors is a directory this process writes into."""
    existing = _nearest_existing(directory)
    if not os.path.isdir(existing):
        what = "a dangling symbolic link" if os.path.islink(existing) else "a file"
        raise UserError(f"{label}: {echo(existing)} is {what}, not a directory; name a path under a directory, or "
                        "move it away")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{label}: {echo(existing)} {_unwritable(existing)}; choose a directory you can write")


def _unwritable(path: str) -> str:
    try:
        read_only = bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):  # no statvfs (Windows)
        read_only = False
    return "is on a read-only file system" if read_only else "is not writable by this user"


def _nearest_existing(path: str) -> str:
    """`path` or its nearest ancestor that exists (as a directory entry: a dangling link counts)."""
    while not os.path.lexists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def _name_max(directory: str) -> int:
    try:
        return os.pathconf(directory, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):  # not a directory, no pathconf (Windows)
        return NAME_MAX
