"""What the orchestration costs: driver throughput with a no-op objective, and the overhead share of real trials.

Run:  .venv/bin/python benchmarks/orchestration.py [--noop-trials 50 250] [--real-trials 16] [--skip-real]
      [--repeats 1] [--name orchestration]
      [--settings off-sqlite process-sqlite ...]
Writes benchmarks/results/<name>.json and <name>.md.  (issue 8, "Orchestration overhead")

1. Driver throughput. The real driver (`run_search`: ask, the space samples a plan, plan size, plan JSON
   written, dispatch, tell, MLflow) on the local backend, with the worker's work replaced by a no-op that
   returns a metric derived from the plan (`NoopRunner`, patched in for `TrialRunner`). Model random:bert
   with a per-layer space (36 decision units, so plans rarely repeat), objectives fidelity / size_mb, NSGA-II,
   Optuna on SQLite. Each setting runs twice, with budgets N1 and N2 (the studies hold a few more trials:
   NSGA-II's repeats of a finished plan, which do not count toward the budget but are driver work); the
   marginal cost of one trial is (wall(2) - wall(1)) / (trials(2) - trials(1)), which leaves start-up out.
   Settings, for Optuna on SQLite and on a journal file: MLflow off; MLflow on a SQLite store (a nested run
   per trial) logged by the driver's writer thread (`tracking.writer: thread`, the default) or by a child
   process (`writer: process`, search/tracking/writer_process.py). The wall clock runs until the last trial is in
   MLflow. And the ablation "one commit per write": MLflow off, SQLite, with the driver's writes of a trial
   not gathered into one transaction (search/trial_writes.py switched off, `writes_as`), run right after its
   counterpart so the machine's drift between them stays small.
   The figure that matters for a cluster: a driver that needs c s per trial keeps W workers busy with
   T-second trials while W / T < 1 / c; and for the issue's GPU target (1,000 trials per minute with every
   trial in Optuna and MLflow), c <= 60 ms.
2. Overhead share of real trials: the quickstart (the real MiniLM, examples/quickstart.yaml) for `--real-trials`
   trials on the local backend and on Ray (2 workers), MLflow on SQLite; once more locally with Optuna on
   a journal file, locally with the "one commit per write" ablation (storage "sqlite-per-call"), and locally
   with the MLflow writer process. Work = the worker's apply + evaluate seconds (Optuna user attr `work_s`); the loop window = first trial start to last trial end (start-up, i.e.
   model load and Ray start, reported apart). Overhead share = 1 - sum(work) / (window x workers): everything a
   trial costs beyond its own work, including idle workers waiting for the driver.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import loop_window, quickstart_config, save_results  # noqa: E402


class NoopRunner:
    """Stands in for `TrialRunner(config)`: the model's inventory only, and a metric from the plan's text."""

    def __init__(self, config) -> None:
        from autocompress.loading import load_model

        self.info = load_model(config.model.name).info

    def run(self, plan_json: str, number=None, attempt: int = 0, pruning=None):
        from autocompress.search.workers.runner import TrialOutcome, worker_name

        return TrialOutcome(metrics={"fidelity": 0.9 + 0.1 * random.Random(plan_json).random()},
                            worker=worker_name())


def storage_url(run_dir: Path, storage: str) -> str | None:
    """None (the default: SQLite in the run directory) or Optuna's journal file there."""
    return f"journal:///{run_dir}/optuna.log" if storage == "journal" else None


STORAGE_LABELS = {"sqlite": "Optuna on SQLite", "journal": "Optuna journal file",
                  "sqlite-per-call": "Optuna on SQLite, one commit per write"}


@contextmanager
def writes_as(storage: str) -> Iterator[None]:
    """For "sqlite-per-call" (the ablation): the driver's `one_transaction` blocks replay their writes one
    storage call each, as Optuna writes without them (before search/trial_writes.py); else nothing changes."""
    from autocompress.search import trial_writes

    original = trial_writes._one_transaction_possible
    if storage == "sqlite-per-call":
        trial_writes._one_transaction_possible = lambda _storage: False
    try:
        yield
    finally:
        trial_writes._one_transaction_possible = original


def noop_search(root: Path, trials: int, tracking: str, tag: str, storage: str = "sqlite",
                writer: str = "thread") -> tuple[float, int]:
    """(wall seconds, trials in the study): budget `trials`, plus the repeats NSGA-II proposed (driver work
    too: ask, sample, tell, log; they do not count toward the budget)."""
    from autocompress.config import SearchConfig
    from autocompress.search.workers import backends
    from autocompress.search.driver import run_search

    run_dir = root / f"noop-{tag}-{trials}"
    uri = "none" if tracking == "none" else f"sqlite:///{run_dir}-mlflow.db"
    config = SearchConfig.from_dict({
        "model": {"name": "random:bert"}, "space": {"share": "layer", "quantize": {"bits": [2, 3, 4, 8, None]}},
        "objectives": ["maximize fidelity", "minimize size_mb"], "budget": {"n_trials": trials},
        "sampler": {"name": "nsga2", "seed": 0}, "tracking": {"uri": uri, "experiment": "noop", "writer": writer},
        "run_dir": str(run_dir), "study_name": f"noop-{tag}-{trials}",
        **({"storage": storage_url(run_dir, storage)} if storage == "journal" else {})}).resolved(root)
    original, backends.TrialRunner = backends.TrialRunner, NoopRunner
    try:
        with writes_as(storage):
            start = time.perf_counter()
            result = run_search(config, show_progress=False)
            wall = time.perf_counter() - start
    finally:
        backends.TrialRunner = original
    total = sum(result.counts.values())
    assert total == trials + min(result.repeats, trials), (result.counts, result.repeats)  # counted_trials
    return wall, total


THROUGHPUT_SETTINGS = (("none", "sqlite", "-"), ("none", "sqlite-per-call", "-"), ("sqlite", "sqlite", "thread"),
                       ("sqlite", "sqlite", "process"), ("none", "journal", "-"), ("sqlite", "journal", "thread"),
                       ("sqlite", "journal", "process"))  # (MLflow store, Optuna storage, MLflow writer)


def setting_label(setting: tuple) -> str:
    """("sqlite", "journal", "process") -> "process-journal"; MLflow off -> "off-<storage>"."""
    tracking, storage, writer = setting
    return f"{'off' if tracking == 'none' else writer}-{storage}"


def throughput(root: Path, sizes: list[int], repeats: int = 1, only: list[str] | None = None) -> list[dict]:
    """One row per setting (those labelled `only`, default all): the marginal ms per trial, the median over
    `repeats` runs, the settings taking turns run by run (so the machine's drift falls on all of them alike)."""
    def walls(setting: tuple, tag: str, budgets: list[int] = sizes) -> dict[int, tuple[float, int]]:
        tracking, storage, writer = setting
        return {n: noop_search(root, n, tracking, tag, storage, "thread" if writer == "-" else writer)
                for n in budgets}

    settings = [s for s in THROUGHPUT_SETTINGS if not only or setting_label(s) in only]
    for setting in settings:  # imports, the first MLflow schema: not per trial
        walls(setting, "warmup-" + "-".join(setting), [3])
    runs: dict[tuple, list[dict]] = {setting: [] for setting in settings}
    for rep in range(repeats):
        for setting in settings:
            runs[setting].append(walls(setting, "-".join(setting) + f"-r{rep}"))
            print(json.dumps({"setting": setting, "run": rep, "walls": runs[setting][-1]}), flush=True)
    rows = []
    for (tracking, storage, writer), measured in runs.items():
        lo, hi = min(sizes), max(sizes)
        per_run = sorted((r[hi][0] - r[lo][0]) / (r[hi][1] - r[lo][1]) for r in measured)
        per_trial = per_run[len(per_run) // 2]  # the median (the upper one of an even count)
        first = measured[0]
        rows.append({"tracking": "MLflow off" if tracking == "none" else f"MLflow on SQLite ({writer} writer)",
                     "storage": STORAGE_LABELS[storage],
                     "walls_s": {str(n): round(w, 2) for n, (w, _) in first.items()},
                     "trials": {str(n): total for n, (_, total) in first.items()},
                     "per_trial_ms": round(per_trial * 1000, 1),
                     "per_trial_ms_runs": [round(x * 1000, 1) for x in per_run],
                     "trials_per_s": round(1 / per_trial, 1), "trials_per_min": int(60 / per_trial),
                     "workers_kept_busy_at_10s_trials": int(10 / per_trial)})
    return rows


def real_overhead(root: Path, trials: int) -> list[dict]:
    from autocompress.search.driver import run_search

    rows = []
    for backend, workers, storage, writer in (("local", 1, "sqlite", "thread"),
                                              ("local", 1, "sqlite-per-call", "thread"),
                                              ("ray", 2, "sqlite", "thread"), ("local", 1, "journal", "thread"),
                                              ("local", 1, "sqlite", "process")):
        spec = {"name": "ray", "workers": workers, "cpus_per_trial": 1} if backend == "ray" else {"name": "local"}
        name = f"qs-{backend}-{storage}-{writer}"
        config = quickstart_config(root, name, trials, spec, f"sqlite:///{root}/mlflow-{name}.db", "overhead")
        config = config.model_copy(update={"tracking": config.tracking.model_copy(update={"writer": writer})})
        run_dir = Path(config.run_dir)
        if storage == "journal":
            config = config.model_copy(update={"storage": storage_url(run_dir, storage)})
        with writes_as(storage):
            start = time.time()
            result = run_search(config, show_progress=False)
            end = time.time()
        loop = loop_window(run_dir)
        worked, first, window, work = loop.evaluated, loop.first_start, loop.window_s, loop.work_s
        row = {"backend": backend, "workers": workers, "storage": storage, "writer": writer, "trials": len(loop.done),
               "evaluated": len(worked), "counts": result.counts, "startup_s": round(first - start, 1),
               "window_s": round(window, 1),
               "total_s": round(end - start, 1), "work_s": round(work, 1),
               "mean_work_s": round(work / max(len(worked), 1), 2),
               "overhead_share": round(1 - work / (window * workers), 4),
               "overhead_per_trial_s": round((window * workers - work) / max(len(worked), 1), 3)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def _with(row: dict, budget: str) -> str:
    """" (n trials)" when the study holds more trials than the budget (NSGA-II's repeats)."""
    total = row.get("trials", {}).get(budget)
    return f" ({total} trials)" if total and str(total) != budget else ""


def markdown(result: dict) -> str:
    env = result["env"]
    lines = ["# Orchestration overhead (benchmarks/orchestration.py)", "",
             f"{env['cpus']} CPU cores ({env['machine']}), load average before {env['load_before']}; "
             f"optuna {env['optuna']}, ray {env['ray']}, mlflow {env['mlflow']}, torch {env['torch']}."
             + (f" Run with `{' '.join(result['args'])}`." if result.get("args") else ""), "",
             "## Driver throughput, no-op objective (random:bert, 36 per-layer units, NSGA-II)",
             "", "| tracking | Optuna storage | wall s by budget (first run) | marginal ms / trial (median; range) "
             "| trials / s | trials / min | workers kept busy at 10 s trials |", "|---|---|---|---|---|---|---|"]
    for r in result["throughput"]:
        walls = ", ".join(f"{n}{_with(r, n)}: {w}" for n, w in r["walls_s"].items())
        runs = r.get("per_trial_ms_runs", [])
        spread = f" ({runs[0]}-{runs[-1]}, {len(runs)} runs)" if len(runs) > 1 else ""
        lines.append(f"| {r['tracking']} | {r.get('storage', 'Optuna on SQLite')} | {walls} | "
                     f"{r['per_trial_ms']}{spread} | {r['trials_per_s']} | "
                     f"{r.get('trials_per_min', '')} | {r['workers_kept_busy_at_10s_trials']} |")
    if result.get("real"):
        lines += ["", "## Overhead share of real trials (quickstart: the real MiniLM, MLflow on SQLite)", "",
                  "| backend | workers | Optuna storage | MLflow writer | trials (evaluated) | start-up s | "
                  "loop window s | work s (mean) | overhead share | overhead s / evaluated trial |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in result["real"]:
            lines.append(f"| {r['backend']} | {r['workers']} | {r.get('storage', 'sqlite')} | "
                         f"{r.get('writer', 'thread')} | {r['trials']} ({r['evaluated']}) | {r['startup_s']} "
                         f"| {r['window_s']} | {r['work_s']} ({r['mean_work_s']}) | {r['overhead_share']:.1%} | "
                         f"{r['overhead_per_trial_s']} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--noop-trials", type=int, nargs=2, default=[50, 250])
    ap.add_argument("--real-trials", type=int, default=16)
    ap.add_argument("--skip-real", action="store_true")
    ap.add_argument("--repeats", type=int, default=1, help="runs of each throughput setting (median reported)")
    ap.add_argument("--settings", nargs="*", choices=[setting_label(s) for s in THROUGHPUT_SETTINGS],
                    help="the throughput settings to run (default: all)")
    ap.add_argument("--name", default="orchestration", help="results file name in benchmarks/results/")
    args = ap.parse_args()
    import logging

    import mlflow
    import optuna
    import ray
    import torch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    root = Path(tempfile.mkdtemp(prefix="orchestration-"))
    env = {"cpus": os.cpu_count(), "machine": platform.machine(), "load_before": [round(x, 2) for x in os.getloadavg()],
           "optuna": optuna.__version__, "ray": ray.__version__, "mlflow": mlflow.__version__,
           "torch": torch.__version__, "python": platform.python_version()}
    result = {"env": env, "args": sys.argv[1:], "throughput": throughput(root, sorted(args.noop_trials), args.repeats,
                                                        args.settings)}
    if not args.skip_real:
        result["real"] = real_overhead(root, args.real_trials)
    env["load_after"] = [round(x, 2) for x in os.getloadavg()]
    save_results(args.name, result, markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
