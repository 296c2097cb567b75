"""Quality of a pruned vocabulary on text of the calibration domain and of another domain, on SmolLM2-135M.

Run:  .venv/bin/python benchmarks/vocab_pruning.py [--model SmolLM2-135M-Instruct] [--keep 1 0.5 0.25 0.1 0.05]
          [--n-calibration 64] [--n-eval 16] [--max-length 256] [--fallback default|mean|<id> ...]
          [--out vocab_pruning_smollm2]
Writes benchmarks/results/<out>.json and <out>.md.

The kept ids are ranked by their frequency in `--n-calibration` python-docs passages (the tokenizer's special
tokens always kept). Quality is the next-token evaluator against the unpruned model (KL, top-1 agreement,
perplexity) on two held-out text sets: on-domain, `--n-eval` other python-docs passages (never a calibration
passage); off-domain, `--n-eval` builtin-corpus sentences (docstrings of standard-library modules: the nearest
other text that ships offline; a neighbouring domain, not a distant one). `coverage` is the share of the
evaluated tokens whose id is kept (the rest read and are scored as the fallback's class: vocab/runtime.py).
Each share runs once per `--fallback` (default: the plan's default, SmolLM2's being the mean row; an id such
as 0, SmolLM2's "<|endoftext|>", shows what a document-boundary token as the fallback costs). Size is
`plan_size` (the kept rows plus the int32 id map). The figures are accuracies and byte counts, not
timings: any machine gives the same.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import env_words, load_average, machine_env, save_results  # noqa: E402


def domains(n_calibration: int, n_eval: int) -> tuple[list[str], dict[str, list[str]]]:
    """(calibration texts, {"on-domain": held-out python-docs, "off-domain": builtin sentences})."""
    from autocompress.data import load_texts

    docs = load_texts("python-docs", n=n_calibration + n_eval, seed=0)
    return docs[:n_calibration], {"on-domain": docs[n_calibration:],
                                  "off-domain": load_texts("builtin", n=n_eval, seed=0)}


def coverage(model, tokenizer, texts: list[str], max_length: int) -> float:
    """Share of the texts' tokens whose id the pruned `model` keeps (1.0 for an unpruned model)."""
    import torch

    from autocompress.vocab.runtime import fallback_class, id_map_of

    id_map = id_map_of(model)
    if id_map is None:
        return 1.0
    ids = torch.cat([torch.as_tensor(tokenizer(t, truncation=True, max_length=max_length)["input_ids"])
                     for t in texts])
    return 1.0 - float(fallback_class(id_map, ids).float().mean())


def write(args, env, vocab, rows) -> None:
    """The results so far, as JSON and markdown (rewritten after every model, so a cut run keeps its rows)."""
    env["load_after"] = load_average()
    result = {"model": args.model, "vocab": vocab, "n_calibration": args.n_calibration, "n_eval": args.n_eval,
              "max_length": args.max_length, "env": env, "rows": rows}
    lines = [f"# Vocabulary pruning on {args.model}", "",
             f"{env_words(env)} Vocabulary {vocab['size']:,} ids ({vocab['share']:.1%} of the parameters in the "
             f"token table{' and LM head (tied)' if vocab['tied'] else ''}). Kept ids ranked on "
             f"{args.n_calibration} python-docs passages (special tokens always kept); quality against the "
             f"unpruned model on {args.n_eval} held-out python-docs passages (on-domain) and {args.n_eval} "
             f"builtin-corpus docstring sentences (off-domain), up to {args.max_length} tokens each. Coverage: "
             "share of the evaluated tokens kept (the others read and are scored as the fallback's class). "
             "Fallback: where dropped ids go; default is the plan's default (a dedicated unknown token if the "
             "tokenizer has one, else one mean row of the dropped ones), a number is that token id. "
             "Size: packed fp32 weights plus the id map.", "",
             "| keep | fallback | rows | domain | coverage | KL | top-1 agreement | perplexity | perplexity ratio "
             "| size MB |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['keep']:g} | {r['fallback']} | {r['rows']:,} | {r['domain']} | {r['coverage']:.4f} | "
                     f"{r['kl']:.4f} | "
                     f"{r['top1_agreement']:.4f} | {r['perplexity']:.2f} | {r['perplexity_ratio']:.4f} | "
                     f"{r['size_bytes'] / 1e6:.1f} |")
    save_results(args.out, result, "\n".join(lines) + "\n")


def main() -> None:
    from autocompress.data import make_batches
    from autocompress.evaluators import build_evaluator
    from autocompress.evaluators.size import plan_size
    from autocompress.loading import load_model
    from autocompress.plan import CompressionPlan
    from autocompress.policies import apply_plan
    from autocompress.vocab.plan import VocabPlan, vocab_summary

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="SmolLM2-135M-Instruct")
    parser.add_argument("--keep", type=float, nargs="+", default=[1.0, 0.5, 0.25, 0.1, 0.05])
    parser.add_argument("--n-calibration", type=int, default=64)
    parser.add_argument("--n-eval", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--fallback", nargs="+", default=["default", "0"],
                        help="fallbacks to compare: default (the plan's), mean, or a token id")
    parser.add_argument("--out", default="vocab_pruning_smollm2")
    args = parser.parse_args()

    env = machine_env()
    loaded = load_model(args.model)
    base, tok, info = loaded.model, loaded.tokenizer, loaded.info
    calib_texts, evals = domains(args.n_calibration, args.n_eval)
    calibration = make_batches(tok, calib_texts, batch_size=args.batch_size, max_length=args.max_length)
    evaluators = {d: build_evaluator("next_token", base, tok, texts, batch_size=args.batch_size,
                                     max_length=args.max_length) for d, texts in evals.items()}
    vocab = vocab_summary(info)
    rows = []
    for keep in args.keep:
        for fallback in args.fallback if keep < 1 else ["default"]:
            fb = None if fallback == "default" else (fallback if fallback == "mean" else int(fallback))
            plan = CompressionPlan({}, vocab=VocabPlan(keep=keep, fallback=fb))
            model = apply_plan(copy.deepcopy(base), plan, calibration, info=info)
            size = plan_size(plan, info)
            for domain, evaluator in evaluators.items():
                metrics = evaluator.evaluate(model)
                rows.append({"keep": keep, "fallback": fallback,
                             "rows": plan.vocab.rows(vocab["size"]) if plan.vocab else vocab["size"],
                             "domain": domain, "coverage": coverage(model, tok, evals[domain], args.max_length),
                             "size_bytes": size.total_bytes, "size_ratio": size.ratio, **metrics})
                print(rows[-1], flush=True)
            del model
            write(args, env, vocab, rows)



if __name__ == "__main__":
    main()
