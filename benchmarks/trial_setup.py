"""Trial set-up: a deep copy of the base model per trial vs one working copy put back in place.

Run:  .venv/bin/python benchmarks/trial_setup.py [--plans 30] [--eval 384 32] [--repeats 30] [--device cpu|cuda]
Writes benchmarks/results/trial_setup.json and trial_setup.md (trial_setup_cuda.* with --device cuda).
(issue 8, "GPU: trials per minute": "restore weights in place instead of copying the model")

Workload, the issue's quickstart-style trial: the real all-MiniLM-L6-v2, per-layer plans (36 Linear units, 4 or
8-bit RTN weights, one scale per output channel, bits drawn at random with seed 0), fidelity on `--eval`
builtin sentences (the issue's 384, and a short evaluation where set-up weighs more, as on a GPU).

1. Set-up alone, `--repeats` times each, after an RTN plan was applied: `copy.deepcopy(base)` against
   `ModelWorkspace.restore()` (search/workers/workspace.py), median and range in ms.
2. Trials: two `TrialRunner`s built once, one deep-copying per trial (`reuse_model=False`) and one reusing
   its working copy (the default); each plan runs on both, in turns, and the metrics must be identical (the
   script stops otherwise). Median ms per trial (apply + evaluate, set-up inside apply) and the bare-loop
   trials per minute that gives.
"""

from __future__ import annotations

import argparse
import copy
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import env_words, load_average, machine_env, save_results  # noqa: E402


def make_config(root: Path, n_eval: int, device: str = "cpu"):
    from autocompress.config import SearchConfig

    return SearchConfig.from_dict({
        "model": {"name": "all-MiniLM-L6-v2"},
        "data": {"calibration": {"source": "builtin", "n": 16, "seed": 1},
                 "evaluation": {"source": "builtin", "n": n_eval, "seed": 0}},
        "space": {"share": "layer", "quantize": {"bits": [4, 8], "group_size": [None], "method": ["rtn"]}},
        "tracking": {"uri": "none"}, "backend": {"device": device}, "run_dir": str(root / f"eval{n_eval}"),
        "study_name": f"trial-setup-{n_eval}"}).resolved(root)


def rtn_plans(layers: list[str], n: int, seed: int = 0) -> list[str]:
    from autocompress.plan import CompressionPlan

    rng = random.Random(seed)
    return [CompressionPlan.from_dict({"version": 1, "layers": {
        name: {"bits": rng.choice([4, 8]), "group_size": None} for name in layers}}).to_json() for _ in range(n)]


def summary(xs: list[float]) -> dict:
    return {"median_ms": round(1000 * statistics.median(xs), 2), "min_ms": round(1000 * min(xs), 2),
            "max_ms": round(1000 * max(xs), 2)}


def setup_alone(runner, plan_json: str, repeats: int) -> dict:
    """ms to get a base-state copy: deepcopy of the base model, or restoring the used working copy (on a GPU,
    synchronized before each clock reading)."""
    import torch

    from autocompress.plan import CompressionPlan
    from autocompress.policies import apply_plan

    sync = torch.cuda.synchronize if runner.device.type == "cuda" else (lambda: None)

    base, plan, workspace = runner.loaded.model, CompressionPlan.from_json(plan_json), runner.workspace
    copies, restores = [], []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fresh = copy.deepcopy(base)
        sync()
        copies.append(time.perf_counter() - t0)
        del fresh
        apply_plan(workspace.checkout(), plan, info=runner.info)
        sync()
        t0 = time.perf_counter()
        workspace.restore()
        sync()
        restores.append(time.perf_counter() - t0)
    assert workspace.matches_base()
    params = sum(p.numel() for p in base.parameters())
    return {"params": params, "deepcopy": summary(copies), "restore": summary(restores)}


def trials(root: Path, n_eval: int, n_plans: int, device: str) -> dict:
    from autocompress.search.workers.runner import TrialRunner

    config = make_config(root, n_eval, device)
    runners = {"deepcopy per trial": TrialRunner(config, reuse_model=False),
               "working copy restored": TrialRunner(config)}
    plans = rtn_plans(list(runners["working copy restored"].info.layers), n_plans)
    for runner in runners.values():
        runner.run(plans[0])  # warm-up
    times: dict[str, list] = {k: [] for k in runners}
    for i, plan in enumerate(plans):
        outcomes = {}
        for mode, runner in (list(runners.items()) if i % 2 == 0 else reversed(list(runners.items()))):
            o = runner.run(plan)
            assert o.error is None, o.error
            outcomes[mode] = o
            times[mode].append((o.apply_s, o.eval_s))
        a, b = outcomes.values()
        assert a.metrics == b.metrics, f"plan {i}: {a.metrics} != {b.metrics}"
    rows = []
    for mode, ts in times.items():
        total = [a + e for a, e in ts]
        rows.append({"mode": mode, "eval": n_eval, "plans": len(plans), "apply": summary([a for a, _ in ts]),
                     "evaluate": summary([e for _, e in ts]), "trial": summary(total),
                     "trials_per_min": round(60 / statistics.median(total), 1)})
        print(rows[-1], flush=True)
    return {"rows": rows, "runner": runners["working copy restored"], "plans": plans}


def markdown(result: dict) -> str:
    env, setup = result["env"], result["setup"]
    lines = ["# Trial set-up: deep copy vs working copy restored (benchmarks/trial_setup.py)", "",
             f"{env_words(env)} The real MiniLM "
             f"({setup['params'] / 1e6:.1f}M parameters, fp32), per-layer RTN 4/8-bit plans (36 units).", "",
             "## Set-up alone", "",
             f"Over {result['repeats']} repeats, after an RTN plan was applied to the working copy:", "",
             "| way to a base-state copy | median ms | min ms | max ms |", "|---|---|---|---|"]
    for key, label in (("deepcopy", "`copy.deepcopy(base)`"), ("restore", "`ModelWorkspace.restore()`")):
        s = setup[key]
        lines.append(f"| {label} | {s['median_ms']} | {s['min_ms']} | {s['max_ms']} |")
    lines += ["", "## Trials in a bare loop", "",
              "Each plan on both runners in turns; the metrics were identical for every plan (checked).", "",
              "| evaluation sentences | mode | apply ms (set-up inside) | evaluate ms | trial ms | trials / min |",
              "|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['eval']} | {r['mode']} | {r['apply']['median_ms']} | {r['evaluate']['median_ms']} | "
                     f"{r['trial']['median_ms']} | {r['trials_per_min']} |")
    lines += ["", "Medians over the plans (range in the JSON)."]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plans", type=int, default=30)
    ap.add_argument("--eval", type=int, nargs="+", default=[384, 32], help="evaluation sentences per trial")
    ap.add_argument("--repeats", type=int, default=30, help="set-up timings of each kind")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="backend.device of the trials")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="trial-setup-"))
    env = machine_env(args.device)
    rows, setup = [], None
    for n_eval in args.eval:
        part = trials(root, n_eval, args.plans, args.device)
        rows += part["rows"]
        if setup is None:
            setup = setup_alone(part["runner"], part["plans"][0], args.repeats)
            print({"setup": setup}, flush=True)
    env["load_after"] = load_average()
    result = {"env": env, "args": vars(args), "repeats": args.repeats, "setup": setup, "rows": rows}
    save_results("trial_setup" if args.device == "cpu" else "trial_setup_cuda", result, markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
