"""Ctrl-C at random moments of a real search: does it always end cleanly?

Run:  .venv/bin/python benchmarks/ctrl_c.py [--runs 16] [--seed 11] [--backend local|ray]
Writes benchmarks/results/ctrl_c.json and ctrl_c.md (ctrl_c_ray.* with --backend ray).

Each run starts `autocompress search` (tiny random BERT, 5,000-trial budget, MLflow on SQLite through the writer
process) in its own process group, waits until a random number (1-30) of trials have finished while this
script opens the study read-only through Optuna every 0.5 s (as a user's notebook might, from before the
study exists), sleeps a random fraction of a second, and sends SIGINT to the whole group, as a terminal does.
Clean means: exit code 130 within 60 s and no "Traceback" on stderr. A run that does not exit gets SIGABRT
(with PYTHONFAULTHANDLER=1 every thread's stack is printed) and is counted as a hang; its stderr is kept.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import env_words, load_average, machine_env, save_results  # noqa: E402


def one_run(rng: random.Random, backend: str) -> dict:
    import optuna

    tmp = Path(tempfile.mkdtemp(prefix="ctrl-c-"))
    config = tmp / "c.json"
    config.write_text(json.dumps({
        "model": {"name": "random:bert"}, "data": {"calibration": {"n": 8}, "evaluation": {"n": 16}},
        "space": {"share": "layer", "quantize": {"bits": [2, 4, 8, None]}}, "budget": {"n_trials": 5000},
        "tracking": {"uri": f"sqlite:///{tmp}/mlflow.db", "writer": "process"},
        "backend": {"name": backend, **({"workers": 2} if backend == "ray" else {})},
        "run_dir": str(tmp / "run"), "study_name": "ctrl-c"}))
    proc = subprocess.Popen([sys.executable, "-m", "autocompress.cli", "search", str(config), "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "PYTHONFAULTHANDLER": "1"})
    want, storage, deadline = rng.randint(1, 30), f"sqlite:///{tmp}/run/optuna.db", time.monotonic() + 120
    done = 0
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            done = sum(t.state.is_finished() for t in optuna.load_study(study_name="ctrl-c", storage=storage).trials)
        except Exception:  # not created yet
            done = 0
        if done >= want:
            break
        time.sleep(0.5)
    time.sleep(rng.random())
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=60)
        hang = False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGABRT)
        _, err = proc.communicate(timeout=60)
        hang = True
    clean = not hang and proc.returncode == 130 and "Traceback" not in err
    row = {"after_trials": want, "seen_finished": done, "exit": proc.returncode, "hang": hang, "clean": clean,
           "stderr_tail": "" if clean else err[-4000:]}
    print({k: v for k, v in row.items() if k != "stderr_tail"}, flush=True)
    return row


def markdown(result: dict) -> str:
    rows = result["rows"]
    clean = sum(r["clean"] for r in rows)
    lines = ["# Ctrl-C at random moments of a search (benchmarks/ctrl_c.py)", "",
             f"{env_words(result['env'])} Commit {result['commit']}, backend {result['backend']}, seed "
             f"{result['seed']}.", "",
             f"**{clean} of {len(rows)} runs ended cleanly** (exit 130, no traceback); "
             f"{sum(r['hang'] for r in rows)} hung.", "",
             "| run | SIGINT after trials | exit | clean |", "|---|---|---|---|"]
    lines += [f"| {i} | {r['after_trials']} | {r['exit']} | {'yes' if r['clean'] else 'NO'} |"
              for i, r in enumerate(rows)]
    lines += ["", "The stderr of every run that was not clean is in the JSON."]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=16)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--backend", choices=("local", "ray"), default="local")
    args = ap.parse_args()
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    env = machine_env()
    rng = random.Random(args.seed)
    rows = [one_run(rng, args.backend) for _ in range(args.runs)]
    env["load_after"] = load_average()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()
    result = {"env": env, "commit": commit, "backend": args.backend, "seed": args.seed, "rows": rows}
    save_results("ctrl_c" if args.backend == "local" else "ctrl_c_ray", result, markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
