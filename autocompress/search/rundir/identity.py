"""What a search searched, in a few fingerprints, so that nothing resumes, exports or reports a run against
another model, task, data or space.

`run_identity(config, task=None) -> dict[str, str | None]`, one entry per part (hashes are 16 hex digits of
a sha256):
  model     the model's name as the config gives it: shown in messages, never compared alone (a model
            directory moved, or named by another alias, is the same model when its weights are)
  task      the task it is searched for (`task`, else model.task, else read from the model's config)
  weights   what the name loads: for `random:KIND` the name and its random config (the weights are seeded);
            for a directory, config.json's bytes and every top-level weight file (*.safetensors, *.bin,
            *.pt, *.pth, *.gguf) by name; for a GGUF file, the file; for a hub name, the name. A weight
            file counts by its size, its safetensors header (whole) and its bytes at WINDOWS evenly spaced
            windows of WINDOW bytes (the whole file when smaller): about 1 MiB read per file, so a 14 GB
            model costs what a 90 MB one does. Every retrained or fine-tuned weight file differs there; a
            change confined to the bytes between windows is not seen
  data      the data section (counts, seeds, lengths), each file source written as "file"
  data.calibration.source, data.evaluation.source, data.labels: the bytes of the file each names (None
            for a named source such as builtin: `data` holds the name)
  space     the space section and `target.format` (which narrows the space)
Sections are hashed as their non-default values, so a setting a later version adds, at its default, does
not change a fingerprint. A part that cannot be computed here (the model or a data file is not on this
machine) is None, and a None part is not compared.

`check(stored, current, where)` raises `UserError` naming the first part that differs (model and weights
first), e.g. "the run searched random:bert (task embedding); config.yaml now names all-MiniLM-L6-v2:
restore config.yaml or start a new run_dir". A part missing from either side is not compared, so the
identity of a study made before this module (none), or by a later version (more parts), is accepted.
The driver stores the identity in the study's user attribute ATTR when it creates the study (it travels
with the storage) and checks it before resuming; `RunDir.open` checks it for export and report.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from typing import Any, Mapping

from autocompress.errors import UserError

ATTR = "autocompress:identity"  # the study user attribute holding `run_identity` of the search that made it
VERSION = 1
WINDOWS = 16
WINDOW = 64 * 1024
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
PARTS = ("weights", "task", "data", "data.calibration.source", "data.evaluation.source", "data.labels", "space")


def _digest(data: Any) -> str:
    text = data if isinstance(data, bytes) else json.dumps(data, sort_keys=True, default=str).encode()
    return hashlib.sha256(text).hexdigest()[:16]


def file_fingerprint(path: str) -> str:
    """sha256 (16 hex digits) of a weight file's size, its safetensors header and WINDOWS windows of its
    bytes (the module docstring)."""
    h = hashlib.sha256()
    size = os.path.getsize(path)
    h.update(str(size).encode())
    with open(path, "rb") as f:
        if path.endswith(".safetensors") and size >= 8:
            (length,) = struct.unpack("<Q", f.read(8))
            h.update(f.read(min(length, size - 8)))
        if size <= WINDOWS * WINDOW:
            f.seek(0)
            h.update(f.read())
        else:
            for i in range(WINDOWS):
                f.seek(i * (size - WINDOW) // (WINDOWS - 1))
                h.update(f.read(WINDOW))
    return h.hexdigest()[:16]


def weights_fingerprint(spec: str) -> str:
    """The `weights` part of the model `spec` names (the module docstring). `UserError` (from loading.py)
    when `spec` names nothing that exists; OSError when a file cannot be read."""
    from autocompress.loading import model_path, random_config

    if spec.startswith("random:"):
        return _digest({"random": spec, "config": random_config(spec)})
    path = model_path(spec)
    if os.path.isfile(path):
        return _digest({"file": file_fingerprint(path)})
    if not os.path.isdir(path):
        return _digest({"hub": spec})
    files = sorted(f for f in os.listdir(path) if f.endswith(WEIGHT_SUFFIXES) or f == "config.json")
    return _digest({f: file_fingerprint(os.path.join(path, f)) for f in files})


def _source(source: str | None) -> str | None:
    """The fingerprint of a data file's bytes; None for a named source, no source, or a file not here."""
    from autocompress.data import TEXT_SOURCES

    if source is None or source in TEXT_SOURCES or not os.path.isfile(source):
        return None
    with open(source, "rb") as f:
        return _digest(f.read())


def _data(config: Any) -> str:
    from autocompress.data import TEXT_SOURCES

    d = config.data.model_dump(mode="json", exclude_defaults=True)
    for key in ("calibration", "evaluation"):
        if d.get(key, {}).get("source") not in (None, *TEXT_SOURCES):
            d[key]["source"] = "file"
    if d.get("labels") is not None:
        d["labels"] = "file"
    return _digest(d)


def run_identity(config: Any, task: str | None = None) -> dict[str, Any]:
    """The identity of what `config` (a `SearchConfig`) searches: the module docstring's parts."""
    from autocompress.loading import resolve_config

    m = config.model
    weights = None
    try:  # a part the model is not on this machine for is not compared; the hub is never asked
        task = task or resolve_config(m.name, m.task, m.trust_remote_code, local_files_only=True)[1]
    except (UserError, OSError, ValueError):
        pass
    try:
        weights = weights_fingerprint(m.name)
    except (UserError, OSError):
        pass
    d = config.data
    space = {"space": config.space.model_dump(mode="json", exclude_defaults=True), "format": config.target_format}
    return {"version": VERSION, "model": m.name, "task": task, "weights": weights, "data": _data(config),
            "data.calibration.source": _source(d.calibration.source),
            "data.evaluation.source": _source(d.evaluation.source), "data.labels": _source(d.labels),
            "space": _digest(space)}


def difference(stored: Mapping[str, Any] | None, current: Mapping[str, Any], where: str = "config.yaml") -> str | None:
    """The first part (PARTS order) in which `current` differs from `stored`, as the one-line message `check`
    raises; None when none differs. `where`: what holds the current config, as messages name it."""
    if not stored:
        return None
    changed = next((p for p in PARTS if stored.get(p) is not None and current.get(p) is not None
                    and stored[p] != current[p]), None)
    fix = f"restore {where} or start a new run_dir"
    name, task = stored.get("model"), stored.get("task")
    if changed is None:
        return None
    if changed == "weights" and current.get("model") != name:
        return f"the run searched {name} (task {task}); {where} now names {current.get('model')}: {fix}"
    if changed == "weights":
        return (f"the run searched {name}, whose weight files have changed since (fingerprint {stored[changed]}, "
                f"now {current[changed]}): restore them, or start a new run_dir for the new weights")
    if changed == "task":
        return f"the run searched {name} for task {task}; {where} now asks for task {current['task']}: {fix}"
    if changed == "space":
        return f"the run searched another space: {where}'s space section (or target.format) has changed since: {fix}"
    if changed == "data":
        return f"the run measured its trials on other data: {where}'s data section has changed since: {fix}"
    return (f"the run measured its trials on other data: the file {changed} names has changed since "
            f"(fingerprint {stored[changed]}, now {current[changed]}): restore the file or start a new run_dir")


def check(stored: Mapping[str, Any] | None, current: Mapping[str, Any], where: str = "config.yaml") -> None:
    """`UserError` with `difference`'s message when `current` is not what the run searched."""
    message = difference(stored, current, where)
    if message is not None:
        raise UserError(message)
