"""KL of a quantized KV cache against the original, and the memory it saves, on the real SmolLM2-135M.

Run:  .venv/bin/python benchmarks/kv_cache.py [--n-texts 8] [--contexts 128 1024] [--bits 8 4 2]
          [--batch 8] [--dtype fp16]
Writes benchmarks/results/kv_cache.json and kv_cache.md.

For each context length (python-docs passages joined end to end and cut into windows of that many tokens, so
every window is full) the next-token evaluator compares the original model with the same model whose KV cache
is quantized (`autocompress.kvcache`: keys after RoPE and values put on the grid as they are written, attention
reading them dequantized), for each bits value, asymmetric and symmetric, groups of 32 channels. The memory
columns are `plan_memory`'s KV-cache bytes at `--batch` sequences of that context in `--dtype` (16 bits: the
dtype; quantized: bits plus fp16 scales). The weights are left alone (the Q4_1 GGUF model dequantized to
float32). The figures are accuracies and byte counts, not timings: any machine gives the same.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import env_words, load_average, machine_env, save_results  # noqa: E402


def windows(tokenizer, n_texts: int, length: int) -> list[str]:
    """`n_texts` strings of exactly `length` tokens each, cut from python-docs passages joined end to end."""
    from autocompress.data import load_texts

    ids: list[int] = []
    for text in load_texts("python-docs", n=183, seed=0):
        ids += tokenizer(text + "\n\n", add_special_tokens=False)["input_ids"]
        if len(ids) >= n_texts * length:
            break
    if len(ids) < n_texts * length:
        raise SystemExit(f"python-docs holds {len(ids)} tokens, fewer than {n_texts} x {length}")
    return [tokenizer.decode(ids[i * length:(i + 1) * length]) for i in range(n_texts)]


def main() -> None:
    from autocompress.evaluators import build_evaluator
    from autocompress.evaluators.size import plan_memory
    from autocompress.kvcache.plan import KVCachePlan
    from autocompress.loading import load_model
    from autocompress.plan import CompressionPlan
    from autocompress.policies import apply_plan

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-texts", type=int, default=8)
    parser.add_argument("--contexts", type=int, nargs="+", default=[128, 1024])
    parser.add_argument("--bits", type=int, nargs="+", default=[8, 4, 2])
    parser.add_argument("--batch", type=int, default=8, help="sequences the memory column counts")
    parser.add_argument("--dtype", default="fp16", help="the deployment dtype of an unquantized cache")
    parser.add_argument("--batch-size", type=int, default=2, help="texts per forward pass")
    parser.add_argument("--out", default="kv_cache")
    args = parser.parse_args()

    env = machine_env()
    loaded = load_model("SmolLM2-135M-Instruct")
    base, tok, info = loaded.model, loaded.tokenizer, loaded.info
    work = copy.deepcopy(base)
    rows = []
    for context in args.contexts:
        texts = windows(tok, args.n_texts, context)
        evaluator = build_evaluator("next_token", base, tok, texts, batch_size=args.batch_size,
                                    max_length=context)
        full = plan_memory(CompressionPlan({}), info, args.batch, context, args.dtype).kv_cache_bytes
        for bits in args.bits:
            for symmetric in (False, True):
                plan = CompressionPlan({}, kv_cache=KVCachePlan(bits=bits, symmetric=symmetric))
                apply_plan(work, plan, info=info)
                metrics = evaluator.evaluate(work)
                kv = plan_memory(plan, info, args.batch, context, args.dtype).kv_cache_bytes
                rows.append({"context": context, "bits": bits, "symmetric": symmetric, **metrics,
                             "kv_bytes": kv, "kv_bytes_16": full})
                print(rows[-1], flush=True)
    env["load_after"] = load_average()
    result = {"model": "SmolLM2-135M-Instruct", "texts": f"python-docs windows n={args.n_texts}",
              "batch": args.batch, "dtype": args.dtype, "group_size": 32, "env": env, "rows": rows}
    lines = ["# KV-cache quantization on SmolLM2-135M-Instruct", "",
             f"{env_words(env)} {args.n_texts} windows of python-docs text per context; the cache quantized as "
             "it is written (keys after RoPE), groups of 32 channels per head and token with fp16 scales; weights "
             f"unchanged. KV cache memory at batch {args.batch} in {args.dtype} (unquantized) vs quantized "
             "(bits plus scales).", "",
             "| context | kv bits | grid | KL | KL p99 | top-1 agreement | perplexity ratio | KV cache MB | saved |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['context']} | {r['bits']} | {'sym' if r['symmetric'] else 'asym'} | {r['kl']:.5f} | "
                     f"{r['kl_p99']:.4f} | {r['top1_agreement']:.4f} | {r['perplexity_ratio']:.4f} | "
                     f"{r['kv_bytes'] / 1e6:.1f} (of {r['kv_bytes_16'] / 1e6:.1f}) | "
                     f"{1 - r['kv_bytes'] / r['kv_bytes_16']:.0%} |")
    save_results(args.out, result, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
