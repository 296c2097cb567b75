"""Search quality against what a user would do instead: uniform plans, and random search with 1x and 4x the trials.

Run:  .venv/bin/python benchmarks/search_quality.py [--trials 50] [--random-factor 4] [--seeds 3]
Writes benchmarks/results/search_quality.json (every curve and front) and search_quality.md.  (issue 8)

Setup: the real all-MiniLM-L6-v2, calibration n 64 / evaluation n 128 (builtin); the joint space that
`autocompress auto` writes (per layer group, 36 units: 24 layer groups with weight bits {3, 4, 8, off} with group size {32, 128},
int8 activations {on, off}, and 12 structures with whole heads / FFN neurons removed {0, 12.5, 25%}), with RTN in place of GPTQ and
magnitude in place of Wanda so that ~800 evaluations fit in under an hour on 2 cores; constraint fidelity
>= 0.95; local backend; tracking off. (A first run on a harsher space, 30/50% unstructured sparsity and SVD
rank 0.5/0.25 added, found no random plan in 600 at fidelity >= 0.9: random search scored 0 there.)
With --gptq the space is quantization only, with GPTQ: weight bits {3, 4, 8, off}, group size {32, 128}, int8
activations {on, off} per layer group (24 units), no structured pruning. Every plan then quantizes the
unchanged base model, so a worker's memo (autocompress/policies/memo.py) runs GPTQ once per (layer, bits,
group size) and an evaluation costs about what an RTN one does; results go to search_quality_gptq*.
With --embeddings the space also quantizes the embedding tables (one unit per table: bits {8, 4, off}, group
size 32; the uniform 3/4/8-bit baselines then take the tables to 4/8 bits too, where that is a choice), and the
results go to search_quality_embeddings.{json,md}.
With --wide the weight bits are {3, 4, 5, 6, 8, off} and, with --embeddings, the tables' bits {8, 6, 5, 4, off}
with group size {32, 128}: the choices between 4 and 8 bits that the corners of uniform_corners.md call for.
Two objective settings, each a separate study (run together, they share one evaluation per plan and write
one results file each, the latency one with the suffix _latency):
  size     maximize fidelity, minimize size_mb (the packed size, embeddings included)
  latency  maximize fidelity, minimize latency_ms predicted for the device profile `cpu-local` (the table
           latency model calibrated on this machine; batch 1, 128-token prefill)
Arms, per setting and sampler seed (0..--seeds-1):
  search     what autocompress does by default: NSGA-II (population max(8, min(32, trials // 4)), the rule
             `autocompress auto` writes), starting from the uniform baselines, `--trials` trials;
  seeded     the same, plus `sensitivity: {}` (default thresholds and budgets): the study also starts from
             the plans built from per-unit sensitivity (one per threshold, and one per uniform baseline at its
             bytes and at its predicted latency: search/seeding/allocation.py), measured once (its cost reported) and
             copied into each run;
  random xK  Optuna's RandomSampler with no baselines, K x `--trials` trials; random x1 is the first
             `--trials` trials of the same run (a random search's prefix is a random search of that budget);
  uniform    every uniform plan (the baselines: 3/4/8 bits, 12.5/25% structured), evaluated once.
Hypervolume (benchmarks/hypervolume.py): feasible front, fixed reference (fidelity 0.95; size or latency of
the uncompressed model), normalized by the box up to (fidelity 1, 0). A uniform baseline at fidelity >= 0.95
is "dominated" when the search run has another trial at least as good in both objectives and better in one.
"At 8-bit fidelity": the best plan of the search run whose fidelity is >= that of uniform 8-bit, as a ratio
(uniform 8-bit's size or latency over the plan's); for size also on the Linear layers' bytes alone, since
without --embeddings the tables (about half of the packed bytes) are not in the space. Reported beside it, and labelled: the same
with fidelity within 0.005 of uniform 8-bit's.

Every run shares one model load and one evaluation per distinct plan (benchmarks/shared_runner.py):
trial counts, not wall times, are compared.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.hypervolume import hypervolume_curve, is_feasible  # noqa: E402
from benchmarks.common import RESULTS, save_results  # noqa: E402
from benchmarks.shared_runner import shared_runner  # noqa: E402

CONSTRAINT, DOMINATE_FROM, TOLERANCE = 0.95, 0.95, 0.005
SPACE = {"share": "group",
         "quantize": {"bits": [3, 4, 8, None], "group_size": [32, 128], "act_bits": [8, None], "method": ["rtn"]},
         "structured": {"sparsity": [0.0, 0.125, 0.25], "method": ["magnitude"]}}
GPTQ_SPACE = {"share": "group",  # --gptq: quantization only, GPTQ
              "quantize": {"bits": [3, 4, 8, None], "group_size": [32, 128], "act_bits": [8, None],
                           "method": ["gptq"]}}
EMBEDDINGS = {"bits": [8, 4, None], "group_size": [32]}  # --embeddings: the tables as more units (one per table)
WIDE_BITS = [3, 4, 5, 6, 8, None]  # --wide: weight bits of the Linear layers
WIDE_TABLES = {"bits": [8, 6, 5, 4, None], "group_size": [32, 128]}  # --wide with --embeddings
SETTINGS = {"size": "size_mb", "latency": "latency_ms"}
ARMS = {"search": "search", "seeded": "search + sensitivity seeding"}  # the NSGA-II arms


def baselines(work: Path, info) -> int:
    """How many uniform baselines the study starts from (`ConfigSpace.uniform_params` of SPACE)."""
    from autocompress.spaces import ConfigSpace

    return len(ConfigSpace(make_config(work / "units", "size", "search", 0, 1).space, info).uniform_params())


def make_config(run_dir: Path, setting: str, arm: str, seed: int, trials: int):
    from autocompress.config import SearchConfig

    sampler = {"name": "random", "seed": seed, "enqueue_uniform": arm == "uniform"} if arm not in ARMS else \
        {"name": "nsga2", "seed": seed, "population_size": max(8, min(32, trials // 4))}
    return SearchConfig.from_dict({
        "model": {"name": "all-MiniLM-L6-v2"},
        "data": {"calibration": {"source": "builtin", "n": 64, "seed": 1},
                 "evaluation": {"source": "builtin", "n": 128, "seed": 0}},
        "target": {"profile": "cpu-local"}, "space": SPACE,
        "objectives": ["maximize fidelity", f"minimize {SETTINGS[setting]}"],
        "constraints": [f"fidelity >= {CONSTRAINT}"], "budget": {"n_trials": trials}, "sampler": sampler,
        "backend": {"name": "local"}, "tracking": {"uri": "none"}, "run_dir": str(run_dir),
        "study_name": run_dir.name, "sensitivity": {} if arm == "seeded" else None}).resolved(run_dir.parent)


def run_arm(work: Path, setting: str, arm: str, seed: int, trials: int) -> list:
    """Run one study (or reuse its finished run directory) and return its trials."""
    from autocompress.search.driver import run_search
    from autocompress.search.rundir.reader import RunDir

    run_dir = work / f"{setting}-{arm}-s{seed}"
    config = make_config(run_dir, setting, arm, seed, trials)
    cache = work / "sensitivity.json"  # measured by the first seeded run, copied into the others
    if not (run_dir / "summary.json").is_file():
        if arm == "seeded" and cache.is_file():
            run_dir.mkdir(parents=True, exist_ok=True)
            shutil.copy(cache, run_dir / cache.name)
        run_search(config, show_progress=False)
    if arm == "seeded" and not cache.is_file():
        shutil.copy(run_dir / cache.name, cache)
    return RunDir.open(run_dir).trials


def points(trials: list, metric: str) -> list[dict]:
    return [{"trial": t.number, "fidelity": t.user_attrs["metrics"]["fidelity"],
             metric: t.user_attrs["metrics"][metric], "params": t.params,
             "label": t.user_attrs.get("baseline", "sampled"), "plan": t.user_attrs.get("plan_path")}
            for t in trials if is_feasible(t)]


def dominated(base: dict, found: list[dict], metric: str) -> dict | None:
    """A point of `found` (another plan) at least as good as `base` in both objectives and better in one."""
    for p in found:
        if p["params"] == base["params"]:
            continue
        if p["fidelity"] >= base["fidelity"] and p[metric] <= base[metric] and \
                (p["fidelity"] > base["fidelity"] or p[metric] < base[metric]):
            return p
    return None


def linear_mb(plan_path: str, info) -> float:
    """Packed MB of the plan's Linear layers alone (without the embedding tables)."""
    from autocompress.evaluators.size import plan_size
    from autocompress.plan import CompressionPlan

    report = plan_size(CompressionPlan.load(plan_path), info)
    return sum(b for name, b in report.per_layer.items() if name in info.layers) / 1e6


def uniform_8bit(uniform: list[dict]) -> list[dict]:
    """The uniform 8-bit plans among the baselines (one per activation format)."""
    return [p for p in uniform if p["label"].split(" act_bits=")[0] == "quantize bits=8"]


def smallest_as_faithful(u: dict, found: list[dict], metric: str, tolerance: float = 0.0) -> dict:
    """The found plan of least `metric` at least as faithful as `u` (less `tolerance`); `u` itself if none."""
    return min((p for p in found if p["fidelity"] >= u["fidelity"] - tolerance), key=lambda p: p[metric], default=u)


def at_8bit(uniform: list[dict], found: list[dict], metric: str, info, tolerance: float = 0.0) -> dict:
    """Best ratio (uniform 8-bit / plan) among the plans at least as faithful as uniform 8-bit (less
    `tolerance`); ratio 1.0 when only uniform 8-bit itself qualifies. With several uniform 8-bit plans (one per
    activation format), "uniform 8-bit" is the one a user would take for this metric: the smallest / fastest,
    then the most faithful (size: W8 weight-only; latency on cpu-local: W8A8, the int8 kernel)."""
    u8 = min(uniform_8bit(uniform), key=lambda p: (round(p[metric], 6), -p["fidelity"]))
    best = smallest_as_faithful(u8, found, metric, tolerance)
    out = {"uniform_8bit": {"label": u8["label"], "fidelity": u8["fidelity"], metric: u8[metric]},
           "best_trial": best.get("trial"), "best": {"fidelity": best["fidelity"], metric: best[metric]},
           "ratio": u8[metric] / best[metric]}
    if metric == "size_mb":
        out["linear_ratio"] = linear_mb(u8["plan"], info) / linear_mb(best["plan"], info)
    return out


def at_each_8bit(uniform: list[dict], found: list[dict], metric: str) -> dict:
    """For every uniform 8-bit plan (one per activation format), the best ratio (its metric / the plan's) among
    the found plans at least as faithful as it: {label: {"fidelity", "ratio", "best_trial"}}."""
    out = {}
    for u in uniform_8bit(uniform):
        best = smallest_as_faithful(u, found, metric)
        out[u["label"]] = {"fidelity": u["fidelity"], "ratio": u[metric] / best[metric], "best_trial": best.get("trial")}
    return out


def spread(values: list[float]) -> dict:
    return {"values": values, "mean": statistics.fmean(values),
            "sd": statistics.stdev(values) if len(values) > 1 else 0.0, "min": min(values), "max": max(values)}


def fmt(s: dict, digits: int = 4) -> str:
    return f"{s['mean']:.{digits}f} ± {s['sd']:.{digits}f} [{s['min']:.{digits}f}–{s['max']:.{digits}f}]"


def search_arm(trials: list, uniform: list[dict], metric: str, objectives, reference, ideal, info) -> dict:
    """Hypervolume, baselines dominated and the ratios at 8-bit fidelity of one search run."""
    curve = hypervolume_curve(trials, objectives, reference, ideal)
    found = points(trials, metric)
    strong = [u for u in uniform if u["fidelity"] >= DOMINATE_FROM]
    by = {u["label"]: dominated(u, found, metric) for u in strong}
    return {"curve": curve, "hv": curve[-1],
            "baselines_dominated": {k: (f"#{v['trial']} ({v['label']})" if v else None) for k, v in by.items()},
            "at_each_8bit": at_each_8bit(uniform, found, metric),
            "at_8bit": at_8bit(uniform, found, metric, info), "near_8bit": at_8bit(uniform, found, metric, info,
                                                                                 TOLERANCE),
            "front": [{k: p[k] for k in ("trial", "label", "fidelity", metric)} for p in found
                      if not dominated(p, found, metric)]}


def evaluate_setting(work: Path, setting: str, seeds: int, trials: int, factor: int, arms: list[str], info,
                     log) -> dict:
    from autocompress.evaluators.latency import LATENCY_MODELS, Workload
    from autocompress.evaluators.size import plan_size
    from autocompress.hardware import load_profile
    from autocompress.plan import CompressionPlan

    metric = SETTINGS[setting]
    empty = CompressionPlan({})
    dense = plan_size(empty, info).size_mb if metric == "size_mb" else \
        LATENCY_MODELS.get("table")(load_profile("cpu-local")).predict(empty, info, Workload(1, 128)).total_ms
    objectives = ["maximize fidelity", f"minimize {metric}"]
    reference, ideal = {"fidelity": CONSTRAINT, metric: dense}, {"fidelity": 1.0, metric: 0.0}
    uniform_trials = run_arm(work, setting, "uniform", 0, baselines(work, info))
    uniform = points(uniform_trials, metric)
    out = {"dense": dense, "uniform": uniform, "runs": [],
           "uniform_hv": hypervolume_curve(uniform_trials, objectives, reference, ideal)[-1]}
    for seed in range(seeds):
        run = {"seed": seed, "arms": {}}
        for arm in arms:
            run["arms"][arm] = search_arm(run_arm(work, setting, arm, seed, trials), uniform, metric, objectives,
                                          reference, ideal, info)
            log(f"{setting} {arm} s{seed} done")
        rand = run_arm(work, setting, "random", seed, trials * factor)
        log(f"{setting} random x{factor} s{seed} done")
        curve = hypervolume_curve(rand, objectives, reference, ideal)
        run.update({"random_curve": curve, "random_x1_hv": curve[trials - 1], "random_xk_hv": curve[-1]})
        out["runs"].append(run)
    runs = out["runs"]
    summary = {"random_x1": spread([r["random_x1_hv"] for r in runs]),
               "random_xk": spread([r["random_xk_hv"] for r in runs])}
    for arm in arms:
        mine = [r["arms"][arm] for r in runs]
        summary[arm] = {"hv": spread([m["hv"] for m in mine]),
                        "beats_random_xk_in": sum(m["hv"] > r["random_xk_hv"] for m, r in zip(mine, runs)),
                        "ratio_at_8bit": spread([m["at_8bit"]["ratio"] for m in mine]),
                        "ratio_near_8bit": spread([m["near_8bit"]["ratio"] for m in mine])}
        if metric == "size_mb":
            for key in ("at_8bit", "near_8bit"):
                summary[arm][f"linear_ratio_{key}"] = spread([m[key]["linear_ratio"] for m in mine])
    out["summary"] = summary
    return out


def write(result: dict) -> str:
    s = result["setup"]
    f, n = s["random_factor"], s["trials"]
    lines = ["# Search quality vs uniform plans and random search (all-MiniLM-L6-v2)", "",
             f"Space {json.dumps(s['space'])} ({s.get('units', '?')} units); "
             f"constraint fidelity >= {CONSTRAINT}; {n} search trials "
             f"(NSGA-II, population {s['population']}, from the {s['baselines']} uniform baselines; the seeded arm "
             f"also from the plans of the measured sensitivity, default thresholds and budgets); random search x1 and x{f} "
             f"({n} and {n * f} trials, no baselines); sampler seeds {s['seeds']}. Hypervolume: feasible front, "
             f"reference (fidelity {CONSTRAINT}, the uncompressed model's size or latency), normalized to (1, 0). "
             f"{s['evaluations']} distinct plans evaluated in {s['wall_min']:.0f} min (this invocation"
             f"{', settings ' + ' and '.join(s['settings_in_process']) if 'settings_in_process' in s else ''}) on "
             f"{s['machine']}; torch {s['torch']}, optuna {s['optuna']}." + (
                 f" Sensitivity measured once: {s['sensitivity']['evaluations']} evaluations, "
                 f"{s['sensitivity']['seconds']:.0f} s." if s.get("sensitivity") else ""), ""]
    for setting, r in result["settings"].items():
        m, sm = SETTINGS[setting], r["summary"]
        arms = [a for a in ARMS if a in sm]
        lines += [f"## {setting}: maximize fidelity, minimize {m}", "",
                  "| arm | hypervolume (mean ± sd [min–max]) |", "|---|---|"]
        lines += [f"| {ARMS[a]}, {n} trials | {fmt(sm[a]['hv'])} |" for a in arms]
        lines += [f"| random, {n} trials | {fmt(sm['random_x1'])} |",
                  f"| random, {n * f} trials | {fmt(sm['random_xk'])} |",
                  f"| uniform plans only ({s['baselines']}, {len(r['uniform'])} feasible) | {r['uniform_hv']:.4f} |", ""]
        for a in arms:
            x = sm[a]
            u8 = r["runs"][0]["arms"][a]["at_8bit"]["uniform_8bit"].get("label", "quantize bits=8")
            lines += [f"- {ARMS[a]}: beats random at {n * f} trials in {x['beats_random_xk_in']} of "
                      f"{len(r['runs'])} seeds; {m} ratio (uniform 8-bit `{u8}` / best plan) at its fidelity "
                      f"or better: {fmt(x['ratio_at_8bit'], 2)}"
                      + (f" (Linear layers' bytes: {fmt(x['linear_ratio_at_8bit'], 2)})" if m == "size_mb" else "")
                      + f"; within {TOLERANCE} of it: {fmt(x['ratio_near_8bit'], 2)}"
                      + (f" (Linear: {fmt(x['linear_ratio_near_8bit'], 2)})" if m == "size_mb" else "")]
        for label, x in r["runs"][0]["arms"][arms[0]]["at_each_8bit"].items():
            per_arm = "; ".join(f"{ARMS[a]} " + ", ".join(f"{run['arms'][a]['at_each_8bit'][label]['ratio']:.2f}x"
                                                            for run in r["runs"]) for a in arms)
            lines.append(f"- {m} ratio at the fidelity of `{label}` ({x['fidelity']:.5f}) or better, per seed: "
                         + per_arm)
        lines.append("- Uniform baselines at fidelity >= 0.95 and the trial that dominates each, per seed:")
        for u in r["uniform"]:
            if u["fidelity"] >= DOMINATE_FROM:
                for a in arms:
                    by = [run["arms"][a]["baselines_dominated"][u["label"]] for run in r["runs"]]
                    lines.append(f"  - {u['label']} (fidelity {u['fidelity']:.4f}, {m} {u[m]:.2f}), {ARMS[a]}: "
                                 + ", ".join(b or "not dominated" for b in by))
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--random-factor", type=int, default=4)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--work-dir", help="run directories (default: a new temporary one); finished runs "
                                           "found there are reused, so an interrupted benchmark resumes")
    parser.add_argument("--embeddings", action="store_true",
                        help=f"add space.embeddings {EMBEDDINGS} (default --out: search_quality_embeddings)")
    parser.add_argument("--gptq", action="store_true",
                        help=f"the space {GPTQ_SPACE} instead (default --out: search_quality_gptq)")
    parser.add_argument("--wide", action="store_true",
                        help=f"weight bits {WIDE_BITS} and, with --embeddings, tables {WIDE_TABLES} (suffix _wide)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    global SPACE
    SPACE = GPTQ_SPACE if args.gptq else SPACE
    if args.wide:
        SPACE = {**SPACE, "quantize": {**SPACE["quantize"], "bits": WIDE_BITS}}
    if args.embeddings:
        SPACE = {**SPACE, "embeddings": WIDE_TABLES if args.wide else EMBEDDINGS}
    name = "search_quality" + ("_gptq" if args.gptq else "") + ("_embeddings" if args.embeddings else "") + \
        ("_wide" if args.wide else "")
    args.out = args.out or str(RESULTS / name)
    import optuna
    import torch

    from autocompress.loading import load_model

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="qualitybench-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    def log(text: str) -> None:
        print(f"[{(time.perf_counter() - t0) / 60:5.1f} min] {text} ({len(shared.miss_s)} evaluated)", flush=True)

    print(f"run directories under {work}", flush=True)
    with shared_runner() as shared:
        settings = {}
        info = load_model("all-MiniLM-L6-v2").info  # the inventory, for plan sizes (runs found done load nothing)
        for setting in args.settings:
            settings[setting] = evaluate_setting(work, setting, args.seeds, args.trials, args.random_factor,
                                                 args.arms, info, log)
    from autocompress.spaces import ConfigSpace

    units = len(ConfigSpace(make_config(work / "units", "size", "search", 0, 1).space, info).units)
    setup = {"model": "all-MiniLM-L6-v2", "calibration_n": 64, "evaluation_n": 128, "space": SPACE, "units": units,
             "trials": args.trials, "random_factor": args.random_factor, "seeds": list(range(args.seeds)),
             "population": max(8, min(32, args.trials // 4)), "baselines": baselines(work, info),
             "evaluations": len(shared.miss_s), "reused": shared.hits,
             "median_evaluation_s": statistics.median(shared.miss_s) if shared.miss_s else None,
             "wall_min": (time.perf_counter() - t0) / 60, "torch": torch.__version__, "optuna": optuna.__version__,
             "python": platform.python_version(), "machine": f"{os.cpu_count()} CPU cores ({platform.machine()})"}
    if (work / "sensitivity.json").is_file():
        measured = json.loads((work / "sensitivity.json").read_text())
        setup["sensitivity"] = {k: measured[k] for k in ("evaluations", "seconds")}
    if len(settings) == 1:
        save_results(args.out, {"setup": setup, "settings": settings}, write({"setup": setup, "settings": settings}))
        return 0
    for setting, outcome in settings.items():  # one file per setting; the setup (evaluations, minutes) is shared
        result = {"setup": {**setup, "settings_in_process": list(settings)}, "settings": {setting: outcome}}
        save_results(args.out + ("" if setting == "size" else f"_{setting}"), result, write(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
