"""Trials per minute of a search against the floor: the same trial work in a bare loop.

Run:  .venv/bin/python benchmarks/trial_rate.py [--trials 40] [--eval 384] [--writer-process] [--name trial_rate]
      [--device cpu|cuda] [--workers 1]
Writes benchmarks/results/<name>.json and <name>.md.  (issue 8, "GPU: trials per minute": the CPU half)

Workload, the issue's quickstart-style trial: the real all-MiniLM-L6-v2, a per-layer plan (36 Linear units,
4 or 8-bit RTN weights, one scale per output channel), fidelity on `--eval` builtin sentences. RTN needs no
calibration, so every trial does the same kind of work: a base-state copy of the model (a deep copy when
`trial_rate.md` was measured; the worker's working copy put back since, see trial_setup.py), apply the plan,
evaluate.

1. Search: `run_search` on the local backend (trials in the driver's process, torch's default threads),
   Optuna on SQLite in the run directory, NSGA-II seed 0, `--trials` trials; once with MLflow on a SQLite
   store (the embedded defaults) and once with MLflow off; with `--writer-process` also with MLflow logged by
   the writer child process (`tracking.writer: process`), the setting for short trials. Rate = evaluated
   trials / loop window (first trial start to last trial end; model load and start-up are reported apart),
   per minute.
2. Floor: the plans the first search evaluated, in the same order, each given to `TrialRunner.run` in a bare
   loop in this process (a runner built once, as a worker does): no Optuna, no MLflow, no driver.
Overhead share = 1 - search rate / floor rate: what the search costs per trial beyond the trial's own work.

The GPU half of the issue (one H100, several workers sharing it): `--device cuda` runs every trial there
(`backend.device: cuda`), `--workers N` runs the searches on N Ray actors, each reserving 1/N of the GPU
(trial_rate_cuda.md: 4 actors on one H200).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import env_words, load_average, loop_window, machine_env, save_results  # noqa: E402


DEVICE, WORKERS = "cpu", 1  # backend.device of every run (--device); workers of the searches (--workers)


def backend() -> dict:
    """The searches' backend: local for one worker, else Ray actors sharing the machine (and its one GPU)."""
    if WORKERS == 1:
        return {"name": "local", "device": DEVICE}
    return {"name": "ray", "workers": WORKERS, "device": DEVICE,
            "gpus_per_trial": round(1 / WORKERS, 4) if DEVICE == "cuda" else 0.0}


def make_config(root: Path, name: str, trials: int, n_eval: int, tracking: str):
    from autocompress.config import SearchConfig

    run_dir = root / name
    return SearchConfig.from_dict({
        "model": {"name": "all-MiniLM-L6-v2"},
        "data": {"calibration": {"source": "builtin", "n": 16, "seed": 1},
                 "evaluation": {"source": "builtin", "n": n_eval, "seed": 0}},
        "space": {"share": "layer", "quantize": {"bits": [4, 8], "group_size": [None], "method": ["rtn"]}},
        "objectives": ["maximize fidelity", "minimize size_mb"],
        "budget": {"n_trials": trials}, "sampler": {"name": "nsga2", "seed": 0},
        "backend": backend(), "run_dir": str(run_dir), "study_name": name,
        "tracking": {"uri": "none" if tracking == "off" else f"sqlite:///{root}/mlflow-{name}.db",
                     "experiment": "trial-rate", "writer": "process" if tracking == "process" else "thread"}
    }).resolved(root)


def search(root: Path, trials: int, n_eval: int, tracking: str) -> tuple[dict, list[str]]:
    """(row, the JSON of each evaluated plan in trial order)."""
    from autocompress.search.driver import run_search
    config = make_config(root, f"search-mlflow-{tracking}", trials, n_eval, tracking)
    start = time.time()
    result = run_search(config, show_progress=False)
    loop = loop_window(config.run_dir)
    evaluated, window = loop.evaluated, loop.window_s
    plans = [Path(t.user_attrs["plan_path"]).read_text() for t in evaluated]
    case = {"on": "search, MLflow on", "off": "search, MLflow off", "process": "search, MLflow on, writer process"}
    row = {"case": case[tracking], "trials": len(loop.done), "evaluated": len(evaluated),
           "repeats": result.repeats, "startup_s": round(loop.first_start - start, 1), "window_s": round(window, 2),
           "s_per_trial": round(window / len(evaluated), 4), "trials_per_min": round(60 * len(evaluated) / window, 1),
           "work_s_per_trial": round(loop.work_s / len(evaluated), 4), "workers": WORKERS}
    print(row, flush=True)
    return row, plans


def floor(root: Path, plans: list[str], n_eval: int) -> dict:
    """The plans through one TrialRunner in a bare loop."""
    from autocompress.search.workers.runner import TrialRunner

    runner = TrialRunner(make_config(root, "floor", len(plans), n_eval, "off"))
    runner.run(plans[0])  # warm-up: first-call costs (allocator, kernels), as the search's first trial pays
    start = time.perf_counter()
    outcomes = [runner.run(p) for p in plans]
    wall = time.perf_counter() - start
    bad = [o.error for o in outcomes if o.error]
    assert not bad, bad[0]
    row = {"case": "floor (bare loop)", "trials": len(plans), "evaluated": len(plans), "window_s": round(wall, 2),
           "s_per_trial": round(wall / len(plans), 4), "trials_per_min": round(60 * len(plans) / wall, 1),
           "work_s_per_trial": round(sum(o.apply_s + o.eval_s for o in outcomes) / len(plans), 4)}
    print(row, flush=True)
    return row


def _backend_words(env: dict) -> str:
    b = env.get("backend") or {"name": "local"}
    if b["name"] == "local":
        return "local backend"
    share = f", {b['gpus_per_trial']} GPU each" if b.get("gpus_per_trial") else ""
    return f"Ray backend, {b['workers']} workers{share}"


def markdown(result: dict) -> str:
    env, rows = result["env"], result["rows"]
    lines = ["# Trials per minute against the floor (benchmarks/trial_rate.py)", "",
             f"{env_words(env)} The real MiniLM, "
             f"per-layer RTN 4/8-bit plans (36 units), fidelity on {result['eval']} sentences; "
             f"{_backend_words(env)}, Optuna on SQLite, NSGA-II seed 0. Floor: the first search's evaluated "
             "plans in a bare loop.", "",
             "| case | trials (evaluated) | window s | s / evaluated trial | work s / trial | beyond work s / trial "
             "| trials / min | overhead share in the run | vs the floor's rate |", "|---|---|---|---|---|---|---|---|---|"]
    base = next(r for r in rows if r["case"].startswith("floor"))
    for r in rows:
        beyond = r["s_per_trial"] - r["work_s_per_trial"] / r.get("workers", 1)  # workers' trials overlap
        vs_floor = "-" if r is base else f"{1 - r['trials_per_min'] / base['trials_per_min']:.1%}"
        lines.append(f"| {r['case']} | {r['trials']} ({r['evaluated']}) | {r['window_s']} | {r['s_per_trial']} | "
                     f"{r['work_s_per_trial']} | {beyond:.3f} | {r['trials_per_min']} | "
                     f"{beyond / r['s_per_trial']:.1%} | {vs_floor} |")
    lines += ["", "Work = apply + evaluate as the trial times it (`work_s`); what is beyond it is the search's "
              "cost per trial (ask, sample, size, dispatch, tell, MLflow's writer thread or process) and, for the "
              "floor, the runner's own bookkeeping. The share against the floor's rate also carries any drift of the "
              "machine between the runs (compare the work columns)."]
    workers = max(r.get("workers", 1) for r in rows)
    if workers > 1:
        lines += ["", f"The searches ran {workers} trials at a time: what is beyond the work is the wall time per "
                  f"trial less the work per trial / {workers}."]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--eval", type=int, default=384, help="evaluation sentences per trial")
    ap.add_argument("--writer-process", action="store_true", help="also a search with tracking.writer: process")
    ap.add_argument("--name", help="results file stem (default trial_rate, or trial_rate_cuda with --device cuda)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="backend.device of the trials")
    ap.add_argument("--workers", type=int, default=1, help="more than 1: the searches on Ray, that many actors "
                    "(with --device cuda, each reserving 1/workers of the GPU); the floor stays one bare loop")
    args = ap.parse_args()
    global DEVICE, WORKERS
    DEVICE, WORKERS = args.device, args.workers
    import logging

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    root = Path(tempfile.mkdtemp(prefix="trial-rate-"))
    env = {**machine_env(DEVICE), "backend": backend()}
    on, plans = search(root, args.trials, args.eval, "on")
    bare = floor(root, plans, args.eval)
    rows = [bare, on]
    if args.writer_process:
        rows.append(search(root, args.trials, args.eval, "process")[0])
    rows.append(search(root, args.trials, args.eval, "off")[0])
    env["load_after"] = load_average()
    result = {"env": env, "eval": args.eval, "args": vars(args), "rows": rows}
    save_results(args.name or ("trial_rate" if DEVICE == "cpu" else "trial_rate_cuda"), result, markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
