"""What one nested MLflow run costs the process that logs it: `Tracker.log_trial` on a local SQLite store.

Run:  .venv/bin/python benchmarks/tracking_cost.py [--trials 600] [--repeats 3]
Writes benchmarks/results/tracking_cost.json and tracking_cost.md.  (issue 8, "GPU: trials per minute")

The MLflow writer (thread or process, search/tracking/recorder.py and search/tracking/writer_process.py) can log no faster
than this; with `tracking.writer: process` it is the pace a search of very short trials runs at whenever it
is slower than the driver's Optuna work. Each repeat opens a fresh store and parent run, then logs `--trials`
trials the way the driver does (a 36-unit plan flattened to params, three metrics, the plan as a JSON
artifact); the time per trial is reported by window of the study's size (the one-run-per-trial check reads
the parent's runs, so it may grow with them). One process, nothing else running.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import save_results  # noqa: E402

WINDOW = 200  # trials per reported window


def one_repeat(trials: int) -> list[float]:
    """ms per trial in each window of WINDOW trials, for one fresh store."""
    from autocompress.search.tracking.runs import open_tracker

    root = tempfile.mkdtemp(prefix="tracking-cost-")
    tracker = open_tracker(f"sqlite:///{root}/mlflow.db", "cost", "study", f"sqlite:///{root}/optuna.db",
                           {"model": {"name": "random:bert"}}, root)
    params = {f"encoder.layer.{i // 6}.unit{i % 6}.bits": 4 for i in range(36)}
    plan = json.dumps({"layers": {k.rsplit(".", 1)[0]: {"bits": v} for k, v in params.items()}})
    windows, start = [], time.perf_counter()
    for n in range(trials):
        tracker.log_trial(n, "COMPLETE", params, {"fidelity": 0.99, "size_mb": 12.5, "work_s": 0.04}, 0.05,
                          "worker-0", plan)
        if (n + 1) % WINDOW == 0:
            now = time.perf_counter()
            windows.append(round((now - start) / WINDOW * 1000, 2))
            start = now
    tracker.close()
    return windows


def markdown(result: dict) -> str:
    env, runs = result["env"], result["runs"]
    lines = ["# What one nested MLflow run costs (benchmarks/tracking_cost.py)", "",
             f"{env['cpus']} CPU cores ({env['machine']}), load average before {env['load_before']}; "
             f"mlflow {env['mlflow']}, python {env['python']}. `Tracker.log_trial` on a local SQLite store, "
             f"{result['trials']} trials per repeat.", "",
             "| trials already logged | " + " | ".join(f"repeat {i + 1} ms / trial" for i in range(len(runs)))
             + " | median |", "|---" * (len(runs) + 2) + "|"]
    for w in range(len(runs[0])):
        values = sorted(r[w] for r in runs)
        lines.append(f"| {w * WINDOW}-{(w + 1) * WINDOW} | " + " | ".join(str(r[w]) for r in runs)
                     + f" | {values[len(values) // 2]} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=600)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    import logging

    import mlflow

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    env = {"cpus": os.cpu_count(), "machine": platform.machine(), "mlflow": mlflow.__version__,
           "python": platform.python_version(), "load_before": [round(x, 2) for x in os.getloadavg()]}
    runs = []
    for i in range(args.repeats):
        runs.append(one_repeat(args.trials))
        print(json.dumps({"repeat": i, "ms_per_trial_by_window": runs[-1]}), flush=True)
    result = {"env": env, "trials": args.trials, "window": WINDOW, "runs": runs}
    save_results("tracking_cost", result, markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
