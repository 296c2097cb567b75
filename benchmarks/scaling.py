"""Scaling on this machine: 1 vs 2 Ray workers, and a worker's state (model, memo) kept vs rebuilt per trial.

Run:  .venv/bin/python benchmarks/scaling.py [--trials 16] [--reloads 3]
Writes benchmarks/results/scaling.json and scaling.md.  (issue 8, "Orchestration overhead and scaling")

1. Workers. The quickstart (examples/quickstart.yaml: the real MiniLM, GPTQ per layer group, MLflow on
   SQLite) with `--trials` trials on the Ray backend with 1 and then 2 workers, one CPU (one torch thread)
   each. Throughput = evaluated trials / loop window (first trial start to last trial end; Ray start and the
   model loads are reported apart as start-up). Speed-up = throughput(2) / throughput(1); efficiency =
   speed-up / 2. The two runs share the seed, so they start from the same baselines, but what NSGA-II asks
   next depends on the order results arrive; mean work seconds per trial are printed to show the trials
   cost alike.
2. Load once vs reload. What a worker pays before its first trial (`TrialRunner(config)`: load the model,
   tokenize the calibration and evaluation texts, the reference outputs) against one trial
   (`TrialRunner.run` on the quickstart's uniform baselines), on one torch thread, medians of `--reloads`.
   A trial is timed twice: cold (an empty memo of base-model work: calibration Gram matrices, GPTQ layers;
   policies/memo.py) and warm (the worker's memo after it has run the same choices once). A worker that
   reloaded per trial would pay the load and the cold trial every time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import loop_window, quickstart_config, save_results  # noqa: E402


def quickstart(root: Path, name: str, trials: int, backend: dict):
    return quickstart_config(root, name, trials, backend, f"sqlite:///{root}/mlflow.db", "scaling")


def workers(root: Path, trials: int) -> list[dict]:
    from autocompress.search.driver import run_search

    rows = []
    for n in (1, 2):
        config = quickstart(root, f"workers-{n}", trials, {"name": "ray", "workers": n, "cpus_per_trial": 1})
        start = time.time()
        run_search(config, show_progress=False)
        loop = loop_window(config.run_dir)
        worked, first, window = loop.evaluated, loop.first_start, loop.window_s
        rows.append({"workers": n, "trials": len(loop.done), "evaluated": len(worked),
                     "startup_s": round(first - start, 1),
                     "window_s": round(window, 1), "trials_per_min": round(60 * len(worked) / window, 2),
                     "mean_work_s": round(statistics.fmean(t.user_attrs["work_s"] for t in worked), 2)})
        print(json.dumps(rows[-1]), flush=True)
    one, two = rows
    speedup = two["trials_per_min"] / one["trials_per_min"]
    two.update({"speedup": round(speedup, 2), "efficiency": round(speedup / 2, 2)})
    return rows


def load_vs_trial(root: Path, reloads: int) -> dict:
    import optuna
    import torch

    from autocompress.policies.memo import BaseModelMemo
    from autocompress.search.workers.runner import TrialRunner
    from autocompress.spaces import ConfigSpace

    torch.set_num_threads(1)
    config = quickstart(root, "reload", 1, {"name": "local"})
    loads, runner = [], None
    for _ in range(reloads):
        start = time.perf_counter()
        runner = TrialRunner(config)
        loads.append(time.perf_counter() - start)
    space = ConfigSpace(config.space, runner.info)
    cold, warm, worker_memo = [], [], runner.calibration.memo
    for params in space.uniform_params().values():
        plan = space.sample(optuna.trial.FixedTrial(params)).to_json(indent=None)
        runner.calibration.memo = worker_memo
        runner.run(plan)  # the worker has met these choices once: its memo holds them
        for _ in range(reloads):
            for memo, times in ((BaseModelMemo(runner.loaded.model), cold), (worker_memo, warm)):
                runner.calibration.memo = memo
                start = time.perf_counter()
                outcome = runner.run(plan)
                assert outcome.error is None, outcome.error
                times.append(time.perf_counter() - start)
    load, trial, kept = statistics.median(loads), statistics.median(cold), statistics.median(warm)
    out = {"load_s": round(load, 2), "loads_s": [round(x, 2) for x in loads], "trial_s": round(trial, 2),
           "trial_warm_s": round(kept, 2), "trials_timed": len(cold), "reload_per_trial_s": round(load + trial, 2),
           "reload_cost_x": round((load + trial) / kept, 2)}
    print(json.dumps(out), flush=True)
    return out


def markdown(result: dict) -> str:
    env, rows, lv = result["env"], result["workers"], result["load_vs_trial"]
    lines = ["# Scaling on one machine (benchmarks/scaling.py)", "",
             f"{env['cpus']} CPU cores ({env['machine']}); ray {env['ray']}, torch {env['torch']}; the quickstart "
             "(real MiniLM, GPTQ per layer group), one torch thread per worker, MLflow on SQLite.", "",
             "| Ray workers | trials (evaluated) | start-up s | loop window s | evaluated trials / min | "
             "mean work s / trial | speed-up | efficiency |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['workers']} | {r['trials']} ({r['evaluated']}) | {r['startup_s']} | {r['window_s']} | "
                     f"{r['trials_per_min']} | {r['mean_work_s']} | {r.get('speedup', 1.0)} | "
                     f"{r.get('efficiency', 1.0)} |")
    lines += ["", "## Model and memo kept by the worker vs rebuilt per trial", "",
              f"Loading (`TrialRunner(config)`: model, texts, reference outputs): median {lv['load_s']} s of "
              f"{lv['loads_s']}; one trial ({lv['trials_timed']} runs each): median {lv['trial_s']} s cold (empty "
              f"memo), {lv.get('trial_warm_s', lv['trial_s'])} s warm (the worker's memo of Gram matrices and "
              f"GPTQ layers). Reloading per trial would make each trial {lv['reload_per_trial_s']} s, "
              f"{lv['reload_cost_x']}x the cost of a trial on a worker that keeps its state (what both backends "
              "do)."]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--reloads", type=int, default=3)
    args = ap.parse_args()
    import logging

    import optuna
    import ray
    import torch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    root = Path(tempfile.mkdtemp(prefix="scaling-"))
    env = {"cpus": os.cpu_count(), "machine": platform.machine(), "ray": ray.__version__, "torch": torch.__version__,
           "load_before": [round(x, 2) for x in os.getloadavg()], "python": platform.python_version()}
    result = {"env": env, "load_vs_trial": load_vs_trial(root, args.reloads), "workers": workers(root, args.trials)}
    env["load_after"] = [round(x, 2) for x in os.getloadavg()]
    save_results("scaling", result, markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
