"""Do predicted latencies agree with measured ones? Random plans, predicted vs timed with real kernels.

Run:  .venv/bin/python benchmarks/latency_fidelity.py [--n-plans 30] [--seed 0] [--threads N] [--no-calibrate --profile P]
      [--device cuda --profile h100-sxm] [--model DIR|FILE.gguf --mode decode --seq-len 128 --tag smollm2-decode]
Writes benchmarks/results/latency_fidelity_<device>_seed<seed>[_<tag>].json and .md. On a GPU the spec-sheet
row is the roofline of `--profile` (datasheet figures) instead of this CPU's.

By default the machine is calibrated (`autocompress.evaluators.latency.calibrate`, at the run's workload) right
before the plans are measured; `--no-calibrate --profile cpu-local` uses a stored profile instead. `--model`
takes what `autocompress.loading.load_model` takes, or a .gguf file (loaded by transformers, dequantized to
float32, as a causal LM).

For N random plans from a space over the model (per layer group: 4 or 8-bit weights or none, one scale per
output channel or groups of 32 / 128 inputs, int8 activations or not; 0/25/50% of heads (where the attention
allows it) and FFN neurons removed per block; FFN low rank or not), each plan is priced by the calibrated
`table` and `roofline` models of `--profile` and by an uncalibrated spec-sheet roofline of this CPU (cores x
clock x FLOPs per cycle from /proc/cpuinfo, DDR4-3200 dual channel, no launch overhead), then built with the
real kernels the packed export runs (`build_real_model`) and timed.

Measurement that survives a busy machine: each plan is timed INTERLEAVED with a dense anchor model in the same
process (anchor call, plan call, anchor call, ... `--pairs` pairs per round, `--rounds` rounds over all plans,
each plan's model built anew per round so that only one plan model is in memory at a time). Another process
slowing the machine slows both calls of a pair alike, so the plan's time RELATIVE to the anchor's (the median
of the pairs' ratios) is what a predictor is judged on first: its predicted plan / predicted anchor against
the measured ratio ("ratio" columns). The absolute errors (predicted ms against the plan's median measured ms)
are reported too; they carry whatever the machine's speed was during the run. A third reading, "anchored",
adds the anchor's unexplained time (its measured minus its predicted ms) to each plan's prediction before
taking the ratio: on a loaded machine the extra time per call was found to be mostly the same for every plan
(time no compression removes: scheduling, Python dispatch), which the plain ratio wrongly scales down with the
plan. `--rescore FILE.json ...` rewrites results files' summaries from their rows.
Reported per predictor: share within +-10% and +-25%, median absolute error, Spearman rank correlation.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path
from types import SimpleNamespace

import optuna
import torch

from autocompress.config import SpaceSection
from autocompress.evaluators.latency import LATENCY_MODELS, Workload
from autocompress.evaluators.latency.kernels import available_formats, build_real_model
from autocompress.evaluators.latency.measured import model_step
from autocompress.hardware import DeviceProfile, load_profile
from autocompress.plan import CompressionPlan
from autocompress.spaces import ConfigSpace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import env_words, load_average, machine_env, save_results  # noqa: E402

SPACE = {
    "share": "group",
    "quantize": {"bits": [4, 8, None], "group_size": [None, 32, 128], "act_bits": [8, None]},
    "structured": {"sparsity": [0.0, 0.25, 0.5], "method": ["magnitude"]},
    "lowrank": {"rank": [None, 0.25, 0.5], "method": ["svd"],
                "targets": ["re:(intermediate|output).dense$", "re:mlp.(up|down)_proj$"],
                "ignore": ["re:attention"]},
}


def load(spec: str):
    """(model, info) of `spec`: a .gguf file through transformers (a causal LM in float32), else `load_model`."""
    if spec.endswith(".gguf"):
        from transformers import AutoModelForCausalLM

        from autocompress.models import inspect_model

        path = Path(spec)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
        return SimpleNamespace(model=model.eval(), info=inspect_model(model, task="causal-lm"))
    from autocompress.loading import load_model

    return load_model(spec)


def spec_sheet(args) -> DeviceProfile:
    """The uncalibrated spec-sheet profile: `--profile` on a GPU (the shipped profiles are datasheet figures),
    this CPU's own figures on the CPU."""
    return load_profile(args.profile) if args.device.startswith("cuda") else spec_profile_of_this_cpu()


def spec_profile_of_this_cpu() -> DeviceProfile:
    """A spec-sheet roofline for this machine: nothing measured, only what the CPU says it is (the export's
    CPU kernels that torch has here, with the layouts they take)."""
    from autocompress.export.kernels import CPU_KERNELS

    mhz = 2000.0
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("cpu MHz"):
                mhz = float(line.split(":")[1])
                break
    except OSError:
        pass
    cores = os.cpu_count() or 1
    fp32 = cores * mhz * 1e6 * 32 / 1e12  # AVX2: 2 FMA units x 8 fp32 lanes x 2 FLOPs per cycle
    return DeviceProfile(
        name="spec-this-cpu", kind="cpu", dtype="fp32",
        description=f"{cores} cores x {mhz:.0f} MHz x 32 FLOP/cycle; DDR4-3200 x 2 channels; no overhead",
        sources=["/proc/cpuinfo; AVX2 FMA throughput; DDR4-3200 = 25.6 GB/s per channel"],
        peak_tflops={"fp32": fp32, "bf16": fp32, "int8": 4 * fp32}, bandwidth_gbs=51.2, cache_mb=0, overhead_us=0.0,
        kernels={f: k for f, k in CPU_KERNELS.items() if f in available_formats("cpu")})


def ranks(values: list[float]) -> list[float]:
    order = sorted(range(len(values)), key=values.__getitem__)
    out = [0.0] * len(values)
    for rank, i in enumerate(order):
        out[i] = float(rank)
    return out


def spearman(a: list[float], b: list[float]) -> float:
    ra, rb = ranks(a), ranks(b)
    ma, mb = statistics.fmean(ra), statistics.fmean(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    return cov / ((sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb)) ** 0.5 or 1.0)


def agreement(predicted: list[float], measured: list[float]) -> dict[str, float]:
    errors = [abs(p - m) / m for p, m in zip(predicted, measured)]
    return {"within_10pct": sum(e <= 0.10 for e in errors) / len(errors),
            "within_25pct": sum(e <= 0.25 for e in errors) / len(errors),
            "median_abs_error_pct": 100 * statistics.median(errors), "spearman": spearman(predicted, measured)}


def time_pairs(anchor, plan_step, pairs: int, warmup: int = 2) -> tuple[list[float], list[float]]:
    """(anchor ms, plan ms) of `pairs` alternating calls, after `warmup` pairs."""
    a, p = [], []
    with torch.inference_mode():
        for i in range(warmup + pairs):
            ta, tp = anchor(), plan_step()
            if i >= warmup:
                a.append(ta)
                p.append(tp)
    return a, p


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="all-MiniLM-L6-v2", help="a model load_model takes, or a .gguf file")
    parser.add_argument("--profile", default="cpu-local")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--n-plans", type=int, default=30)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--mode", choices=("prefill", "decode"), default="prefill",
                        help="decode: one new token after seq_len - 1 cached ones (causal LMs)")
    parser.add_argument("--tag", default="", help="appended to the results file stem (another model or mode)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=2, help="rounds over all plans (each plan built anew)")
    parser.add_argument("--pairs", type=int, default=15, help="anchor/plan call pairs per plan and round")
    parser.add_argument("--calibrate-passes", type=int, default=3, help="sweeps of the calibration's GEMM table")
    parser.add_argument("--no-calibrate", dest="calibrate", action="store_false",
                        help="use --profile as it is instead of calibrating right before measuring")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads for the calibration and the timing (default: torch's own count); "
                             "one thread is what a search worker with backend.cpus_per_trial 1 runs with")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    env = machine_env(args.device)
    loaded = load(args.model)
    info, workload = loaded.info, Workload(args.batch, args.seq_len, args.mode)
    if args.calibrate:  # a profile describes the machine as it is when measured
        from autocompress.evaluators.latency.calibrate import calibrate

        print("calibrating this machine ...", flush=True)
        profile = calibrate(loaded.model, info, args.device, workload, model_name=args.model,
                            passes=args.calibrate_passes)
    else:
        profile = load_profile(args.profile)
    overheads = profile.calibration.call_overheads(args.mode) if profile.calibration else {}
    print(f"in-model cost per call ({args.mode}): {overheads}", flush=True)
    spec = spec_sheet(args)
    predictors = {"table (calibrated)": LATENCY_MODELS.get("table")(profile),
                  "roofline (calibrated)": LATENCY_MODELS.get("roofline")(profile),
                  "roofline (spec sheet)": LATENCY_MODELS.get("roofline")(spec)}
    space = ConfigSpace(SpaceSection.model_validate(SPACE), info)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=args.seed))
    plans = [space.sample(study.ask()) for _ in range(args.n_plans)]
    anchor_model = build_real_model(loaded.model, CompressionPlan({}), args.device)
    anchor = model_step(anchor_model, workload, args.device)
    anchor_ms: list[list[float]] = [[] for _ in plans]
    plan_ms: list[list[float]] = [[] for _ in plans]
    for round_ in range(args.rounds):
        for i, plan in enumerate(plans):
            model = build_real_model(loaded.model, plan, args.device)
            a, p = time_pairs(anchor, model_step(model, workload, args.device), args.pairs)
            anchor_ms[i] += a
            plan_ms[i] += p
            del model
        print(f"round {round_ + 1}/{args.rounds} measured", flush=True)

    pred_anchor = {name: m.predict(CompressionPlan({}), info, workload).total_ms for name, m in predictors.items()}
    rows = []
    for i, plan in enumerate(plans):
        ratio = statistics.median(p / a for p, a in zip(plan_ms[i], anchor_ms[i]))
        row = {"plan": plan.summary(), "measured_ms": statistics.median(plan_ms[i]),
               "anchor_ms": statistics.median(anchor_ms[i]), "measured_ratio": ratio}
        for name, m in predictors.items():
            row[name] = m.predict(plan, info, workload).total_ms
            row[f"{name} ratio"] = row[name] / pred_anchor[name]
        rows.append(row)
        print(f"plan {i:2d}: measured {row['measured_ms']:8.3f} ms, x{ratio:.3f} of the anchor  " + "  ".join(
            f"{n.split()[0]}{'*' if 'spec' in n else ''} x{row[f'{n} ratio']:.3f}" for n in predictors)
            + f"  [{row['plan']}]", flush=True)
    env["load_after"] = load_average()
    env.update({"model": args.model, "mode": args.mode, "batch": args.batch, "seq_len": args.seq_len,
                "n_plans": args.n_plans, "rounds": args.rounds, "pairs": args.pairs, "seed": args.seed,
                "profile": "calibrated in this run" if args.calibrate else args.profile,
                "spec": spec.description, "predicted_anchor_ms": pred_anchor, "call_overhead_ms": overheads})
    stem = f"latency_fidelity_{args.device}_seed{args.seed}" + (f"_{args.tag}" if args.tag else "")
    save_results(stem, *report(env, rows))
    return 0


def report(env: dict, rows: list[dict]) -> tuple[dict, str]:
    """(results JSON, markdown) of a run's rows. Three judgements per predictor: relative to the anchor
    (predicted plan / predicted anchor against the measured ratio), absolute, and anchored: the predicted plan
    plus the anchor's unexplained time (measured anchor - predicted anchor, per plan), over the measured anchor,
    against the measured ratio (the median of the pairs' plan / anchor). The anchored one models what a busy machine adds as time that no compression removes
    (scheduling, Python dispatch), measured on the dense model timed alongside; the relative one models it as
    a slowdown of everything alike."""
    pred_anchor = env["predicted_anchor_ms"]
    names = list(pred_anchor)
    ratio_summary = {name: agreement([r[f"{name} ratio"] for r in rows], [r["measured_ratio"] for r in rows])
                     for name in names}
    abs_summary = {name: agreement([r[name] for r in rows], [r["measured_ms"] for r in rows]) for name in names}
    anchored = {name: agreement([(r[name] + r["anchor_ms"] - pred_anchor[name]) / r["anchor_ms"] for r in rows],
                                [r["measured_ratio"] for r in rows]) for name in names if "spec" not in name}
    anchors = [r["anchor_ms"] for r in rows]
    result = {"env": env, "ratio": ratio_summary, "absolute": abs_summary, "anchored": anchored, "rows": rows}
    header = "| predictor | within +-10% | within +-25% | median abs error | Spearman |\n|---|---|---|---|---|"

    def table(summary: dict) -> list[str]:
        return [header] + [f"| {n} | {s['within_10pct']:.0%} | {s['within_25pct']:.0%} | "
                           f"{s['median_abs_error_pct']:.1f}% | {s['spearman']:.3f} |" for n, s in summary.items()]

    lines = [f"{env['model']}, {env['mode']}, batch {env['batch']}, {env['seq_len']} tokens, {env['n_plans']} random "
             f"plans, each timed in {env['rounds']} x {env['pairs']} calls alternating with the dense model (the "
             "anchor); " + env_words(env), "",
             f"Dense anchor: measured {min(anchors):.3f}-{max(anchors):.3f} ms over the plans (median per plan); "
             + ", ".join(f"{n} predicts {v:.3f} ms" for n, v in pred_anchor.items()) + ".", "",
             "Relative to the anchor (predicted plan / predicted anchor against measured plan / measured anchor):", ""]
    lines += table(ratio_summary)
    lines += ["", "Anchored ((predicted plan + the anchor's measured minus predicted ms) / measured anchor, against "
              "the measured ratio: a busy machine's extra time counted as time no compression removes):", ""]
    lines += table(anchored)
    lines += ["", "Absolute (predicted ms against the plan's median measured ms):", ""]
    lines += table(abs_summary)
    return result, "\n".join(lines) + "\n"


def rescore(path: str) -> None:
    """Rewrite a results file's summaries and markdown from its rows (after the judgements change)."""
    import json

    data = json.loads(Path(path).read_text())
    save_results(Path(path).with_suffix(""), *report(data["env"], data["rows"]))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--rescore"]:
        for results_file in sys.argv[2:]:
            rescore(results_file)
        raise SystemExit(0)
    raise SystemExit(main())
