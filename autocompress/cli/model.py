"""`autocompress inspect` and `autocompress apply`: the commands on a model and a plan, without a search.

  autocompress inspect MODEL [--task T] [--json]
  autocompress apply MODEL PLAN.json [--eval fidelity,size] [--texts builtin|python-docs|FILE] [--labels FILE]
                     [--json]
"""

from __future__ import annotations

import argparse
import copy
import json
from typing import Any

from autocompress.calibration import TOKENS_PER_INPUT
from autocompress.cli.common import MODEL_HELP, add_output_args, add_task_args, console, step
from autocompress.errors import UserError
from autocompress.vocab.plan import vocab_summary

EVALS = ("fidelity", "next_token", "perplexity", "accuracy", "size")


def _cmd_inspect(args: argparse.Namespace) -> int:
    from rich.table import Table

    from autocompress.depth.inventory import blocks
    from autocompress.loading import load_model

    with step(f"loading {args.model}"):
        info = load_model(args.model, task=args.task, trust_remote_code=args.trust_remote_code).info
    if args.json:
        print(json.dumps({
            "model_type": info.model_type, "task": info.task, "total_params": info.total_params,
            "layers": {n: {"class": li.module_class, "in": li.in_features, "out": li.out_features,
                           "params": li.params, "block": li.block, "role": li.role} for n, li in info.layers.items()},
            "structures": {n: {"kind": s.kind, "units": s.units, "unit_size": s.unit_size,
                               "producers": list(s.producers), "consumer": s.consumer}
                           for n, s in info.structures.items()},
            "groups": {n: list(v) for n, v in info.groups.items()},
            "embeddings": {n: {"rows": e.num_embeddings, "dim": e.embedding_dim, "params": e.params,
                               "tied_to": e.tied_to} for n, e in info.embeddings.items()},
            "kv_cache": _kv_cache(info), "vocabulary": vocab_summary(info),
            "blocks": blocks(info),
        }, indent=2))
        return 0
    out = console()
    table = Table(title=f"{info.model_type} ({info.task}): {info.total_params:,} parameters, "
                        f"{len(info.layers)} Linear layers")
    for col in ("layer", "class", "in", "out", "params", "block"):
        table.add_column(col, justify="left" if col in ("layer", "class") else "right")
    for n, li in info.layers.items():
        table.add_row(n, li.module_class, str(li.in_features), str(li.out_features), f"{li.params:,}",
                      "-" if li.block is None else str(li.block))
    out.print(table)
    st = Table(title="structures (prunable with pattern: structured)")
    for col in ("structure", "kind", "units", "unit size", "producers -> consumer"):
        st.add_column(col)
    for n, s in info.structures.items():
        prods = ", ".join(p.rsplit(".", 1)[-1] for p in s.producers)
        st.add_row(n, s.kind, str(s.units), str(s.unit_size), f"{prods} -> {s.consumer.rsplit('.', 1)[-1]}")
    out.print(st)
    if info.embeddings:
        et = Table(title="embedding tables (weight bits only: space.embeddings)")
        for col in ("table", "rows", "dim", "params", "tied to"):
            et.add_column(col, justify="left" if col in ("table", "tied to") else "right")
        for n, e in info.embeddings.items():
            tied = f"{e.tied_to} (one weight: the table's bits go on {e.tied_to})" if e.tied_to else "-"
            et.add_row(n, str(e.num_embeddings), str(e.embedding_dim), f"{e.params:,}", tied)
        out.print(et)
    if info.groups:
        out.print(f"groups (one setting for all members): {len(info.groups)}, e.g. "
                      f"{next(iter(info.groups))} = {', '.join(next(iter(info.groups.values())))}")
    vocab = vocab_summary(info)
    if vocab is not None:
        out.print(f"vocabulary: {vocab['size']:,} tokens; table {vocab['table']}"
                  + (f", LM head {vocab['head']}{' (tied)' if vocab['tied'] else ''}" if vocab["head"] else "")
                  + f": {vocab['params']:,} parameters, {vocab['share']:.1%} of the model (pruned by a plan's vocab /"
                  " space.vocab: the share of tokens kept)")
    rows = blocks(info)
    if rows:  # what a plan's drop_blocks / space.depth removes
        bt = Table(title=f"blocks (removable whole: drop_blocks, space.depth): {len(rows)}")
        for col in ("index", "block", "params", "Linear layers"):
            bt.add_column(col, justify="left" if col == "block" else "right")
        for r in rows:
            bt.add_row(str(r["index"]), r["name"], "-" if r["params"] is None else f"{r['params']:,}", str(r["layers"]))
        out.print(bt)
    kv = _kv_cache(info)
    if kv is not None:
        out.print(f"KV cache: {kv['blocks']} blocks x {kv['kv_heads']} kv heads x {kv['head_dim']} channels x 2 = "
                  f"{kv['values_per_token']:,} values per token (quantized by a plan's kv_cache / space.kv_cache: "
                  "16, 8, 4 or 2 bits)")
    return 0


def _kv_cache(info: Any) -> dict[str, int] | None:
    """The KV cache's shape per token ({blocks, kv_heads, head_dim, values_per_token}), None for an encoder."""
    e = info.extra
    if not e.get("causal") or not e.get("num_kv_heads") or not e.get("head_dim"):
        return None
    blocks = e.get("num_blocks") or 0
    return {"blocks": blocks, "kv_heads": e["num_kv_heads"], "head_dim": e["head_dim"],
            "values_per_token": 2 * blocks * e["num_kv_heads"] * e["head_dim"]}


def _wanted_evals(args: argparse.Namespace, task: str) -> list[str]:
    from autocompress.evaluators import TASK_EVALUATOR

    wanted = [e.strip() for e in (args.eval or TASK_EVALUATOR[task] + ",size").split(",") if e.strip()]
    for e in wanted:
        if e not in EVALS:
            raise UserError(f"--eval {e!r} is unknown; use a comma list of {', '.join(EVALS)}")
    if "accuracy" in wanted and not args.labels:
        raise UserError("--eval accuracy needs a labeled file: --labels FILE.jsonl|csv (text, label)")
    return wanted


def _evaluate(args: argparse.Namespace, loaded: Any, reference: Any, model: Any, plan: Any) -> dict[str, float]:
    from autocompress.data import load_labeled, load_texts
    from autocompress.evaluators.size import plan_size

    wanted = _wanted_evals(args, loaded.task)
    metrics: dict[str, float] = {}
    if "size" in wanted:
        size = plan_size(plan, loaded.info)
        metrics.update(size_mb=size.size_mb, size_ratio=size.ratio)
    needs_text = [e for e in wanted if e != "size"]
    if needs_text and loaded.tokenizer is None:
        raise UserError(f"model {args.model!r} has no tokenizer; only --eval size works for it")
    from autocompress.evaluators import build_evaluator

    for name in ("fidelity", "next_token", "perplexity", "accuracy"):
        if name not in wanted or (name == "perplexity" and "next_token" in wanted):
            continue  # next_token gives the perplexity metrics from the same pass
        if name == "accuracy":
            texts, labels = load_labeled(args.labels)
        else:
            texts, labels = load_texts(args.texts, n=args.n_eval, seed=args.seed), None
        metrics.update(build_evaluator(name, reference, loaded.tokenizer, texts, labels=labels).evaluate(model))
    return metrics


def _evaluation_texts(args: argparse.Namespace, task: str) -> list[str]:
    """The texts `_evaluate` will score the plan on (calibration never takes them)."""
    from autocompress.data import load_labeled, load_texts

    wanted = _wanted_evals(args, task)
    texts: list[str] = []
    if {"fidelity", "next_token", "perplexity"} & set(wanted):
        texts += load_texts(args.texts, n=args.n_eval, seed=args.seed)
    if "accuracy" in wanted:
        texts += list(load_labeled(args.labels)[0])
    return texts


def _cmd_apply(args: argparse.Namespace) -> int:
    from autocompress.calibration import calibration_texts, min_tokens, resolve_sequential
    from autocompress.data import make_batches
    from autocompress.loading import load_model
    from autocompress.plan import CompressionPlan
    from autocompress.policies import ORDER, POLICIES, Calibration, apply_plan
    from autocompress.validation import validate_plan

    plan = CompressionPlan.load(args.plan)
    _wanted_evals(args, args.task if args.task != "auto" else "embedding")  # fail fast on a bad --eval
    with step(f"loading {args.model}"):
        loaded = load_model(args.model, task=args.task, trust_remote_code=args.trust_remote_code)
    validate_plan(plan, loaded.info)
    calibration = None
    aware = any(POLICIES.get(p)().needs_calibration(e) for p in ORDER for e in plan.layers.values()
                if POLICIES.get(p)().handles(e))
    aware = aware or (plan.vocab is not None and plan.vocab.keep_ids is None)  # a share: ids ranked on the text
    if loaded.tokenizer is not None and aware:  # no policy of the plan reads calibration data otherwise
        need = min_tokens([li.in_features for li in loaded.info.layers.values()])
        calib_texts = calibration_texts(loaded.tokenizer, args.calibration, args.n_calibration, args.seed + 1, 128,
                                        need, field="--n-calibration",
                                        exclude=_evaluation_texts(args, loaded.task))
        sequential = {"auto": None, "on": True, "off": False}[args.sequential]
        calibration = Calibration(make_batches(loaded.tokenizer, calib_texts, batch_size=16, max_length=128),
                                  sequential=resolve_sequential(sequential, loaded.task))
    reference = copy.deepcopy(loaded.model)
    with step(f"applying the plan to {len(plan)} layers"):
        model = apply_plan(loaded.model, plan, calibration, info=loaded.info)
    with step("evaluating"):
        metrics = _evaluate(args, loaded, reference, model, plan)
    if args.json:
        print(json.dumps({"model": args.model, "plan": args.plan, "metrics": metrics}, indent=2))
        return 0
    out = console()
    out.print(plan)
    for k, v in metrics.items():
        out.print(f"{k:>16}: {v:.6g}")
    return 0


def add_model_commands(sub: Any) -> None:
    """Mount `inspect` and `apply` on the top-level subparsers."""
    def model_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("model", help=MODEL_HELP)
        add_task_args(p)
        add_output_args(p, "print machine-readable JSON", progress=False)

    p = sub.add_parser("inspect", help="print the layer inventory: names, shapes, params, structures, groups")
    model_args(p)
    p.set_defaults(func=_cmd_inspect)

    p = sub.add_parser("apply", help="apply a plan (JSON) to a model and print the metrics")
    model_args(p)
    p.add_argument("plan", help="a CompressionPlan JSON file")
    p.add_argument("--eval", help=f"comma list of {', '.join(EVALS)} (default: by task, plus size)")
    p.add_argument("--texts", default="builtin",
                   help="evaluation texts: builtin, python-docs or a .txt/.jsonl file")
    p.add_argument("--labels", help="labeled .jsonl/.csv (text,label) for --eval accuracy")
    p.add_argument("--calibration", default="builtin",
                   help="calibration texts: builtin, python-docs or a .txt/.jsonl file")
    p.add_argument("--n-eval", type=int, default=256, help="evaluation texts to use (default 256)")
    p.add_argument("--n-calibration", type=int, default=64,
                   help=f"calibration texts (default 64; more are taken when the plan has a data-aware method and "
                        f"they hold fewer than {TOKENS_PER_INPUT} tokens per input of the widest layer)")
    p.add_argument("--sequential", choices=("auto", "on", "off"), default="auto",
                   help="GPTQ block by block through the quantized blocks (auto: on for causal LMs, as a search's "
                        "data.calibration.sequential: null)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_apply)
