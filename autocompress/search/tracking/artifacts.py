"""Attach files to a finished study in MLflow: its parent run, and optionally one trial's nested run.

`export` and `report` run after the search, in another process. They find the study's parent run by the
tags the search gave it (`autocompress.study_name` and `autocompress.storage`, see tracking/runs.py) and add
artifacts to it without touching its status, params or metrics.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from autocompress.config import SearchConfig
from autocompress.secrets import mask_url
from autocompress.search.tracking.runs import _T, _all_runs


def _client(uri: str) -> Any:
    import logging

    import mlflow

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///"):].split("?")[0])
        if not path.is_file():
            return None  # never create an empty store just to find nothing in it
    return mlflow.MlflowClient(tracking_uri=uri)


def find_runs(config: SearchConfig, trial_number: int | None = None) -> tuple[Any, str | None, str | None]:
    """(client, parent run id, the trial's nested run id) of the study `config` describes; ids are None
    where MLflow has no such run (or tracking is off: then the client is None too)."""
    uri = config.tracking.uri
    if uri == "none":
        return None, None, None
    client = _client(uri)
    if client is None:
        return None, None, None
    exp = client.get_experiment_by_name(config.tracking.experiment)
    if exp is None:
        return client, None, None
    parents = [r for r in _all_runs(client, exp.experiment_id, f"tags.`{_T}study_name` = '{config.study_name}'")
               if "mlflow.parentRunId" not in r.data.tags
               and r.data.tags.get(_T + "storage") == mask_url(config.storage)]
    if not parents:
        return client, None, None
    parent = parents[0].info.run_id
    child = None
    if trial_number is not None:
        mine = f"tags.mlflow.parentRunId = '{parent}' and tags.`{_T}trial_number` = '{trial_number}'"
        kids = _all_runs(client, exp.experiment_id, mine)
        child = kids[0].info.run_id if kids else None
    return client, parent, child


def attach(config: SearchConfig, local_path: str | Path, artifact_path: str | None = None,
           trial_number: int | None = None, tags: dict[str, str] | None = None) -> list[str]:
    """Log the file or directory `local_path` under `artifact_path` to the study's parent run, and to trial
    `trial_number`'s nested run when given, and set `tags` on the same runs. Returns where it went
    ("parent run <id>", "trial run <id>").

    Never raises for tracking trouble: the files are safe on disk, so a failure is a warning."""
    try:
        client, parent, child = find_runs(config, trial_number)
        if client is None or parent is None:
            return []
        where = []
        for label, run_id in (("parent run", parent), ("trial run", child)):
            if run_id is None:
                continue
            if Path(local_path).is_dir():
                client.log_artifacts(run_id, str(local_path), artifact_path)
            else:
                client.log_artifact(run_id, str(local_path), artifact_path)
            for key, value in (tags or {}).items():
                client.set_tag(run_id, key, value)
            where.append(f"{label} {run_id}")
        return where
    except Exception as exc:  # noqa: BLE001  (tracking must not lose a finished export or report)
        warnings.warn(f"could not log {local_path} to MLflow ({type(exc).__name__}: {exc}); "
                      "the files are on disk", stacklevel=2)
        return []
