"""Does early stopping pay? The same search on the real all-MiniLM-L6-v2 with and without an Optuna pruner.

Run:  .venv/bin/python benchmarks/pruning.py [--seeds 0 1] [--trials 30] [--pruner median|threshold|...]
Writes benchmarks/results/pruning_<pruner>.json and .md.

Space: quantize bits [2, 3, 4, 8] group 32 RTN, unstructured Wanda sparsity [0, 0.3, 0.5] (per attention /
FFN group), distillation steps [0, 50] (lr [1e-4, 3e-4], beta [0, 1], batch 8, max_length 64, eval_every 10).
Objectives fidelity (max) and size_mb (min), constraint fidelity >= 0.9, NSGA-II, local backend, MLflow off.
Each seed runs both arms with the same sampler seed. Reported per arm: the summed trial seconds (driver-
measured, every trial), trials pruned, and the hypervolume of the feasible front (benchmarks/hypervolume.py,
fixed reference fidelity 0.9 / size 90 MB, normalized by the box up to fidelity 1 / size 0).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from hypervolume import run_curve  # noqa: E402

from autocompress.config import SearchConfig  # noqa: E402
from autocompress.search.driver import run_search  # noqa: E402
from autocompress.search.rundir.reader import RunDir  # noqa: E402

RESULTS = Path(__file__).parent / "results"
REFERENCE, IDEAL = {"fidelity": 0.9, "size_mb": 90.0}, {"fidelity": 1.0, "size_mb": 0.0}
SPACE = {"quantize": {"bits": [2, 3, 4, 8], "group_size": [32], "method": ["rtn"]},
         "prune": {"sparsity": [0.0, 0.3, 0.5], "method": ["wanda"]},
         "distill": {"steps": [0, 50], "lr": [1e-4, 3e-4], "beta": [0.0, 1.0], "layers": "all",
                     "batch_size": 8, "max_length": 64, "eval_every": 10}}
PRUNERS = {"median": {"name": "median", "n_startup_trials": 5},
           "successive_halving": {"name": "successive_halving", "min_resource": 10, "reduction_factor": 3},
           "threshold": {"name": "threshold", "n_warmup_steps": 20}}  # lower bound: the constraint, 0.9


def one(arm: str, pruner: dict, seed: int, trials: int, root: Path) -> dict:
    run_dir = root / f"{arm}-{seed}"
    config = SearchConfig.from_dict({
        "model": {"name": "all-MiniLM-L6-v2"}, "space": SPACE, "pruner": pruner,
        "data": {"calibration": {"n": 64, "seed": 1}, "evaluation": {"n": 128, "seed": 0}, "max_length": 64},
        "objectives": ["maximize fidelity", "minimize size_mb"], "constraints": ["fidelity >= 0.9"],
        "budget": {"n_trials": trials}, "sampler": {"name": "nsga2", "seed": seed, "population_size": 10},
        "tracking": {"uri": "none"}, "run_dir": str(run_dir), "study_name": f"{arm}-{seed}"}).resolved(root)
    t0 = time.perf_counter()
    result = run_search(config, show_progress=False)
    wall = time.perf_counter() - t0
    run = RunDir.open(run_dir)
    done = [t for t in run.trials if t.state.is_finished()]
    curve = run_curve(run_dir, REFERENCE, IDEAL)
    feasible = sorted(((t.values[0], t.values[1]) for t in done if t.state.name == "COMPLETE" and t.values
                       and t.values[0] >= REFERENCE["fidelity"]), key=lambda v: v[1])
    distilled = [t for t in done if t.params.get("distill.steps", 0) > 0]
    return {"arm": arm, "seed": seed, "pruner": pruner, "counts": result.counts, "wall_s": round(wall, 1),
            "trial_s": round(sum(t.user_attrs.get("duration_s", 0.0) for t in done), 1),
            "pruned": sum(1 for t in done if t.state.name == "PRUNED"),
            "pruned_during_distill": sum(1 for t in distilled if t.state.name == "PRUNED"
                                         and "at step 0 " not in t.user_attrs.get("reason", "")),
            "distilled_trials": len(distilled), "hypervolume": round(curve[-1], 5),
            "best_size_at_0.95": min((s for f, s in feasible if f >= 0.95), default=None),
            "reasons": [t.user_attrs.get("reason") for t in done if t.state.name == "PRUNED"]}


def markdown(rows: list[dict], args: argparse.Namespace) -> str:
    lines = [f"all-MiniLM-L6-v2, {args.trials} trials per search, NSGA-II (population 10), local backend, "
             f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads ({platform.machine()}). Space: "
             "quantize bits [2, 3, 4, 8] g32 RTN x Wanda sparsity [0, 0.3, 0.5] per group x distill steps [0, 50] "
             "(lr [1e-4, 3e-4], beta [0, 1], batch 8, max_length 64, eval_every 10). Objectives fidelity, size_mb; "
             "constraint fidelity >= 0.9. Intermediate steps on 32 of the 128 evaluation texts. Hypervolume of the "
             "feasible front, reference fidelity 0.9 / 90 MB, normalized to the box up to fidelity 1 / 0 MB.", "",
             "| seed | pruner | trial s (sum) | wall s | pruned (of which during distillation) | distilled trials "
             "| hypervolume | smallest MB at fidelity >= 0.95 |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        best = "-" if r["best_size_at_0.95"] is None else f"{r['best_size_at_0.95']:.2f}"
        lines.append(f"| {r['seed']} | {r['arm']} | {r['trial_s']:.0f} | {r['wall_s']:.0f} | {r['pruned']} "
                     f"({r['pruned_during_distill']}) | {r['distilled_trials']} | {r['hypervolume']:.4f} | {best} |")
    off = [r for r in rows if r["arm"] == "none"]
    on = [r for r in rows if r["arm"] != "none"]
    if off and on:
        saved = 1 - sum(r["trial_s"] for r in on) / sum(r["trial_s"] for r in off)
        hv = sum(r["hypervolume"] for r in on) / len(on) - sum(r["hypervolume"] for r in off) / len(off)
        lines += ["", f"Over {len(off)} seed(s): pruning spends {saved:.0%} less total trial time; mean hypervolume "
                      f"difference (pruned - unpruned) {hv:+.4f}."]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--trials", type=int, default=30)
    ap.add_argument("--pruner", choices=sorted(PRUNERS), default="median")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="pruning-bench-"))
    rows = []
    try:
        for seed in args.seeds:
            for arm, pruner in (("none", {"name": "none"}), (args.pruner, PRUNERS[args.pruner])):
                rows.append(one(arm, pruner, seed, args.trials, root))
                print(json.dumps({k: v for k, v in rows[-1].items() if k != "reasons"}), flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    RESULTS.mkdir(exist_ok=True)
    name = f"pruning_{args.pruner}"
    (RESULTS / f"{name}.json").write_text(json.dumps({"reference": REFERENCE, "ideal": IDEAL, "space": SPACE,
                                                      "runs": rows}, indent=2))
    (RESULTS / f"{name}.md").write_text(markdown(rows, args))
    print(markdown(rows, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
