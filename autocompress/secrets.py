"""Passwords in the URLs of a config (`storage`, `tracking.uri`): masked wherever shown, taken from the
environment, and never written into a run directory.

  mask_url(url)            the URL with its password (user:PASSWORD@, ?password=) shown as ***: what messages,
                           summaries, MLflow tags and printed lines use.
  expand_env(value, key)   `${NAME}` references replaced by the environment's values (a config's storage and
                           tracking.uri are expanded when it is read); an unset NAME is a `UserError` naming it.
  expand_references(data)  a config's YAML mapping with its storage's and tracking.uri's references expanded
                           (`SearchConfig.from_dict` calls it, and keeps what was written);
  run_dir_config(config)   the config as a run directory's config.yaml and MLflow hold it: storage and
                           tracking.uri as written, a literal password replaced by `run_dir_url`.
  run_dir_url(url, key)    the form a run directory's config.yaml keeps: a literal password replaced by the
                           reference `${AUTOCOMPRESS_STORAGE_PASSWORD}` (`${AUTOCOMPRESS_TRACKING_PASSWORD}`
                           for tracking.uri), so that the file holds no secret and a resume, `export` or
                           `report` from it reads the password from that variable.
libpq reads `PGPASSWORD` (and ~/.pgpass) itself for a postgresql URL that has no password: nothing to expand.
"""

from __future__ import annotations

import os
import re
from typing import Any

from autocompress.errors import UserError

REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
PASSWORD_ENV = {"storage": "AUTOCOMPRESS_STORAGE_PASSWORD", "tracking.uri": "AUTOCOMPRESS_TRACKING_PASSWORD"}
_USER = re.compile(r"([A-Za-z][\w+.-]*)://[^:/@?#]*:")
_END = re.compile(r"[/?#]|$")
_QUERY = re.compile(r"([?&](?:password|passwd|pwd)=)([^&#]*)", re.IGNORECASE)


def _password_span(url: str) -> tuple[int, int] | None:
    """Where the password of `url`'s `user:password@` is: for http(s) up to the last @ of the authority (as
    urllib reads it), else from the first @ on to the last @ before the host's / (SQLAlchemy reads up to the
    first @: an unencoded @ in a password is masked whole either way)."""
    m = _USER.match(url)
    if not m:
        return None
    start = m.end()
    first = start if m.group(1).startswith("http") else url.find("@", start)
    if first < 0:
        return None
    at = url.rfind("@", start, _END.search(url, first).start())
    return (start, at) if at >= start else None


def _replace_password(url: str, new: str) -> tuple[str, str | None]:
    """(`url` with its password replaced by `new`, the password or None when it has none)."""
    found, span = None, _password_span(url)
    if span:
        found, url = url[span[0]:span[1]], url[:span[0]] + new + url[span[1]:]
    q = _QUERY.search(url)
    if q:
        found = found or q.group(2)
        url = url[:q.start(2)] + new + url[q.end(2):]
    return url, found


def mask_url(url: str) -> str:
    """`url` with any password shown as ***."""
    return _replace_password(url, "***")[0]


def expand_env(value: str, key: str) -> str:
    """`value` with each `${NAME}` replaced by the environment variable NAME; `UserError` naming `key` and
    NAME when it is not set."""
    def value_of(m: re.Match) -> str:
        if m.group(1) not in os.environ:
            raise UserError(f"{key} names ${{{m.group(1)}}}, which is not set in the environment; set it "
                            f"(export {m.group(1)}=...) or write the value into the config")
        return os.environ[m.group(1)]

    return REFERENCE.sub(value_of, value)


def run_dir_url(url: str, key: str) -> tuple[str, str | None]:
    """(the form of `url` for a run directory, the variable its literal password now comes from or None):
    a password that is already a `${NAME}` reference is kept as written."""
    env = PASSWORD_ENV[key]
    replaced, password = _replace_password(url, "${" + env + "}")
    if password is None or REFERENCE.fullmatch(password):
        return url, None
    return replaced, env


def expand_references(data: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """(`data` with the `${NAME}`s of storage and tracking.uri expanded, {key: value as written} of those)."""
    written: dict[str, str] = {}
    if isinstance(data.get("storage"), str) and REFERENCE.search(data["storage"]):
        written["storage"] = data["storage"]
        data = {**data, "storage": expand_env(data["storage"], "storage")}
    tracking = data.get("tracking")
    if isinstance(tracking, dict) and isinstance(tracking.get("uri"), str) and REFERENCE.search(tracking["uri"]):
        written["tracking.uri"] = tracking["uri"]
        data = {**data, "tracking": {**tracking, "uri": expand_env(tracking["uri"], "tracking.uri")}}
    return data, written


def run_dir_config(config: Any) -> tuple[dict[str, Any], list[str]]:
    """(the `SearchConfig` as a run directory's config.yaml and MLflow hold it, notes for stderr): storage and
    tracking.uri as written (`${NAME}` kept), a literal password replaced by a reference to
    AUTOCOMPRESS_STORAGE_PASSWORD / AUTOCOMPRESS_TRACKING_PASSWORD (`run_dir_url`), one note per such password
    naming the variable to set."""
    data, notes = config.model_dump(mode="json"), []
    for key, section, field in (("storage", data, "storage"), ("tracking.uri", data["tracking"], "uri")):
        if section[field] is not None:
            section[field], env = run_dir_url(config._written.get(key, section[field]), key)
            if env:
                where = os.path.join(config.run_dir or "", "config.yaml")
                notes.append(f"{key}: the password is not written into {where}, which reads ${{{env}}} instead: "
                             f"set {env} to resume from that file, or to export or report from the run "
                             "(docs/scaling-and-failures.md, Storage)")
    return data, notes
