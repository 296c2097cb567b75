"""Decode speed of SmolLM2-135M-Instruct as exported: ms per token on the real CPU kernels, against fp32.

Run:  .venv/bin/python benchmarks/decode_speed.py [--runtime eager|compiled] [--context 256] [--rounds 7]
          [--steps 20] [--n-eval 16] [--only CASE ...]
Writes benchmarks/results/decode_speed.json and .md (eager) or decode_speed_compiled.json and .md (compiled).

Each case is a plan on the 30 blocks' Linear layers and the tied embedding / LM head. It is applied to the
model (fake-quantized on the exported grid), its next-token quality measured against the original (KL, top-1,
perplexity ratio on python-docs passages), then written with `save_compressed` and reloaded with
`load_compressed(kernels=True)`: the layers run the CPU kernels the export picks (int8 per channel:
`torch._weight_int8pack_mm`; int4 in groups of 32: `aten._weight_int4pack_mm_for_cpu`; both in bfloat16
activations), and a quantized tied table stays packed. Decode: batch 1, one new token against a KV cache of
`--context` positions (`measured.model_step`, the latency model's own step). Timing survives a busy machine
by interleaving: each round times `--steps` steps of the fp32 model, then of the case, and the speed-up is the
median over rounds of fp32 ms / case ms measured side by side.

`--runtime eager` times the model as `model.generate` runs it by default (a dynamic cache, Python dispatch per
op). `--runtime compiled` times it as `autocompress.export.fast_generate` runs it: a static cache of
`fast_decode.cache_length` positions prefilled eagerly with `context - 1` tokens, then the one-token call
compiled by transformers' `get_compiled_call(fast_decode.compile_config())`, at position `context - 1` each
time (the same work as the eager step: attention over `context` positions). fp32 is compiled the same way, so
the speed-up compares like with like.

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
from benchmarks.common import cpu_words, load_average, machine_env, merge_rows, save_results, RESULTS  # noqa: E402

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


def compiled_decode_ms(model, context: int, steps: int):
    """Like `decode_ms`, on the compiled runtime of `fast_generate` (see the module docstring)."""
    from transformers import StaticCache

    from autocompress.evaluators.latency.measured import _inputs
    from autocompress.export.fast_decode import cache_length, compile_config

    filled = max(context - 1, 1)
    prompt = _inputs(model, 1, filled, "cpu")["input_ids"]
    token = _inputs(model, 1, 1, "cpu", seed=1)["input_ids"]
    cache = StaticCache(config=model.config, max_cache_len=cache_length(filled, 1))
    position, mask = torch.tensor([[filled]]), torch.ones(1, filled + 1, dtype=torch.long)
    with torch.inference_mode():
        model(input_ids=prompt, position_ids=torch.arange(filled)[None], cache=cache, use_cache=True)
        call = model.get_compiled_call(compile_config())

        def step() -> float:
            t0 = time.perf_counter()
            call(input_ids=token, position_ids=position, attention_mask=mask, cache=cache, use_cache=True,
                 logits_to_keep=1)
            ms = (time.perf_counter() - t0) * 1e3
            cache.crop(-1)  # the next step writes the same slot: every timed step sees the same context
            return ms
        for _ in range(3):  # the first call compiles
            step()

    def run() -> float:
        with torch.inference_mode():
            return statistics.median(step() for _ in range(steps))
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--runtime", choices=("eager", "compiled"), default="eager")
    ap.add_argument("--context", type=int, default=256)
    ap.add_argument("--n-eval", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--only", nargs="*", choices=list(CASES))
    ap.add_argument("--stem", default=None, help="results file stem (default decode_speed[_compiled])")
    args = ap.parse_args()
    stem = args.stem or ("decode_speed" if args.runtime == "eager" else "decode_speed_compiled")
    timer = decode_ms if args.runtime == "eager" else compiled_decode_ms
    torch._dynamo.config.recompile_limit = 64  # one compile per model timed; torch's default stops at 8

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
    anchor = timer(base, args.context, args.steps)
    # the compiled runtime is also set against fp32 as `generate` runs it by default, timed in the same rounds
    eager_anchor = decode_ms(base, args.context, args.steps) if args.runtime == "compiled" else None

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
        timed = timer(exported.model, args.context, args.steps)
        pairs, eager = [], []
        for _ in range(args.rounds):
            if eager_anchor is not None:
                eager.append(eager_anchor())
            fp32_ms, case_ms = anchor(), timed()
            pairs.append((fp32_ms, case_ms))
        speedups = [a / b for a, b in pairs]
        versus_eager = {"eager_fp32_ms": statistics.median(eager),
                        "speedup_vs_eager": statistics.median(e / b for e, (_, b) in zip(eager, pairs))} if eager else {}
        kernels = sorted(set(exported.kernels.values()))
        rows.append({"case": case, "plan": plan.summary(), "kernels": kernels,
                     "fp32_ms": statistics.median(a for a, _ in pairs), "ms": statistics.median(b for _, b in pairs),
                     "speedup": statistics.median(speedups), "speedup_min": min(speedups),
                     "speedup_max": max(speedups), "size_mb": plan_size(plan, info).size_mb,
                     "apply_s": round(apply_s, 1), **versus_eager, **{k: quality[k] for k in
                                                      ("kl", "kl_p99", "top1_agreement", "perplexity_ratio")}})
        print(rows[-1], flush=True)
        del exported, timed
    env["load_after"] = load_average()
    path = RESULTS / f"{stem}.json"
    rows = merge_rows(path, rows, list(CASES))
    positions = sum(int((b["attention_mask"][:, :-1] * b["attention_mask"][:, 1:]).sum()) for b in evaluator.batches)
    result = {"setup": {"model": MODEL, "runtime": args.runtime, "context": args.context, "rounds": args.rounds, "steps": args.steps,
                        "n_eval": args.n_eval, "max_length": args.max_length, "positions": positions,
                        "calibration_texts": len(calib)}, "env": env, "rows": rows}
    save_results(stem, result, markdown(result))


RUNTIMES = {
    "eager": "Eager: `model.generate`'s default dynamic cache, one Python dispatch per op.",
    "compiled": "Compiled: `fast_generate`'s static cache and decode step compiled by torch inductor "
                "(fp32 compiled the same way); each round also times fp32 eager first (`vs eager fp32`: the "
                "model as `generate` runs it by default).",
}


def markdown(result: dict) -> str:
    s, env = result["setup"], result["env"]
    runtime = s.get("runtime", "eager")
    lines = [
        f"# Decode speed of SmolLM2-135M-Instruct as exported, on the real CPU kernels ({runtime} runtime)",
        "",
        f"{RUNTIMES[runtime]} Batch 1, one token against a KV cache of {s['context']} positions; each round "
        f"times {s['steps']} steps of fp32 then of the case, {s['rounds']} rounds; speed-up = median over rounds "
        f"of fp32 ms / case ms (min-max in brackets). Quality against the original on {s['n_eval']} python-docs passages "
        f"({s['positions']} predicted positions, max_length {s['max_length']}); GPTQ: sequential, act-order, "
        f"{s['calibration_texts']} calibration passages disjoint from those. The weights come from a Q4_1 GGUF "
        "(asymmetric 4-bit groups of 32); the 4-bit cases here are symmetric.",
        f"Machine: {cpu_words(env)}, torch {env['torch']}, {env['torch_threads']} "
        f"threads, load average {env['load_before']} before, {env.get('load_after')} after.",
        "",
        "| case | kernels | ms/token | fp32 ms | speed-up | vs eager fp32 | kl | kl_p99 | top-1 | ppl ratio | size MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        eager = f"{r['speedup_vs_eager']:.2f}x ({r['eager_fp32_ms']:.1f} ms)" if "speedup_vs_eager" in r else "-"
        lines.append(f"| {r['case']} | {', '.join(r['kernels']) or '-'} | {r['ms']:.1f} | {r['fp32_ms']:.1f} | "
                     f"{r['speedup']:.2f}x ({r['speedup_min']:.2f}-{r['speedup_max']:.2f}) | {eager} | {r['kl']:.4f} | "
                     f"{r['kl_p99']:.3f} | {r['top1_agreement']:.3f} | {r['perplexity_ratio']:.3f} | "
                     f"{r['size_mb']:.1f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
