"""The one exception type that reaches the user as a one-line message and exit code 2."""

from __future__ import annotations


class UserError(ValueError):
    """Bad input from the user: a plan, a config, a path, a name.

    The message is one line that names the offending field or file and says how to fix it.
    The CLI prints it without a traceback and exits with code 2.
    """
