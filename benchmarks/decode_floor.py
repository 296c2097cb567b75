"""How fast can a decode step get with torch's CPU kernels? The per-token GEMV floor of SmolLM2-135M per format.

Run:  .venv/bin/python benchmarks/decode_floor.py [--threads 2] [--copies 30] [--repeats 50] [--stem S]
Writes benchmarks/results/decode_floor_<threads>t.json and .md (or --stem).

One decode step of SmolLM2-135M-Instruct (batch 1) multiplies one token's activations by every weight once:
per block q/o 576x576, k/v 192x576, gate/up 1536x576, down 576x1536 (30 blocks), then the 49,152x576 LM head.
For each shape and format this times the kernel the packed export runs (`autocompress.export.kernels`):
float32 `x @ W.T`; `torch._weight_int8pack_mm` (int8 weight-only, bf16 activations);
`aten._weight_int4pack_mm_for_cpu` (int4 groups of 32 and 64, bf16 activations); and torch's dynamic
int8 Linear (W8A8, int8 activations quantized per call). Weights are read from memory as in a real step, not
from cache: each shape is timed over `--copies` distinct weight tensors in turn (the LM head, 113 MB in float32,
is far larger than any cache by itself). Per format, the sum over one step's 211 block Linears plus the head
is the step's GEMV time: a floor under the step, which also pays attention, norms, rotary embedding and
Python dispatch. The table reports the floor per format and the best decode speed-up over float32 the format
allows, both without that other work (GEMV time alone) and with the float32 step's other time (measured by
`decode_speed.py`, passed in with --rest-ms) added unchanged to both.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import load_average, machine_env, save_results  # noqa: E402

HIDDEN, FFN, KV, VOCAB, BLOCKS = 576, 1536, 192, 49152, 30
# (out, in) -> how many of them one decode step runs
SHAPES = {(HIDDEN, HIDDEN): 2 * BLOCKS, (KV, HIDDEN): 2 * BLOCKS, (FFN, HIDDEN): 2 * BLOCKS,
          (HIDDEN, FFN): BLOCKS, (VOCAB, HIDDEN): 1}
FORMATS = ("fp32", "int8 weight-only", "int4 g32", "int4 g64", "W8A8 dynamic")


def kernels(n: int, k: int, copies: int) -> dict[str, list]:
    """Format -> `copies` callables, each one token times its own weight of shape [n, k] in that format."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    x = torch.randn(1, k)
    xb = x.to(torch.bfloat16)
    out: dict[str, list] = {f: [] for f in FORMATS}
    for _ in range(copies):
        w = torch.randn(n, k)
        out["fp32"].append(lambda w=w: x @ w.T)
        q8 = torch.randint(-127, 128, (n, k), dtype=torch.int8)
        s8 = torch.rand(n, dtype=torch.bfloat16)
        out["int8 weight-only"].append(lambda q=q8, s=s8: torch._weight_int8pack_mm(xb, q, s))
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(torch.randint(0, 16, (n, k), dtype=torch.int32), 1)
        for g in (32, 64):
            sz = torch.rand(k // g, n, 2, dtype=torch.bfloat16)
            out[f"int4 g{g}"].append(
                lambda p=packed, g=g, sz=sz: torch.ops.aten._weight_int4pack_mm_for_cpu(xb, p, g, sz))
        dyn = DynamicLinear(k, n)
        qw = torch.quantize_per_channel(w, w.abs().amax(1) / 127, torch.zeros(n, dtype=torch.long), 0, torch.qint8)
        dyn.set_weight_bias(qw, None)
        out["W8A8 dynamic"].append(lambda m=dyn: m(x))
        del w
    return out


def time_us(calls: list, repeats: int) -> float:
    """Median microseconds of one call, each repeat running every call of `calls` in turn (distinct weights)."""
    for f in calls:
        f()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for f in calls:
            f()
        samples.append((time.perf_counter() - t0) / len(calls))
    return statistics.median(samples) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--copies", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--rest-ms", type=float, default=None,
                    help="the float32 step's time outside the GEMVs (attention, norms, dispatch), if measured")
    ap.add_argument("--stem", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    env = machine_env()
    rows = []
    with torch.inference_mode():
        for (n, k), count in SHAPES.items():
            calls = kernels(n, k, 1 if n == VOCAB else args.copies)
            row = {"shape": [n, k], "per_step": count,
                   "us": {f: round(time_us(c, args.repeats if n != VOCAB else max(5, args.repeats // 5)), 1)
                          for f, c in calls.items()}}
            rows.append(row)
            print(row, flush=True)
            del calls
    floor = {f: sum(r["us"][f] * r["per_step"] for r in rows) / 1e3 for f in FORMATS}
    env["load_after"] = load_average()
    result = {"setup": {"threads": args.threads, "copies": args.copies, "repeats": args.repeats,
                        "rest_ms": args.rest_ms}, "env": env, "rows": rows, "floor_ms": floor}
    save_results(args.stem or f"decode_floor_{args.threads}t", result, markdown(result))


def markdown(result: dict) -> str:
    s, env, floor = result["setup"], result["env"], result["floor_ms"]
    lines = ["# The per-token GEMV floor of a SmolLM2-135M decode step, per CPU kernel format", "",
             f"torch {env['torch']}, {s['threads']} threads, {env['cpus']} CPU cores ({env['machine']}); weights "
             f"read from memory ({s['copies']} distinct copies per block shape); load average "
             f"{env['load_before']} before, {env.get('load_after')} after.", "",
             "| shape (out x in) | per step | " + " | ".join(f"{f} us" for f in FORMATS) + " |",
             "|---|---|" + "---|" * len(FORMATS)]
    for r in result["rows"]:
        lines.append(f"| {r['shape'][0]} x {r['shape'][1]} | {r['per_step']} | "
                     + " | ".join(f"{r['us'][f]:.0f}" for f in FORMATS) + " |")
    lines += ["", "| format | GEMV ms per step | speed-up over fp32, GEMVs alone |"
              + (" with the fp32 step's other time |" if s["rest_ms"] else ""),
              "|---|---|---|" + ("---|" if s["rest_ms"] else "")]
    for f in FORMATS:
        row = f"| {f} | {floor[f]:.1f} | {floor['fp32'] / floor[f]:.2f}x |"
        if s["rest_ms"]:
            row += f" {(floor['fp32'] + s['rest_ms']) / (floor[f] + s['rest_ms']):.2f}x |"
        lines.append(row)
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
