"""Does seeding a search from per-unit sensitivity reach a given hypervolume in fewer trials? (issue 6)

Run:  .venv/bin/python benchmarks/sensitivity_seeding.py [--trials 40] [--seeds 3] [--samplers nsga2 tpe]
Writes benchmarks/results/sensitivity_seeding.json (every curve) and sensitivity_seeding.md.

Setup: the real all-MiniLM-L6-v2, calibration n 64 / evaluation n 128 (builtin), objectives [maximize
fidelity, minimize size_mb], constraint fidelity >= 0.9, per layer group (24 units): RTN g32 bits {3, 4, 8, off};
local backend (1 trial at a time), tracking none, `--trials` per study. (A first run with 2-bit and 50%
sparsity among the choices was uninformative: almost every sampled plan broke the constraint, so no sampled
trial ever improved a front made of baselines.)

1. The sensitivity is measured ONCE (`autocompress.search.seeding.sensitivity.load_or_measure`, on the local backend)
   and its cost reported apart: evaluations, seconds, and trial equivalents (its seconds over the median
   seconds of one search trial in the same invocation, and its evaluation count: each is a full apply +
   evaluate, as a trial is).
2. Each sampler runs unseeded (`sensitivity: {seed: false}`), seeded (`sensitivity.thresholds`, and the
   default `budgets: true`: one plan per uniform baseline's bytes, search/seeding/allocation.py) and seeded from the
   thresholds only (`budgets: false`, what seeding was before the budgets), each seeded arm with the measured
   sensitivity.json copied into the run directory first, so it is not measured again) for sampler seeds
   0..`--seeds`-1; both arms start from the same uniform baselines. The strongest unseeded sampler (mean
   hypervolume-curve area) is the baseline the issue's claim is judged against.
   NSGA-II gives the enqueued trials (baselines, seeds) a generation (`autocompress.search.study.
   assign_generation`), so they are parents of the evolution like sampled trials.

Hypervolume (benchmarks/hypervolume.py): feasible front, fixed reference point (fidelity 0.9 = the
constraint bound, size_mb of the uncompressed model), normalized by the box up to (fidelity 1, 0 MB).

Speed-up, not a change of results: one model load and one evaluation per distinct plan across every run
(benchmarks/shared_runner.py), so trial counts, not wall times, are what is compared.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.hypervolume import hypervolume_curve, trials_to_reach  # noqa: E402
from benchmarks.common import RESULTS, save_results  # noqa: E402
from benchmarks.shared_runner import SharedRunner, shared_runner  # noqa: E402

CONSTRAINT = 0.9
THRESHOLDS = [0.001, 0.003, 0.01, 0.03]
FRACTIONS = (0.90, 0.95, 0.99)
SPACE = {"share": "group", "quantize": {"bits": [3, 4, 8, None], "group_size": [32], "method": ["rtn"]}}
OBJECTIVES = ["maximize fidelity", "minimize size_mb"]


ARMS = {"unseeded": None, "seeded": True, "thresholds only": False}  # arm -> sensitivity.budgets (None: no seeding)


def make_config(run_dir: Path, sampler: str, seed: int, trials: int, seeded: bool, budgets: bool = True):
    from autocompress.config import SearchConfig

    data = {"model": {"name": "all-MiniLM-L6-v2"},
            "data": {"calibration": {"source": "builtin", "n": 64, "seed": 1},
                     "evaluation": {"source": "builtin", "n": 128, "seed": 0}},
            "space": SPACE, "objectives": OBJECTIVES, "constraints": [f"fidelity >= {CONSTRAINT}"],
            "budget": {"n_trials": trials}, "sampler": {"name": sampler, "seed": seed},
            "backend": {"name": "local"}, "tracking": {"uri": "none"}, "run_dir": str(run_dir),
            "study_name": run_dir.name,
            "sensitivity": {"thresholds": THRESHOLDS, "budgets": budgets} if seeded else {"seed": False}}
    if sampler.startswith("nsga2"):
        data["sampler"]["population_size"] = 8
    return SearchConfig.from_dict(data).resolved(run_dir.parent)


def measure_sensitivity(work: Path, shared: SharedRunner) -> tuple[Path, dict]:
    """Measure once into work/sensitivity/sensitivity.json (a file already there from an earlier invocation
    with the same fingerprint is reused, and its own recorded cost reported); returns (path, cost)."""
    from autocompress.search.workers.backends import make_backend
    from autocompress.search.seeding.sensitivity import FILE, load_or_measure
    from autocompress.spaces import ConfigSpace

    config = make_config(work / "sensitivity", "nsga2", 0, 1, seeded=True)
    Path(config.run_dir).mkdir(parents=True, exist_ok=True)
    backend = make_backend(config)
    info = backend.start()
    before = len(shared.miss_s)
    try:
        start = time.perf_counter()
        sens, measured_now = load_or_measure(config, backend, info, ConfigSpace(config.space, info),
                                             Path(config.run_dir))
        wall = time.perf_counter() - start
    finally:
        backend.close()
    cost = {"measured_in_this_invocation": measured_now, "evaluations": sens.evaluations,
            "seconds": round(sens.seconds, 1), "wall_s": round(wall, 1), "evaluated_now": len(shared.miss_s) - before,
            "reference": sens.reference, "units": len(sens.layers), "drops": sens.layers}
    return Path(config.run_dir) / FILE, cost


def run_one(work: Path, sampler: str, seed: int, trials: int, sens_file: Path | None, reference: dict,
            ideal: dict, shared: SharedRunner, arm: str = "seeded") -> dict:
    """One study; returns its hypervolume curve, what the seeds did and what its final front is made of."""
    from autocompress.search.driver import run_search
    from autocompress.search.rundir.reader import RunDir

    arm = arm if sens_file else "unseeded"
    name = f"{sampler}-{arm.replace(' ', '-')}-s{seed}"
    config = make_config(work / name, sampler, seed, trials, seeded=sens_file is not None, budgets=ARMS[arm] is True)
    run_dir = Path(config.run_dir)
    run_dir.mkdir(parents=True)
    if sens_file:
        shutil.copy(sens_file, run_dir / sens_file.name)
    hits, misses, start = shared.hits, len(shared.miss_s), time.perf_counter()
    run_search(config, show_progress=False)
    wall = time.perf_counter() - start
    if sens_file:
        assert (run_dir / sens_file.name).read_text() == sens_file.read_text(), "sensitivity was measured again"
    run = RunDir.open(run_dir)
    curve = hypervolume_curve(run.trials, OBJECTIVES, reference, ideal)

    def row(t) -> dict:
        m = t.user_attrs["metrics"]
        return {"trial": t.number, "label": t.user_attrs.get("baseline", "sampled"),
                "fidelity": round(m["fidelity"], 4), "size_mb": round(m["size_mb"], 2)}

    feasible = [t for t in run.completed() if run.is_feasible(t)]
    return {"name": name, "sampler": sampler, "seed": seed, "seeded": sens_file is not None, "arm": arm, "curve": curve,
            "final": curve[-1], "area": statistics.fmean(curve), "seed_trials": [row(t) for t in run.seeded()],
            "front": [row(t) for t in run.front()], "n_trials": len(run.trials),
            "feasible_sampled": sum(1 for t in feasible if "baseline" not in t.user_attrs),
            "wall_s": round(wall, 1), "evaluated": len(shared.miss_s) - misses, "reused": shared.hits - hits}


def spread(values: list[float | int | None]) -> dict:
    got = [v for v in values if v is not None]
    return {"values": values, "reached": len(got), "of": len(values),
            "mean": statistics.fmean(got) if got else None, "sd": statistics.stdev(got) if len(got) > 1 else 0.0,
            "min": min(got) if got else None, "max": max(got) if got else None}


def summarize(runs: list[dict], best: float, sens_equiv: float) -> dict:
    out = {"final": spread([r["final"] for r in runs]), "area": spread([r["area"] for r in runs]),
           "at_10": spread([r["curve"][min(9, len(r["curve"]) - 1)] for r in runs]),
           "seed_trials": [len(r["seed_trials"]) for r in runs],
           "feasible_sampled": [r["feasible_sampled"] for r in runs]}
    for f in FRACTIONS:
        need = [trials_to_reach(r["curve"], f * best) for r in runs]
        out[f"to_{int(f * 100)}"] = spread(need)
        if runs[0]["seeded"]:
            out[f"to_{int(f * 100)}_with_sensitivity"] = spread([None if n is None else n + sens_equiv for n in need])
    return out


def fmt(s: dict, digits: int = 1) -> str:
    if s["mean"] is None:
        return f"not reached (0/{s['of']})"
    text = f"{s['mean']:.{digits}f} ± {s['sd']:.{digits}f} [{s['min']:.{digits}f}–{s['max']:.{digits}f}]"
    return text + ("" if s["reached"] == s["of"] else f" ({s['reached']}/{s['of']} reached)")


def write(result: dict) -> str:
    s, cost, arms = result["setup"], result["sensitivity"], result["arms"]
    lines = ["# Sensitivity-seeded vs unseeded search (all-MiniLM-L6-v2)", "",
             f"Model {s['model']}; data: calibration n {s['calibration_n']}, evaluation n {s['evaluation_n']} "
             f"(builtin); objectives {s['objectives']}; constraint {s['constraint']}; space: per layer group "
             f"(24 units), RTN g32 bits {{3, 4, 8, off}}; {s['trials']} trials "
             f"per study, each starting with the uniform baselines; samplers {s['samplers']}; sampler seeds "
             f"{s['seeds']}; seeded thresholds {s['thresholds']}"
             f"{' and uniform-baseline budgets' if s.get('budgets') else ''}; local backend, 1 trial at a time; machine: "
             f"{s['machine']}; torch {s['torch']}, optuna {s['optuna']}. Benchmark wall time {s['wall_min']:.1f} min.",
             "", f"Hypervolume: feasible front, fixed reference (fidelity {CONSTRAINT}, size_mb "
             f"{s['reference_size_mb']:.2f} = the uncompressed model), divided by the box up to (fidelity 1, 0 MB). "
             f"Targets: 90/95/99% of the best final hypervolume of any run ({result['best_final']:.4f}).", "",
             f"Sensitivity, measured once: {cost['evaluations']} evaluations ({cost['units']} units x compressing "
             f"choices + the reference) in {cost['seconds']:.0f} s = **{cost['trial_equivalents_time']:.0f} trial "
             f"equivalents by time** (median search trial {s['median_trial_s']:.2f} s), {cost['evaluations']} by count.",
             "", "| arm | final HV | HV after 10 trials | trials to 90% | to 95% | to 99% | seeded trials "
             "| feasible sampled trials |", "|---|---|---|---|---|---|---|---|"]
    for name, a in arms.items():
        lines.append(f"| {name} | {fmt(a['final'], 4)} | {fmt(a['at_10'], 4)} | {fmt(a['to_90'])} | {fmt(a['to_95'])} "
                     f"| {fmt(a['to_99'])} | {a['seed_trials']} | {a['feasible_sampled']} |")
    lines += ["", "Mean ± sd [min–max] over sampler seeds; a run that never reached a target is left out of the "
              "mean and counted in 'reached'. 'feasible sampled trials': trials the sampler proposed (not a "
              "baseline or seed) with fidelity >= 0.9, per seed.", ""]
    for name, a in arms.items():
        if not name.endswith("unseeded"):
            lines.append(f"- {name}, counting the sensitivity as trials (by time): " + "; ".join(
                f"{int(f * 100)}%: {fmt(a[f'to_{int(f * 100)}_with_sensitivity'])}" for f in FRACTIONS))
    lines += ["", f"Strongest unseeded sampler (mean curve area): {s['strongest_unseeded']}. "
              + result.get("verdict", ""), "", "Per run: final HV, trials to 90/95/99%, final front "
              "(trial: label fidelity / MB):", ""]
    for r in result["runs"]:
        need = [trials_to_reach(r["curve"], f * result["best_final"]) for f in FRACTIONS]
        front = ", ".join(f"#{x['trial']} {x['label']} {x['fidelity']:.3f} / {x['size_mb']:.1f}" for x in r["front"])
        lines.append(f"- {r['name']}: {r['final']:.4f}, {need}; front {front}")
    seeds = next((r["seed_trials"] for r in result["runs"] if r.get("arm", "seeded") == "seeded"), [])
    lines += ["", "Seeded plans: " + ", ".join(f"{x['label']}: fidelity {x['fidelity']:.3f} / {x['size_mb']:.1f} MB"
                                                for x in seeds),
              "", "Speed-up: one model load and one evaluation per distinct plan across all runs (deterministic "
              "metrics; see the script's docstring)."]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--samplers", nargs="+", default=["nsga2", "tpe"],
                        choices=["nsga2", "tpe"])
    parser.add_argument("--work-dir", help="where the run directories go (default: a new temporary one)")
    parser.add_argument("--out", default=str(RESULTS / "sensitivity_seeding"))
    args = parser.parse_args()
    import optuna
    import torch

    from autocompress.evaluators.size import plan_size
    from autocompress.plan import CompressionPlan

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="seedbench-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"run directories under {work}", flush=True)
    t0, load = time.perf_counter(), os.getloadavg()
    runs = []
    with shared_runner() as shared:
        sens_file, cost = measure_sensitivity(work, shared)
        print(f"sensitivity: {cost['evaluations']} evaluations, {cost['seconds']} s", flush=True)
        original = plan_size(CompressionPlan({}), shared.info).size_mb
        reference, ideal = {"fidelity": CONSTRAINT, "size_mb": original}, {"fidelity": 1.0, "size_mb": 0.0}
        for sampler in args.samplers:
            for arm, budgets in ARMS.items():
                for seed in range(args.seeds):
                    r = run_one(work, sampler, seed, args.trials, sens_file if budgets is not None else None,
                                reference, ideal, shared, arm)
                    runs.append(r)
                    print(f"{r['name']}: final HV {r['final']:.4f}, area {r['area']:.4f}, {r['wall_s']} s "
                          f"({r['evaluated']} evaluated, {r['reused']} reused) "
                          f"[{(time.perf_counter() - t0) / 60:.1f} min]", flush=True)
    trial_s = shared.miss_s[cost["evaluated_now"]:]
    search_s = statistics.median(trial_s)
    cost["trial_equivalents_time"] = cost["seconds"] / search_s
    best = max(r["final"] for r in runs)
    arms = {}
    for sampler in args.samplers:
        for arm, budgets in ARMS.items():
            group = [r for r in runs if r["sampler"] == sampler and r["arm"] == arm]
            equiv = cost["trial_equivalents_time"] if budgets is not None else 0.0
            arms[f"{sampler} {arm}"] = summarize(group, best, equiv)
    area = {n: a["area"]["mean"] for n, a in arms.items() if n.endswith("unseeded")}
    strongest = max(area, key=area.get)
    setup = {"model": "all-MiniLM-L6-v2", "calibration_n": 64, "evaluation_n": 128, "objectives": OBJECTIVES,
             "constraint": f"fidelity >= {CONSTRAINT}", "space": SPACE, "trials": args.trials,
             "samplers": args.samplers, "population_size_nsga2": 8, "tpe": "multivariate, Optuna's 10 startup trials",
             "strongest_unseeded": f"{strongest} (" + ", ".join(f"{k} {v:.4f}" for k, v in area.items()) + ")",
             "seeds": list(range(args.seeds)), "thresholds": THRESHOLDS, "budgets": True, "torch": torch.__version__,
             "optuna": optuna.__version__, "python": platform.python_version(),
             "machine": f"{os.cpu_count()} CPU cores ({platform.machine()}), load average {load[0]:.2f} at the "
                        f"start, {os.getloadavg()[0]:.2f} at the end",
             "reference_size_mb": original, "median_trial_s": search_s,
             "wall_min": (time.perf_counter() - t0) / 60, "evaluations": len(shared.miss_s), "reused": shared.hits}
    result = {"setup": setup, "sensitivity": cost, "best_final": best, "arms": arms, "runs": runs}
    parts = []
    for sampler in args.samplers:
        seeded_arm, unseeded_arm = arms[f"{sampler} seeded"], arms[f"{sampler} unseeded"]
        parts.append(f"{sampler}: " + ", ".join(
            f"{int(f * 100)}% in {fmt(seeded_arm[f'to_{int(f * 100)}'])} seeded vs "
            f"{fmt(unseeded_arm[f'to_{int(f * 100)}'])} unseeded" for f in FRACTIONS))
    result["verdict"] = "Trials to reach the targets: " + "; ".join(parts) + "."
    save_results(args.out, result, write(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
