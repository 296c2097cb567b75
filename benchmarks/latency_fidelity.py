"""Do predicted latencies agree with measured ones? Random plans, predicted vs timed with real kernels.

Run:  .venv/bin/python benchmarks/latency_fidelity.py [--n-plans 30] [--seed 0] [--no-calibrate --profile P]
      [--device cuda --profile h100-sxm] [--model DIR --mode decode --seq-len 512 --tag llama1b-decode]
Writes benchmarks/results/latency_fidelity_<device>_seed<seed>[_<tag>].json and .md. On a GPU the spec-sheet
row is the roofline of `--profile` (datasheet figures) instead of this CPU's.

By default the machine is calibrated (`autocompress.evaluators.latency.calibrate`) right before the plans are
measured, because a profile describes the machine as it is when measured (this VM's speed drifts by 20-30%
over minutes); `--no-calibrate --profile cpu-local` uses a stored profile instead.

For N random plans from a space over the model (W8A8 or not per layer group, 0/25/50% of heads and FFN
neurons removed per block, FFN low rank or not; a space whose formats have real kernels on this CPU), each
plan is priced by the calibrated `table` and `roofline` models of `--profile`, and by an uncalibrated
spec-sheet roofline of this CPU (cores x clock x FLOPs per cycle from /proc/cpuinfo, DDR4-3200 dual channel,
no launch overhead), then built with the real kernels and timed (warm-up, median of repeats), in `--rounds` interleaved rounds
over all plans, keeping each plan's fastest median (the protocol calibration uses too).
Reported per predictor: share within +-10% and +-25% of measured, median absolute error, Spearman rank
correlation. "+ dense anchor" rows scale a calibrated predictor by one factor: the dense model's time measured
in the same rounds over its predicted time (the dense model is not one of the test plans).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
from pathlib import Path

import optuna
import torch

from autocompress.config import SpaceSection
from autocompress.evaluators.latency import LATENCY_MODELS, Workload
from autocompress.evaluators.latency.kernels import build_real_model
from autocompress.evaluators.latency.measured import measure_model
from autocompress.hardware import DeviceProfile, load_profile
from autocompress.loading import load_model
from autocompress.plan import CompressionPlan
from autocompress.spaces import ConfigSpace

RESULTS = Path(__file__).parent / "results"
SPACE = {
    "share": "group",
    "quantize": {"bits": [8, None], "act_bits": [8, None]},
    "structured": {"sparsity": [0.0, 0.25, 0.5], "method": ["magnitude"]},
    "lowrank": {"rank": [None, 0.25, 0.5], "method": ["svd"],
                "targets": ["re:(intermediate|output).dense$", "re:mlp.(up|down)_proj$"],
                "ignore": ["re:attention"]},
}


def spec_sheet(args) -> DeviceProfile:
    """The uncalibrated spec-sheet profile: `--profile` on a GPU (the shipped profiles are datasheet figures),
    this CPU's own figures on the CPU."""
    return load_profile(args.profile) if args.device.startswith("cuda") else spec_profile_of_this_cpu()


def spec_profile_of_this_cpu() -> DeviceProfile:
    """A spec-sheet roofline for this machine: nothing measured, only what the CPU says it is."""
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
        peak_tflops={"fp32": fp32, "int8": 4 * fp32}, bandwidth_gbs=51.2, cache_mb=0, overhead_us=0.0,
        kernels={"w8a8": {"fast": True, "compute": "int8"}})


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="all-MiniLM-L6-v2")
    parser.add_argument("--profile", default="cpu-local")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--n-plans", type=int, default=30)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--mode", choices=("prefill", "decode"), default="prefill",
                        help="decode: one new token after seq_len - 1 cached ones (causal LMs)")
    parser.add_argument("--tag", default="", help="appended to the results file stem (another model or mode)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved measurement rounds (fastest kept)")
    parser.add_argument("--no-calibrate", dest="calibrate", action="store_false",
                        help="use --profile as it is instead of calibrating right before measuring")
    args = parser.parse_args()

    loaded = load_model(args.model)
    info, workload = loaded.info, Workload(args.batch, args.seq_len, args.mode)
    if args.calibrate:  # calibrate now: this VM's speed drifts by 20-30% over minutes
        from autocompress.evaluators.latency.calibrate import calibrate

        print("calibrating this machine ...", flush=True)
        profile = calibrate(loaded.model, info, args.device, workload, model_name=args.model)
    else:
        profile = load_profile(args.profile)
    spec = spec_sheet(args)
    predictors = {"table (calibrated)": LATENCY_MODELS.get("table")(profile),
                  "roofline (calibrated)": LATENCY_MODELS.get("roofline")(profile),
                  "roofline (spec sheet)": LATENCY_MODELS.get("roofline")(spec)}
    space = ConfigSpace(SpaceSection.model_validate(SPACE), info)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=args.seed))
    plans = [space.sample(study.ask()) for _ in range(args.n_plans)]
    models = [build_real_model(loaded.model, plan, args.device) for plan in plans]
    dense_model = build_real_model(loaded.model, CompressionPlan({}), args.device)
    dense_ms = float("inf")
    # interleaved rounds, fastest median per plan: a drift of the machine's speed during the run (seen here:
    # 30% within a minute on this VM) hits every plan alike instead of the plans measured during it
    measured = [float("inf")] * len(plans)
    for round_ in range(args.rounds):
        dense_ms = min(dense_ms, measure_model(dense_model, workload, args.device))
        for i, model in enumerate(models):
            measured[i] = min(measured[i], measure_model(model, workload, args.device))
        print(f"round {round_ + 1}/{args.rounds} measured", flush=True)
    # the dense model, timed in the same rounds, anchors the absolute scale (it is not one of the test plans)
    anchors = {name: dense_ms / model.predict(CompressionPlan({}), info, workload).total_ms
               for name, model in predictors.items() if "calibrated" in name}
    rows = []
    for i, plan in enumerate(plans):
        row = {"plan": plan.summary(), "measured_ms": measured[i]}
        row.update({name: model.predict(plan, info, workload).total_ms for name, model in predictors.items()})
        row.update({f"{name} + dense anchor": row[name] * anchors[name] for name in anchors})
        rows.append(row)
        print(f"plan {i:2d}: measured {row['measured_ms']:7.2f} ms  " + "  ".join(
            f"{n.split()[0]}{'*' if 'spec' in n else ''} {row[n]:7.2f}" for n in predictors) + f"  [{row['plan']}]",
            flush=True)
    measured = [r["measured_ms"] for r in rows]
    summary = {name: agreement([r[name] for r in rows], measured) for name in rows[0] if name not in ("plan", "measured_ms")}
    env = dict(dense_ms=dense_ms, anchors=anchors, model=args.model, profile="calibrated in this run" if args.calibrate else args.profile,
               device=args.device, batch=args.batch, seq_len=args.seq_len, mode=args.mode,
               n_plans=args.n_plans, rounds=args.rounds, torch=torch.__version__, threads=torch.get_num_threads(),
               machine=platform.processor() or platform.machine(), spec=spec.description,
               gpu=torch.cuda.get_device_name() if args.device.startswith("cuda") else None)
    RESULTS.mkdir(exist_ok=True)
    stem = f"latency_fidelity_{args.device}_seed{args.seed}" + (f"_{args.tag}" if args.tag else "")
    (RESULTS / f"{stem}.json").write_text(json.dumps({"env": env, "summary": summary, "rows": rows}, indent=2) + "\n")
    lines = [f"{args.model}, {args.mode}, batch {args.batch}, {args.seq_len} tokens, {args.n_plans} random plans, "
             + (f"on {env['gpu']}, " if env["gpu"] else "") +
             f"torch {env['torch']}, {env['threads']} threads; measured range {min(measured):.1f}-{max(measured):.1f} ms.",
             "", "| predictor | within +-10% | within +-25% | median abs error | Spearman |", "|---|---|---|---|---|"]
    for name, s in summary.items():
        lines.append(f"| {name} | {s['within_10pct']:.0%} | {s['within_25pct']:.0%} | "
                     f"{s['median_abs_error_pct']:.1f}% | {s['spearman']:.3f} |")
    (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
