"""The one exception type that reaches the user as a one-line message and exit code 2."""

from __future__ import annotations

from typing import Any, Iterable, Mapping

ECHO_CHARS = 200  # the most of a user's value an error message repeats


def echo(value: Any, limit: int = ECHO_CHARS) -> str:
    """`repr(value)` for an error message, cut to about `limit` characters: a longer one ends in "..." and
    says how long the value is, so a 10 MB value gives a short line, not a 10 MB one."""
    text = repr(value)
    if len(text) <= limit:
        return text
    size = f" ({len(value)} {'characters' if isinstance(value, str) else 'items'})" if hasattr(value, "__len__") else ""
    return f"{text[:limit]}...{size}"


class UserError(ValueError):
    """Bad input from the user: a plan, a config, a path, a name.

    The message is one line that names the offending field or file and says how to fix it.
    The CLI prints it without a traceback and exits with code 2.
    """


def from_fields(cls: Any, data: Mapping[str, Any], valid: Iterable[str], where: str, name: str | None = None) -> Any:
    """`cls(**data)` for a settings object read from JSON: an unknown field, or a `UserError` the constructor
    raises, becomes a `UserError` prefixed with `where` (e.g. "layer 'fc1'") naming the valid fields. `name`
    (e.g. "kv_cache") names the entry in the unknown-field message: "kv_cache has no field 'x'"."""
    valid = list(valid)
    unknown = sorted(set(data) - set(valid))
    if unknown:
        what = "unknown field" if name is None else f"{name} has no field"
        raise UserError(f"{where}: {what} {unknown[0]!r}; valid fields: {', '.join(valid)}")
    try:
        return cls(**dict(data))
    except UserError as exc:
        raise UserError(f"{where}: {exc}") from None
