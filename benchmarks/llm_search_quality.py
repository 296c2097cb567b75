"""Search quality on a real LLM against the peers' method: uniform bits, a sensitivity knapsack, the search.

Run:  AUTOCOMPRESS_CACHE=... PYTHONPATH=. .venv/bin/python benchmarks/llm_search_quality.py [--seeds 3]
          [--trials 50] [--max-length 32] [--threads 2] [--work-dir DIR] [--quick]
Writes benchmarks/results/llm_search_quality.{json,md} (--quick: a smoke run into the work directory).

AutoRound's AutoScheme and ModelOpt's AutoQuantize choose per-layer bits from a one-shot sensitivity score
and a knapsack under an average-bits budget. Here, on SmolLM2-135M-Instruct, at equal packed size:
  uniform    every block Linear and the tied embedding / LM head at 3, 4, 5, 6 or 8 bits;
  knapsack   the project's sensitivity (search/seeding/sensitivity.py: each unit alone at each choice, measured once)
             and its multiple-choice knapsack (search/seeding/allocation.py `knapsack_plans`): the plan of least summed
             drop at no more packed bytes than each uniform plan, and at no more predicted decode time;
  search     NSGA-II from the uniform baselines (what `autocompress search` does by default), `--trials`;
  seeded     the same with `sensitivity: {}` (`auto --seed-sensitivity`): the study also starts from the
             threshold plans, the knapsack's plans and the swap plans (search/seeding/swaps.py), within the same
             trial budget.
Space: per layer group (q/k/v, o, gate/up, down per block: 120 units, plus the table: 121), bits {8, 6, 5, 4, 3, 2,
off}, RTN for every arm, symmetric; 8 bits with one scale per output channel (the int8 CPU kernel's layout, as
`auto` gives a causal LM), 4 bits in groups of 64 or 32 (both run on the int4 CPU kernel), the others in groups
of 64 (the group the int4 CPU kernel takes on SmolLM2's 576-wide inputs; cpu-local has no kernel for 2, 3, 5 or
6 bits). The uniform plans take the first group choice (64). Judged are the uniform plans the peers' comparison
names, 3, 4, 5, 6 and 8 bits (`JUDGED`); uniform 2 bits is in the space so that uniform 3 bits is not its
smallest corner (no plan can dominate the smallest or the fastest plan of a space), and is shown, not judged.
The model is the Q4_1 GGUF dequantized: its weights lie on an asymmetric 4-bit grid of 32-input groups, which
no setting here is.
Objectives of one 3-objective study: mean next-token KL (NextTokenEvaluator, `--n-eval` python-docs passages
of `--max-length` tokens), packed size_mb, and decode ms/token predicted by `cpu-local`'s table latency model
(batch 1, 256 tokens of context; predicted, not timed); each pair (KL, size) and (KL, decode ms) is judged.
Targets, computed per arm and seed: the front dominates every judged uniform plan on each pair (another plan at
least as good in both, better in one); since a uniform plan can be Pareto-optimal in the space (then nothing
dominates it), also: the front dominates every judged uniform plan that any plan evaluated here (all arms and
seeds, the knapsack, the uniform plans) dominates; at each judged budget the arm's least KL is at most the
knapsack's x (1 + MATCH) (size: at no more bytes than the uniform plan; decode: at no more predicted ms than
the latency knapsack's budget, where the uniform plan is faster than float32). Hypervolume per pair against (KL REF_KL, the float32
model's size or decode ms), normalized to the box up to (0, 0). Every study shares one model load and one
evaluation per distinct plan (benchmarks/shared_runner.py). Cost: the sensitivity is 848 evaluations (7 choices
x 121 units, and the reference), each a forward pass with one unit changed; a search trial applies RTN to every
weight (about 3 of its 4 CPU-seconds on one thread); `--max-length` sets how long the passages are.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import RESULTS, env_words, load_average, machine_env, save_results  # noqa: E402
from benchmarks.hypervolume import hypervolume  # noqa: E402
from benchmarks.shared_runner import shared_runner  # noqa: E402

MODEL = "SmolLM2-135M-Instruct"
BITS = [8, 6, 5, 4, 3, 2, None]
GROUPS = {8: [None], 4: [64, 32], **{b: [64] for b in BITS if b not in (8, 4, None)}}  # 8 per channel, else g64
JUDGED = [f"quantize bits={b}" for b in (8, 6, 5, 4, 3)]  # the uniform arms of the comparison
SPACE = {"share": "group", "quantize": {"bits": BITS, "group_size": GROUPS, "method": ["rtn"]},
         "embeddings": {"bits": BITS, "group_size": GROUPS}}
QUICK_TARGETS = [r"re:layers\.[01]\."]  # --quick: the Linears of the first two blocks only (8 units + table)
PAIRS = {"size": "size_mb", "decode": "latency_ms"}
OBJECTIVES = ["minimize kl", "minimize size_mb", "minimize latency_ms"]
REF_KL, MATCH = 1.0, 0.02
ARMS = {"search": "search", "seeded": "search + sensitivity seeding"}


def make_config(run_dir: Path, args, arm: str = "search", seed: int = 0):
    from autocompress.config import SearchConfig

    space = json.loads(json.dumps(SPACE))
    if args.quick:
        space["quantize"]["targets"] = QUICK_TARGETS
    return SearchConfig.from_dict({
        "model": {"name": MODEL},
        "data": {"calibration": {"source": "python-docs", "n": 2, "seed": 1},
                 "evaluation": {"source": "python-docs", "n": args.n_eval, "seed": 0},
                 "max_length": args.max_length, "batch_size": args.n_eval},
        "target": {"profile": "cpu-local", "mode": "decode", "batch": 1, "seq_len": 256},
        "space": space, "objectives": OBJECTIVES, "budget": {"n_trials": args.trials},
        "sampler": {"name": "nsga2", "seed": seed, "population_size": max(8, min(32, args.trials // 4))},
        "backend": {"name": "local", "cpus_per_trial": args.threads}, "tracking": {"uri": "none"},
        "run_dir": str(run_dir), "study_name": run_dir.name,
        "sensitivity": {} if arm == "seeded" else None}).resolved(run_dir.parent)


def point(label: str, key: str, metrics: dict) -> dict:
    return {"label": label, "key": key, **{m: metrics[m] for m in ("kl", "size_mb", "latency_ms")}}


def dominator(base: dict, found: list[dict], x: str) -> dict | None:
    """A point of `found` (another plan) with KL and `x` at most `base`'s, one of them lower."""
    for p in found:
        if p["key"] != base["key"] and p["kl"] <= base["kl"] and p[x] <= base[x] and \
                (p["kl"] < base["kl"] or p[x] < base[x]):
            return p
    return None


def front(found: list[dict], x: str) -> list[dict]:
    """The points of `found` no other dominates on (KL, `x`), by `x`; one per (KL, x) pair."""
    seen, out = set(), []
    for p in sorted(found, key=lambda p: (p[x], p["kl"])):
        if dominator(p, found, x) is None and (p["kl"], p[x]) not in seen:
            seen.add((p["kl"], p[x]))
            out.append(p)
    return out


def least_kl(found: list[dict], x: str, budget: float) -> dict | None:
    """The point of least KL among those with `x` <= `budget` (to 1e-9), None if there is none."""
    return min((p for p in found if p[x] <= budget + 1e-9), key=lambda p: p["kl"], default=None)


def versus(knapsack: list[dict], found: list[dict]) -> list[dict]:
    """For each knapsack plan (its `pair` and `budget`), the arm's least KL within the same budget on that
    pair's axis and the verdict: "beats" (lower), "matches" (within MATCH of it, relative) or "behind"."""
    out = []
    for k in knapsack:
        best = least_kl(found, PAIRS[k["pair"]], k["budget"])
        kl = best["kl"] if best else None
        verdict = "behind" if kl is None or kl > k["kl"] * (1 + MATCH) else "beats" if kl < k["kl"] else "matches"
        out.append({"pair": k["pair"], "baseline": k["baseline"], "budget": k["budget"], "knapsack_kl": k["kl"],
                    "kl": kl, "label": best["label"] if best else None, "verdict": verdict})
    return out


def judge(found: list[dict], uniform: list[dict], knapsack: list[dict], ref: dict) -> dict:
    """Hypervolume per pair, the (judged) `uniform` plans each pair leaves undominated, `versus` the knapsack."""
    out = {"undominated": {}, "hv": {}, "front": {}, "versus_knapsack": versus(knapsack, found)}
    for pair, x in PAIRS.items():
        out["hv"][pair] = hv(found, x, ref)
        out["undominated"][pair] = [u["label"] for u in uniform if dominator(u, found, x) is None]
        out["front"][pair] = [{k: p[k] for k in ("label", "kl", x)} for p in front(found, x)]
    out["targets"] = {f"dominates every judged uniform plan on (KL, {pair})": not out["undominated"][pair] for pair in PAIRS}
    out["targets"]["matches or beats the knapsack at every budget"] = all(
        v["verdict"] != "behind" for v in out["versus_knapsack"])
    return out


def dominatable(judged: list[dict], pool: list[dict]) -> dict[str, list[str]]:
    """Per pair, the labels of the `judged` uniform plans some point of `pool` dominates (the others are
    Pareto-optimal among all the points evaluated: no arm can be asked to dominate them)."""
    return {pair: [u["label"] for u in judged if dominator(u, pool, x)] for pair, x in PAIRS.items()}


def add_attainable_targets(run: dict, beaten: dict[str, list[str]]) -> None:
    """Add to each arm of `run` the target "dominates every uniform plan some evaluated plan dominates" per
    pair: none of `beaten[pair]` is among the plans the arm left undominated."""
    for judged in run["arms"].values():
        for pair in PAIRS:
            judged["targets"][f"dominates every uniform plan some evaluated plan dominates (KL, {pair})"] = \
                not set(judged["undominated"][pair]) & set(beaten[pair])


def hv(found: list[dict], x: str, ref: dict) -> float:
    return hypervolume([(p["kl"], p[x]) for p in found], ["minimize kl", f"minimize {x}"],
                       {"kl": REF_KL, x: ref[x]}, {"kl": 0.0, x: 0.0})


def spread(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
            "values": values}


def evaluate(shared, plan, label: str, latency, info, threads: int) -> dict:
    """The plan's metrics as a trial records them: the worker's (KL...) and the driver's (size, latency)."""
    from autocompress.evaluators.size import plan_size
    from autocompress.threads import torch_threads

    key = plan.to_json(indent=None)
    with torch_threads(threads):
        outcome = shared.run(key)
    if outcome.error:
        raise RuntimeError(f"{label}: {outcome.error}")
    model, workload = latency
    metrics = {**outcome.metrics, "size_mb": plan_size(plan, info).size_mb,
               "latency_ms": model.predict(plan, info, workload).total_ms}
    return point(label, key, metrics)


def measure_arms(work: Path, args, shared, log) -> dict:
    """Sensitivity, uniform and knapsack points (once), then the search arms per seed."""
    from autocompress.plan import CompressionPlan
    from autocompress.search.seeding.allocation import knapsack_plans
    from autocompress.search.workers.backends import make_backend
    from autocompress.search.driver import run_search
    from autocompress.search.plan_targets import plan_latency_model
    from autocompress.search.rundir.reader import RunDir
    from autocompress.search.seeding.sensitivity import FILE, load_or_measure
    from autocompress.spaces import ConfigSpace

    config = make_config(work / "sensitivity", args)
    backend = make_backend(config)
    try:
        info = backend.start()
        space = ConfigSpace(config.space, info)
        step = max(1, len(space.units))
        sens, _ = load_or_measure(config, backend, info, space, work, progress=lambda done, total: (
            log(f"sensitivity {done}/{total}") if done % step == 0 or done == total else None))
    finally:
        backend.close()
    latency = plan_latency_model(config)
    dense = evaluate(shared, CompressionPlan({}), "float32", latency, info, args.threads)
    uniform = [evaluate(shared, plan, label, latency, info, args.threads)
               for label, plan in space.uniform_plans().items()]
    knapsack, by_baseline = [], {u["label"]: u for u in uniform}
    for k in knapsack_plans(space, sens, info, latency):
        pair = {"size": "size", "latency": "decode"}[k.cost]
        if k.baseline not in JUDGED:
            continue
        if pair == "decode" and by_baseline[k.baseline]["latency_ms"] >= dense["latency_ms"]:
            continue  # the uniform plan is no faster than float32: no decode budget to spend
        p = evaluate(shared, k.plan, k.label, latency, info, args.threads)
        knapsack.append({**p, "pair": pair, "baseline": k.baseline, "predicted_drop": k.predicted_drop,
                         "budget": by_baseline[k.baseline][PAIRS[pair]]})
    log(f"uniform and knapsack plans evaluated ({len(uniform)} + {len(knapsack)})")
    judged = [u for u in uniform if u["label"] in JUDGED]
    runs, pool, reused_runs = [], [dense, *uniform, *knapsack], 0
    for seed in range(args.seeds):
        run = {"seed": seed, "arms": {}}
        for arm in args.arms:
            run_dir = work / f"{arm}-s{seed}"
            reused_runs += (run_dir / "summary.json").is_file()
            if not (run_dir / "summary.json").is_file():
                if arm == "seeded":
                    run_dir.mkdir(parents=True, exist_ok=True)
                    shutil.copy(work / FILE, run_dir / FILE)
                run_search(make_config(run_dir, args, arm, seed), show_progress=False)
            found = [point(t.user_attrs.get("baseline", "sampled"), json.dumps(t.params, sort_keys=True, default=str),
                           t.user_attrs["metrics"]) for t in RunDir.open(run_dir).trials if t.state.name == "COMPLETE"]
            pool += found
            run["arms"][arm] = {"trials": len(found), **judge(found, judged, knapsack, dense)}
            log(f"{arm} seed {seed}: {len(found)} trials")
        runs.append(run)
    beaten = dominatable(judged, pool)
    for run in runs:
        add_attainable_targets(run, beaten)
    return {"dominatable": beaten, "pool": len(pool), "units": len(space.units), "dense": dense,
            "reused_runs": reused_runs,
            "uniform": uniform, "knapsack": knapsack, "runs": runs,
            "sensitivity": {"evaluations": sens.evaluations, "seconds": sens.seconds},
            "hv": {"uniform": {pair: hv(uniform, x, dense) for pair, x in PAIRS.items()},
                   "knapsack": {pair: hv([k for k in knapsack if k["pair"] == pair], x, dense)
                                for pair, x in PAIRS.items()}}}


def summarize(result: dict) -> dict:
    """Per arm: hypervolume per pair over seeds, and in how many seeds each target is met."""
    runs, out = result["runs"], {}
    for arm in result["setup"]["arms"]:
        mine = [r["arms"][arm] for r in runs]
        out[arm] = {"hv": {pair: spread([m["hv"][pair] for m in mine]) for pair in PAIRS},
                    "targets": {t: sum(m["targets"][t] for m in mine) for t in mine[0]["targets"]}}
    return out


def markdown(result: dict) -> str:
    s, env, summary = result["setup"], result["env"], result["summary"]
    lines = [f"# Search quality on {MODEL} against uniform bits and the sensitivity knapsack "
             "(benchmarks/llm_search_quality.py)", "",
             f"{env_words(env)} {s['threads']} torch threads per trial; {s['wall_min']:.1f} min and "
             f"{s['evaluations']} plans evaluated (median {s['median_evaluation_s']:.2f} s) in this invocation"
             + (f", which reused {s['reused_runs']} finished searches from its work directory" if s.get("reused_runs")
                else "")
             + f"; sensitivity {result['sensitivity']['evaluations']} evaluations in "
             f"{result['sensitivity']['seconds']:.0f} s.", "",
             f"Space: {s['units']} units (per layer group, and the tied embedding / LM head), bits {{8, 6, 5, 4, 3, "
             f"2, off}}, RTN, symmetric, 8 bits per channel, 4 bits in groups of 64 or 32, the others in groups of "
             f"64; the uniform plans in groups of 64. Judged: uniform 3, 4, 5, 6 and 8 bits (uniform 2 bits is "
             f"the space's smallest corner, shown, not judged). The model's weights lie on the GGUF's Q4_1 grid "
             f"(4-bit, asymmetric, groups of 32): no setting here is that grid. KL on {s['n_eval']} python-docs passages "
             f"of {s['max_length']} tokens; decode ms/token predicted on cpu-local (batch 1, 256 tokens of "
             f"context). {s['trials']} trials per search, NSGA-II seeds {s['seeds']}; hypervolume against (KL "
             f"{REF_KL}, float32: {result['dense']['size_mb']:.1f} MB, {result['dense']['latency_ms']:.2f} ms).",
             "", "| plan | KL | MB | decode ms |", "|---|---:|---:|---:|"]
    for p in [result["dense"], *result["uniform"], *result["knapsack"]]:
        lines.append(f"| {p['label']} | {p['kl']:.4f} | {p['size_mb']:.1f} | {p['latency_ms']:.2f} |")
    lines += ["", "| arm | hypervolume (KL, size) | hypervolume (KL, decode) |", "|---|---|---|"]
    for arm in ("uniform", "knapsack"):
        lines.append(f"| {arm} | {result['hv'][arm]['size']:.4f} | {result['hv'][arm]['decode']:.4f} |")
    for arm, x in summary.items():
        lines.append(f"| {ARMS[arm]} | " + " | ".join(f"{x['hv'][p]['mean']:.4f} ± {x['hv'][p]['sd']:.4f}"
                                                      for p in PAIRS) + " |")
    n = len(result["runs"])
    lines += ["", "## Verdicts (computed)", ""]
    for arm, x in summary.items():
        for target, met in x["targets"].items():
            lines.append(f"- {ARMS[arm]}, {target}: met in {met} of {n} seeds")
    lines += ["", f"Per budget: the arm's least KL within the knapsack plan's budget (matches: within {MATCH:.0%}).",
              "", "| budget | knapsack KL | " + " | ".join(f"{ARMS[a]} (per seed)" for a in summary) + " |",
              "|---|---:|" + "---|" * len(summary)]
    for i, k in enumerate(result["knapsack"]):
        cells = [", ".join(f"{v['kl']:.4f} {v['verdict']}" if v["kl"] is not None else "none behind"
                           for v in (r["arms"][a]["versus_knapsack"][i] for r in result["runs"])) for a in summary]
        unit = "MB" if k["pair"] == "size" else "ms"
        lines.append(f"| {k['pair']} <= {k['budget']:.2f} {unit} ({k['baseline']}) | {k['kl']:.4f} | "
                     + " | ".join(cells) + " |")
    lines += ["", "Uniform plans no trial dominates, per seed:", ""]
    for arm in summary:
        for pair in PAIRS:
            left = [r["arms"][arm]["undominated"][pair] for r in result["runs"]]
            lines.append(f"- {ARMS[arm]}, (KL, {pair}): " + "; ".join(", ".join(u) or "none" for u in left))
    lines += ["", f"Judged uniform plans that some plan evaluated here ({result['pool']} points: every arm and seed, "
              "the knapsack, the uniform plans) dominates; the others are Pareto-optimal among all of them, "
              "which no arm can dominate:", ""]
    for pair, x in PAIRS.items():
        some = result["dominatable"][pair]
        rest = [u for u in JUDGED if u not in some]
        lines.append(f"- (KL, {pair}): dominated: {', '.join(some) or 'none'}; Pareto-optimal: {', '.join(rest) or 'none'}")
    uniform_kl = {p["label"]: p["kl"] for p in result["uniform"]}
    optimal = [f"{k['baseline']} ({k['pair']})" for k in result["knapsack"]
               if k["baseline"] in uniform_kl and k["kl"] >= uniform_kl[k["baseline"]] * (1 - MATCH)]
    lines += ["", "Uniform plans the knapsack does not beat at their own budget either (the measured per-unit "
              "sensitivity finds no better plan there): "
              + (", ".join(optimal) or "none")]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--n-eval", type=int, default=8, help="python-docs passages the KL is measured on")
    parser.add_argument("--max-length", type=int, default=32, help="tokens per evaluation passage")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per trial")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--work-dir", help="run directories (default: a new temporary one); finished runs and the "
                                           "sensitivity found there are reused")
    parser.add_argument("--quick", action="store_true", help="smoke run: 8 trials, 1 seed, the first two "
                                                             "blocks' Linears only; results into the work dir")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.quick:
        args.trials, args.seeds = min(args.trials, 8), 1
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="llmqualitybench-"))
    work.mkdir(parents=True, exist_ok=True)
    out = args.out or (str(work / "llm_search_quality_quick") if args.quick else str(RESULTS / "llm_search_quality"))
    env, t0 = machine_env(), time.perf_counter()

    def log(text: str) -> None:
        print(f"[{(time.perf_counter() - t0) / 60:5.1f} min] {text}", flush=True)

    log(f"run directories under {work}")
    with shared_runner() as shared:
        result = measure_arms(work, args, shared, log)
    result["setup"] = {"model": MODEL, "space": SPACE, "quick": args.quick, "units": result.pop("units"),
                       "trials": args.trials, "seeds": list(range(args.seeds)), "arms": args.arms,
                       "n_eval": args.n_eval, "max_length": args.max_length, "threads": args.threads,
                       "evaluations": len(shared.miss_s), "reused": shared.hits,
                       "median_evaluation_s": statistics.median(shared.miss_s) if shared.miss_s else 0.0,
                       "wall_min": (time.perf_counter() - t0) / 60, "reused_runs": result.pop("reused_runs")}
    result["env"] = {**env, "load_after": load_average()}
    result["summary"] = summarize(result)
    save_results(out, result, markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
