"""MLflow tracking for a search: one parent run per study, one nested run per finished trial.

The driver process is the only writer. Everything goes through an explicit `mlflow.MlflowClient`
(never the fluent `mlflow.start_run` state), so nothing leaks between studies, threads or tests.

Layout in MLflow (experiment = `tracking.experiment`, tagged mlflow.experimentKind: custom_model_development):
  parent run  name=<study_name>, tags autocompress.study_name / .storage / .run_dir, params = the config
              flattened to "section.key", artifact config.yaml; later the Pareto table and summary metrics.
  child runs  name=trial-0007, tags mlflow.parentRunId, autocompress.trial_number / .state / .worker / .logged_at
              (/ .error, / .nonfinite_metrics), params = the flattened plan, metrics + duration_s,
              artifact plan.json; status FINISHED (COMPLETE, PRUNED) or FAILED (FAIL).
A resumed study (same study name and Optuna storage URL) reuses its parent run and never logs a trial twice.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from autocompress.errors import UserError
from autocompress.search.storage import display_url
from autocompress.search.tracking.contract import NullTracker

STATES = {"COMPLETE": "FINISHED", "PRUNED": "FINISHED", "FAIL": "FAILED"}  # trial state -> run status
RUN_STATUSES = ("FINISHED", "FAILED", "KILLED")
_T = "autocompress."
MAX_KEY, MAX_TAG = 250, 5000  # MLflow's key limit; tag values are cut well below its 8000
# MLflow 3's UI opens an experiment by this tag: without it on the GenAI overview (empty here), with it on the runs
KIND_TAG, KIND = "mlflow.experimentKind", "custom_model_development"  # shown as "Machine learning"


def _key(name: str) -> str:
    """A valid MLflow param/metric key: unsupported characters become '_', at most 250 characters."""
    key = re.sub(r"[^\w.\-:]", "_", str(name))[:MAX_KEY] or "_"
    return "_" + key[:MAX_KEY - 1] if key.startswith(".") or key.endswith(".") or ".." in key else key


def _value(v: Any, limit: int, tail: bool = False) -> str:
    """`v` as an MLflow string of at most `limit` characters (its end kept when `tail`, as for a traceback)."""
    text = v if isinstance(v, str) else json.dumps(v, default=str) if isinstance(v, (list, tuple, dict)) else str(v)
    if len(text) <= limit:
        return text
    return "..." + text[3 - limit:] if tail else text[:limit - 3] + "..."


def flatten_config(config: dict, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}, "c": [1, 2]} -> {"a.b": 1, "c": [1, 2]} (dicts recurse, anything else is a leaf)."""
    out: dict[str, Any] = {}
    for k, v in config.items():
        if isinstance(v, dict) and v:
            out.update(flatten_config(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


@contextmanager
def _env(**values: str) -> Iterator[None]:
    """Set MLflow environment variables for the calls inside (they are read per call); restore after."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


class Tracker(NullTracker):
    """One study's parent run in MLflow. Build it with `Tracker.open(...)`, not the constructor.

    MLflow errors during logging propagate as `mlflow.exceptions.MlflowException` (or a `requests` error);
    the driver decides whether a tracking failure stops the search. Not thread-safe: one writer thread.
    """

    def __init__(self, client: Any, uri: str, experiment_id: str, parent_run_id: str) -> None:
        self.client, self.uri = client, uri
        self.experiment_id, self.parent_run_id = experiment_id, parent_run_id
        self._logged: set[int] = set()
        self._partial: dict[int, str] = {}  # trial number -> run id of a log_trial that failed half-way

    @classmethod
    def open(cls, uri: str, experiment: str, study_name: str, storage_url: str, config: dict,
             run_dir: str) -> "Tracker | NullTracker":
        """The tracker for this study: `NullTracker` for uri "none", else get-or-create the parent run.

        Checks first that the URI can be reached: an http(s) server must answer within ~5 s (else
        `UserError`); a sqlite file gets its parent directory created and its artifacts stored beside it
        (`<db dir>/mlartifacts`) for a new experiment. An existing parent run of the same study and storage
        is reused and set back to RUNNING; its params are not logged again (MLflow params are immutable).
        Processes opening the same study at once end up with one parent run: each one that created a parent
        looks again and keeps the oldest (deleting its own if that is not it); the driver also opens the
        tracker under the study's lock, which serializes them. A password in the storage URL is masked.
        The experiment carries KIND_TAG (set on an existing one that has no kind), so the UI opens it on its runs.
        """
        import mlflow
        import yaml

        if uri.strip().lower() == "none":
            return NullTracker()
        artifact_location = None
        if uri.startswith("sqlite:///"):
            path = Path(uri[len("sqlite:///"):].split("?")[0]).resolve()
            path.parent.mkdir(parents=True, exist_ok=True)
            uri = "sqlite:///" + str(path) + (uri[uri.index("?"):] if "?" in uri else "")
            artifact_location = (path.parent / "mlartifacts").as_uri()
        client = mlflow.MlflowClient(tracking_uri=uri)
        if uri.startswith(("http://", "https://")):
            try:
                with _env(MLFLOW_HTTP_REQUEST_TIMEOUT="5", MLFLOW_HTTP_REQUEST_MAX_RETRIES="0",
                          MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR="0"):
                    client.search_experiments(max_results=1)
            except Exception as exc:  # requests, urllib3 and MlflowException all mean the same here
                errno = re.search(r"\[Errno -?\d+\] [^'\")\]]+", str(exc))  # e.g. [Errno 111] Connection refused
                reason = errno.group(0) if errno else (str(exc).splitlines() or [type(exc).__name__])[0][:200]
                raise UserError(f"MLflow tracking URI {display_url(uri)!r} cannot be reached: {reason}; "
                                f"start the server or set tracking.uri: none") from None
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            try:
                exp_id = client.create_experiment(experiment, artifact_location=artifact_location,
                                                  tags={KIND_TAG: KIND})
            except mlflow.exceptions.MlflowException:  # another process created it first
                exp_id = client.get_experiment_by_name(experiment).experiment_id
        elif exp.lifecycle_stage == "deleted":
            raise UserError(f"MLflow experiment {experiment!r} is deleted; restore it in the MLflow UI "
                            f"or choose another tracking.experiment")
        else:
            exp_id = exp.experiment_id
            if KIND_TAG not in exp.tags:  # made before autocompress tagged it, or by hand: open it on its runs
                try:
                    client.set_experiment_tag(exp_id, KIND_TAG, KIND)
                except mlflow.exceptions.MlflowException:  # e.g. no permission on a shared server: only a UI default
                    pass
        storage_url = display_url(storage_url)  # no password in tags or params
        if isinstance(config.get("storage"), str):
            config = {**config, "storage": display_url(config["storage"])}
        parent = _parent(client, exp_id, study_name, storage_url)
        if parent is None:
            run = client.create_run(exp_id, run_name=study_name, tags={
                _T + "study_name": study_name, _T + "storage": storage_url, _T + "run_dir": str(run_dir),
                "mlflow.note.content": (f"autocompress search `{study_name}`: one nested run per trial. "
                                        f"Optuna storage: {storage_url}; run dir: {run_dir}")})
            # processes of a sweep opening at once may each create one: all keep the oldest, the rest go
            parent = _parent(client, exp_id, study_name, storage_url)
            if parent == run.info.run_id:
                tracker = cls(client, uri, exp_id, parent)
                tracker._batch(params={_key(k): v for k, v in flatten_config(config).items()})
                config_text = yaml.safe_dump(json.loads(json.dumps(config, default=str)), sort_keys=False)
                client.log_text(tracker.parent_run_id, config_text, "config.yaml")
                return tracker
            client.delete_run(run.info.run_id)
        client.update_run(parent, status="RUNNING")
        tracker = cls(client, uri, exp_id, parent)
        tracker._load_children()
        return tracker

    def _load_children(self) -> None:
        """Remember the logged trials; delete half-written children (still RUNNING: the driver died mid-log)."""
        mine = f"tags.mlflow.parentRunId = '{self.parent_run_id}'"
        for run in _all_runs(self.client, self.experiment_id, mine):
            number = run.data.tags.get(_T + "trial_number")
            if run.info.status == "RUNNING" or number is None:
                self.client.delete_run(run.info.run_id)
            else:
                self._logged.add(int(number))

    def logged_trials(self) -> set[int]:
        """Trial numbers that already have a complete nested run under this study's parent."""
        return set(self._logged)

    def log_trial(self, number: int, state: str, params: dict, metrics: dict[str, float], duration_s: float,
                  worker: str, plan_json: str | None, error: str | None = None) -> None:
        """Log one finished trial as a nested run (4 client calls and the plan artifact); a no-op if `number` is
        already logged.

        `state` is COMPLETE, PRUNED or FAIL. `params` is the flattened plan (stringified, truncated to MLflow's
        MAX_PARAM_VAL_LENGTH). Non-finite metrics are left out and listed in tag autocompress.nonfinite_metrics.
        The run's start time is set `duration_s` before now, so the MLflow UI shows the trial's duration.
        Safe to call again after it raised (MLflow down): the half-written run is deleted first. Safe when
        another process logs the same trial at the same time: of the runs of one trial number the earliest
        created (tag autocompress.logged_at) is kept, and a later one deletes itself.
        """
        state = state.upper()
        if state not in STATES:
            raise ValueError(f"trial state {state!r} is not one of {', '.join(STATES)}")
        if number in self._logged:
            return
        if number in self._partial:  # an earlier call failed half-way; its run may be gone already
            try:
                self.client.delete_run(self._partial[number])
            except Exception:  # already deleted (another driver's cleanup), or MLflow still down: create_run says
                pass
            del self._partial[number]
        now = time.time()
        tags = {"mlflow.parentRunId": self.parent_run_id, _T + "trial_number": str(number),
                _T + "state": state, _T + "worker": str(worker), _T + "logged_at": str(time.time_ns())}
        if error:
            tags[_T + "error"] = _value(error, MAX_TAG, tail=True)
        finite = {_key(k): float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}
        bad = [f"{k}={v}" for k, v in metrics.items() if v is None or not math.isfinite(float(v))]
        if bad:
            tags[_T + "nonfinite_metrics"] = _value(", ".join(bad), MAX_TAG)
        finite["duration_s"] = float(duration_s)
        run = self.client.create_run(self.experiment_id, start_time=int((now - max(duration_s, 0.0)) * 1000),
                                     tags=tags, run_name=f"trial-{number:04d}")
        run_id = run.info.run_id
        self._partial[number] = run_id
        self._batch(run_id, params={_key(k): v for k, v in params.items()}, metrics=finite, timestamp=now)
        if plan_json is not None:
            self._write_text(run.info.artifact_uri, plan_json, "plan.json")
        self._terminate(run_id, STATES[state], end_time=int(now * 1000))
        self._keep_one(number, run_id)
        del self._partial[number]
        self._logged.add(number)

    def _write_text(self, artifact_uri: str, text: str, name: str) -> None:
        """`client.log_text(run_id, text, name)` for a run whose `artifact_uri` is known: the same artifact
        repository, without the client's look-up of the whole run (a `get_run`) to find that URI."""
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            path.write_text(text, encoding="utf-8")
            get_artifact_repository(artifact_uri, tracking_uri=self.uri).log_artifact(str(path))

    def _keep_one(self, number: int, run_id: str) -> None:
        """Delete `run_id` if an earlier-created run of the same trial exists (two writers raced)."""
        runs = _all_runs(self.client, self.experiment_id, f"tags.mlflow.parentRunId = '{self.parent_run_id}' "
                                                          f"and tags.`{_T}trial_number` = '{number}'")
        first = min(runs, key=lambda r: (int(r.data.tags.get(_T + "logged_at", "0")), r.info.run_id), default=None)
        if first is not None and first.info.run_id != run_id:
            self.client.delete_run(run_id)

    def log_text(self, text: str, artifact_file: str) -> None:
        """Write `text` as artifact `artifact_file` of the parent run (e.g. the Pareto table)."""
        self.client.log_text(self.parent_run_id, text, artifact_file)

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        """Log metrics on the parent run (best values, counts per state); non-finite values are skipped."""
        self._batch(metrics={_key(k): float(v) for k, v in metrics.items()
                             if v is not None and math.isfinite(float(v))}, step=step)

    def close(self, status: str = "FINISHED") -> None:
        """Set the parent run's terminal status: FINISHED, FAILED or KILLED."""
        if status not in RUN_STATUSES:
            raise ValueError(f"run status {status!r} is not one of {', '.join(RUN_STATUSES)}")
        self._terminate(self.parent_run_id, status)

    def _terminate(self, run_id: str, status: str, end_time: int | None = None) -> None:
        # without the variable, set_terminated on an http store fetches the run and prints its URL to stdout
        with _env(MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT="true"):
            self.client.set_terminated(run_id, status, end_time=end_time)

    def ui_hint(self) -> str:
        """What a user runs or opens to see this study in the MLflow UI."""
        if self.uri.startswith(("http://", "https://")):
            return f"{display_url(self.uri).rstrip('/')}/#/experiments/{self.experiment_id}/runs"
        return f"mlflow ui --backend-store-uri {display_url(self.uri)} --host 127.0.0.1"

    def _batch(self, run_id: str | None = None, params: dict | None = None, metrics: dict | None = None,
               timestamp: float | None = None, step: int = 0) -> None:
        from mlflow.entities import Metric, Param
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH  # 6000 in MLflow 3 (500 in old 2.x)

        ms = int((timestamp or time.time()) * 1000)
        self.client.log_batch(
            run_id or self.parent_run_id,
            metrics=[Metric(k, v, ms, step) for k, v in (metrics or {}).items()],
            params=[Param(k, _value(v, MAX_PARAM_VAL_LENGTH)) for k, v in (params or {}).items()])


open_tracker = Tracker.open  # the same, as a function


def _parent(client: Any, exp_id: str, study_name: str, storage_url: str) -> str | None:
    """The id of the oldest active parent run of this study and storage (ties: the smallest run id), or None."""
    runs = [r for r in _all_runs(client, exp_id, f"tags.`{_T}study_name` LIKE '%'")
            if r.data.tags.get(_T + "study_name") == study_name and "mlflow.parentRunId" not in r.data.tags
            and r.data.tags.get(_T + "storage") == storage_url]
    return min(runs, key=lambda r: (r.info.start_time, r.info.run_id)).info.run_id if runs else None


def _all_runs(client: Any, exp_id: str, filter_string: str) -> list:
    """Every active run of the experiment matching `filter_string`, oldest first, across result pages."""
    runs, token = [], None
    while token != "":
        page = client.search_runs([exp_id], filter_string, max_results=1000,
                                  order_by=["attributes.start_time ASC"], page_token=token)
        runs, token = runs + list(page), page.token or ""
    return runs

