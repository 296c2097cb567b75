"""Decode speed of SmolLM2-135M-Instruct as exported: ms per token on the real CPU kernels, against fp32.

Run:  .venv/bin/python benchmarks/decode_speed.py [--rounds 7] [--steps 20] [--n-eval 16] [--only CASE ...]
Writes benchmarks/results/decode_speed.json and decode_speed.md.

Each case is a plan on the 30 blocks' Linear layers and the tied embedding / LM head. It is applied to the
model (fake-quantized on the exported grid), its next-token quality measured against the original (KL, top-1,
perplexity ratio on python-docs passages), then written with `save_compressed` and reloaded with
`load_compressed(kernels=True)`: the layers run the CPU kernels the export picks (int8 per channel:
`torch._weight_int8pack_mm`; int4 in groups of 32: `aten._weight_int4pack_mm_for_cpu`; both in bfloat16
activations), and a quantized tied table stays packed. Decode: batch 1, one new token against a KV cache of
`--context` positions (`measured.model_step`, the latency model's own step). Timing survives a busy machine
by interleaving: each round times `--steps` steps of the fp32 model, then of the case, and the speed-up is the
median over rounds of fp32 ms / case ms measured side by side.

The model's weights come from a Q4_1 GGUF: they already lie on a 4-bit group-32 asymmetric grid, so the
4-bit cases here are symmetric, a setting that grid does not flatter.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import load_average, machine_env, merge_rows, save_results, RESULTS  # noqa: E402

MODEL = "SmolLM2-135M-Instruct"
W8 = dict(bits=8, group_size=None)
W4 = dict(bits=4, group_size=32)
# case -> (block Linear settings or None, tied head/table settings or None, GPTQ?)
CASES = {
    "fp32": (None, None, False),
    "W8 blocks, fp32 head": (W8, None, False),
    "W8 blocks, W8 head": (W8, W8, False),
    "W4 g32 blocks, fp32 head": (W4, None, False),
    "W4 g32 blocks, W8 head": (W4, W8, False),
    "W4 g32 blocks, W4 g32 head": (W4, W4, False),
    "W4 g32 GPTQ blocks, W8 head": (W4, W8, True),
    "W4 g32 GPTQ blocks, W4 g32 head": (W4, W4, True),
}


def plan_for(info, blocks, head, gptq):
    from autocompress.plan import CompressionPlan, LayerPlan

    layers = {}
    if blocks is not None:
        entry = LayerPlan(**blocks, quant_method="gptq" if gptq else "rtn")
        layers.update({name: entry for name in info.targets_by_default()})
    if head is not None:
        layers["lm_head"] = LayerPlan(**head)
    return CompressionPlan(layers)


def decode_ms(model, context: int, steps: int):
    """A function timing `steps` decode steps of `model`: their median ms."""
    from autocompress.evaluators.latency._base import Workload
    from autocompress.evaluators.latency.measured import model_step

    with torch.inference_mode():
        step = model_step(model, Workload(batch=1, seq_len=context, mode="decode"))
        for _ in range(3):
            step()

    def run() -> float:
        with torch.inference_mode():
            return statistics.median(step() for _ in range(steps))
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--context", type=int, default=128)
    ap.add_argument("--n-eval", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--only", nargs="*", choices=list(CASES))
    ap.add_argument("--stem", default="decode_speed")
    args = ap.parse_args()

    from autocompress.calibration import calibration_texts, min_tokens
    from autocompress.data import load_texts, make_batches
    from autocompress.evaluators.next_token import NextTokenEvaluator
    from autocompress.evaluators.size import plan_size
    from autocompress.export import load_compressed, save_compressed
    from autocompress.loading import load_model
    from autocompress.policies import Calibration, apply_plan
    from autocompress.search.workers.workspace import ModelWorkspace

    env = machine_env()
    loaded = load_model(MODEL)
    base, tok, info = loaded.model, loaded.tokenizer, loaded.info
    texts = load_texts("python-docs", n=args.n_eval, seed=0)
    evaluator = NextTokenEvaluator(base, tok, texts, batch_size=4, max_length=args.max_length)
    widest = [info.layers[n].in_features for n in info.targets_by_default()]
    calib = calibration_texts(tok, "python-docs", 16, 1, args.max_length, min_tokens(widest), exclude=texts)
    batches = make_batches(tok, calib, batch_size=8, max_length=args.max_length, keys=("input_ids", "attention_mask"))
    workspace = ModelWorkspace(base)
    anchor = decode_ms(base, args.context, args.steps)

    rows = []
    for case in args.only or list(CASES):
        blocks, head, gptq = CASES[case]
        plan = plan_for(info, blocks, head, gptq)
        model = workspace.checkout()
        t0 = time.perf_counter()
        apply_plan(model, plan, Calibration(batches, sequential=True) if gptq else None, info)
        apply_s = time.perf_counter() - t0
        quality = evaluator.evaluate(model)
        with tempfile.TemporaryDirectory() as out:
            save_compressed(model, plan, info, out, tokenizer=tok)
            workspace.restore()
            exported = load_compressed(out, kernels=True)
        timed = decode_ms(exported.model, args.context, args.steps)
        pairs = []
        for _ in range(args.rounds):
            fp32_ms, case_ms = anchor(), timed()
            pairs.append((fp32_ms, case_ms))
        speedups = [a / b for a, b in pairs]
        kernels = sorted(set(exported.kernels.values()))
        rows.append({"case": case, "plan": plan.summary(), "kernels": kernels,
                     "fp32_ms": statistics.median(a for a, _ in pairs), "ms": statistics.median(b for _, b in pairs),
                     "speedup": statistics.median(speedups), "speedup_min": min(speedups),
                     "speedup_max": max(speedups), "size_mb": plan_size(plan, info).size_mb,
                     "apply_s": round(apply_s, 1), **{k: quality[k] for k in
                                                      ("kl", "kl_p99", "top1_agreement", "perplexity_ratio")}})
        print(rows[-1], flush=True)
        del exported, timed
    env["load_after"] = load_average()
    path = RESULTS / f"{args.stem}.json"
    rows = merge_rows(path, rows, list(CASES))
    positions = sum(int((b["attention_mask"][:, :-1] * b["attention_mask"][:, 1:]).sum()) for b in evaluator.batches)
    result = {"setup": {"model": MODEL, "context": args.context, "rounds": args.rounds, "steps": args.steps,
                        "n_eval": args.n_eval, "max_length": args.max_length, "positions": positions,
                        "calibration_texts": len(calib)}, "env": env, "rows": rows}
    save_results(args.stem, result, markdown(result))


def markdown(result: dict) -> str:
    s, env = result["setup"], result["env"]
    lines = [
        "# Decode speed of SmolLM2-135M-Instruct as exported, on the real CPU kernels",
        "",
        f"Batch 1, one token against a KV cache of {s['context']} positions; each round times {s['steps']} steps "
        f"of fp32 then of the case, {s['rounds']} rounds; speed-up = median over rounds of fp32 ms / case ms "
        f"(min-max in brackets). Quality against the original on {s['n_eval']} python-docs passages "
        f"({s['positions']} predicted positions, max_length {s['max_length']}); GPTQ: sequential, act-order, "
        f"{s['calibration_texts']} calibration passages disjoint from those. The weights come from a Q4_1 GGUF "
        "(asymmetric 4-bit groups of 32); the 4-bit cases here are symmetric.",
        f"Machine: {env['cpus']} CPU cores ({env['machine']}), torch {env['torch']}, {env['torch_threads']} "
        f"threads, load average {env['load_before']} before, {env.get('load_after')} after.",
        "",
        "| case | kernels | ms/token | fp32 ms | speed-up | kl | kl_p99 | top-1 | ppl ratio | size MB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(f"| {r['case']} | {', '.join(r['kernels']) or '-'} | {r['ms']:.1f} | {r['fp32_ms']:.1f} | "
                     f"{r['speedup']:.2f}x ({r['speedup_min']:.2f}-{r['speedup_max']:.2f}) | {r['kl']:.4f} | "
                     f"{r['kl_p99']:.3f} | {r['top1_agreement']:.3f} | {r['perplexity_ratio']:.3f} | "
                     f"{r['size_mb']:.1f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
