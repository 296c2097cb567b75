"""Perplexity and KL vs whole blocks dropped from SmolLM2-135M: by Block Influence, the last blocks, random ones.

Run:  .venv/bin/python benchmarks/depth_pruning.py [--model SmolLM2-135M-Instruct] [--max-drop 8] [--n-texts 8]
          [--length 256] [--random-seeds 0 1 2]
Writes benchmarks/results/depth_pruning_smollm2.json and .md (--out for another stem).

Block Influence (ShortGPT: 1 - cos(block input, block output), `autocompress.depth.influence`) is measured on
the default calibration texts (`data.calibration`: builtin, n=32, 256 tokens), and the evaluation is on other
text: python-docs passages cut into `--n-texts` windows of exactly `--length` tokens. For k = 0..max_drop the
plan `drop_blocks` takes the k least influential blocks, the last k blocks (n-k..n-1), or the first k of a
seeded random permutation (the mean over `--random-seeds`, and its range). The next-token evaluator compares each reduced model with the original:
KL, top-1 agreement, perplexity. Size: `plan_size` of the plan (fp32 weights). Weights otherwise unchanged (the
Q4_1 GGUF model dequantized to float32). The figures are accuracies and byte counts, not timings.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import env_words, load_average, machine_env, save_results  # noqa: E402
from benchmarks.kv_cache import windows  # noqa: E402


def orders(scores: list[float], seeds: list[int]) -> dict[str, list[int]]:
    """Drop orders by method: "influence" (ascending Block Influence), "last" (n-1, n-2, ...), "random <seed>"."""
    from autocompress.depth.influence import influence_order

    n = len(scores)
    out = {"influence": influence_order(scores), "last": list(range(n - 1, -1, -1))}
    for seed in seeds:
        perm = list(range(n))
        random.Random(seed).shuffle(perm)
        out[f"random {seed}"] = perm
    return out


def measure(model_name: str, max_drop: int, n_texts: int, length: int, seeds: list[int]) -> dict:
    from autocompress.calibration import calibration_texts
    from autocompress.data import make_batches
    from autocompress.depth.influence import block_influence
    from autocompress.evaluators import build_evaluator
    from autocompress.evaluators.size import plan_size
    from autocompress.loading import load_model
    from autocompress.plan import CompressionPlan
    from autocompress.policies import apply_plan
    from autocompress.search.workers.workspace import ModelWorkspace

    loaded = load_model(model_name)
    base, tok, info = loaded.model, loaded.tokenizer, loaded.info
    calib = make_batches(tok, calibration_texts(tok, "builtin", 32, 0, 256, 0), batch_size=8, max_length=256)
    scores = block_influence(base, calib, info.block_prefix)
    evaluator = build_evaluator("next_token", base, tok, windows(tok, n_texts, length), batch_size=2,
                                max_length=length)
    workspace = ModelWorkspace(base)
    rows, original = [], plan_size(CompressionPlan({}), info).total_bytes
    for method, order in orders(scores, seeds).items():
        for k in range(0 if method == "influence" else 1, max_drop + 1):
            plan = CompressionPlan({}, drop_blocks=order[:k])
            model = apply_plan(workspace.checkout(), plan, info=info)
            metrics = evaluator.evaluate(model)
            rows.append({"method": method, "dropped": k, "blocks": list(plan.drop_blocks),
                         "size_ratio": plan_size(plan, info).total_bytes / original, **metrics})
            print(rows[-1], flush=True)
    workspace.restore()
    return {"scores": scores, "rows": rows}


def table(rows: list[dict], seeds: list[int]) -> list[str]:
    """Markdown rows: per k, perplexity and KL of each method (random: mean over the seeds, with its range)."""
    def at(method: str, k: int) -> dict | None:
        if k == 0:
            method = "influence"
        return next((r for r in rows if r["method"] == method and r["dropped"] == k), None)

    lines = ["| blocks dropped | size | Block Influence: ppl / KL | last blocks: ppl / KL | random (mean of "
             f"{len(seeds)}): ppl [range] / KL |", "|---|---|---|---|---|"]
    for k in sorted({r["dropped"] for r in rows}):
        bi, last = at("influence", k), at("last", k)
        rand = [r for r in (at(f"random {s}", k) for s in seeds) if r is not None]
        cells = [f"{r['perplexity']:.2f} / {r['kl']:.3f} ({', '.join(map(str, r['blocks'])) or 'none'})"
                 if r else "-" for r in (bi, last)]
        if rand:
            ppl = [r["perplexity"] for r in rand]
            cells.append(f"{sum(ppl) / len(ppl):.2f} [{min(ppl):.2f}..{max(ppl):.2f}] / "
                         f"{sum(r['kl'] for r in rand) / len(rand):.3f}")
        else:
            cells.append("-")
        lines.append(f"| {k} | {bi['size_ratio']:.0%} | " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="SmolLM2-135M-Instruct")
    parser.add_argument("--max-drop", type=int, default=8)
    parser.add_argument("--n-texts", type=int, default=8)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--random-seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="depth_pruning_smollm2")
    args = parser.parse_args(argv)

    env = machine_env()
    measured = measure(args.model, args.max_drop, args.n_texts, args.length, args.random_seeds)
    env["load_after"] = load_average()
    result = {"model": args.model, "texts": f"python-docs windows n={args.n_texts} x {args.length} tokens",
              "calibration": "builtin n=32, 256 tokens", "env": env, **measured}
    scores = measured["scores"]
    ranked = sorted(range(len(scores)), key=lambda i: scores[i])
    lines = [f"# Depth pruning on {args.model}", "",
             f"{env_words(env)} Whole blocks dropped (`drop_blocks`), chosen by Block Influence (ShortGPT) on the "
             f"builtin calibration texts, as the last blocks, or at random; scored by the next-token evaluator "
             f"against the original on {args.n_texts} python-docs windows of {args.length} tokens. Size: "
             "`plan_size` relative to the original (fp32).", "",
             *table(measured["rows"], args.random_seeds), "",
             "Block Influence per block (lowest first): "
             + ", ".join(f"{i}: {scores[i]:.3f}" for i in ranked[:10]) + ", ...; highest: "
             + ", ".join(f"{i}: {scores[i]:.3f}" for i in ranked[-3:]) + "."]
    save_results(args.out, result, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
