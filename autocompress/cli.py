"""The `autocompress` command line.

  autocompress inspect MODEL [--task T] [--json]
  autocompress apply MODEL PLAN.json [--eval fidelity,size] [--texts builtin|FILE] [--labels FILE] [--json]
  autocompress search CONFIG.yaml [--trials N] [--backend local|ray] [--workers N] [--run-dir DIR] [--json]
  autocompress auto MODEL [--target DEVICE] [--max-drop 0.01] [--trials N] [--run-dir DIR]
  autocompress ui [RUN_DIR] [--tracking-uri URI] [--host 127.0.0.1] [--port 5000]
  autocompress latency calibrate --model MODEL --out PROFILE.yaml [--device cpu|cuda] [--batch 1] [--seq-len 128]
  autocompress latency profiles
  autocompress latency predict PLAN.json|CONFIG.yaml --profile P [--model MODEL] [--latency-model roofline|table]

Bad input (a missing model, a plan that does not fit the model, values out of range) prints one line,
`error: ...`, naming the problem and the fix, and exits with code 2. Progress goes to stderr; results to
stdout.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from contextlib import contextmanager
from typing import Any, Iterator

from autocompress.errors import UserError
from autocompress.terminal import console as _console

EVALS = ("fidelity", "perplexity", "accuracy", "size")
DEFAULT_EVAL = {"embedding": "fidelity", "causal-lm": "perplexity", "sequence-classification": "accuracy"}


@contextmanager
def _step(message: str) -> Iterator[None]:
    """A spinner on stderr while a slow step runs (silent when stderr is not a terminal)."""
    console = _console(stderr=True)
    if console.is_terminal:
        with console.status(message):
            yield
    else:
        yield


def _cmd_inspect(args: argparse.Namespace) -> int:
    from rich.table import Table

    from autocompress.models import load_model

    with _step(f"loading {args.model}"):
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
        }, indent=2))
        return 0
    console = _console()
    table = Table(title=f"{info.model_type} ({info.task}): {info.total_params:,} parameters, "
                        f"{len(info.layers)} Linear layers")
    for col in ("layer", "class", "in", "out", "params", "block"):
        table.add_column(col, justify="left" if col in ("layer", "class") else "right")
    for n, li in info.layers.items():
        table.add_row(n, li.module_class, str(li.in_features), str(li.out_features), f"{li.params:,}",
                      "-" if li.block is None else str(li.block))
    console.print(table)
    st = Table(title="structures (prunable with pattern: structured)")
    for col in ("structure", "kind", "units", "unit size", "producers -> consumer"):
        st.add_column(col)
    for n, s in info.structures.items():
        prods = ", ".join(p.rsplit(".", 1)[-1] for p in s.producers)
        st.add_row(n, s.kind, str(s.units), str(s.unit_size), f"{prods} -> {s.consumer.rsplit('.', 1)[-1]}")
    console.print(st)
    if info.groups:
        console.print(f"groups (one setting for all members): {len(info.groups)}, e.g. "
                      f"{next(iter(info.groups))} = {', '.join(next(iter(info.groups.values())))}")
    return 0


def _wanted_evals(args: argparse.Namespace, task: str) -> list[str]:
    wanted = [e.strip() for e in (args.eval or DEFAULT_EVAL[task] + ",size").split(",") if e.strip()]
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
    if "fidelity" in wanted:
        from autocompress.evaluators.fidelity import FidelityEvaluator

        texts = load_texts(args.texts, n=args.n_eval, seed=args.seed)
        metrics.update(FidelityEvaluator(reference, loaded.tokenizer, texts).evaluate(model))
    if "perplexity" in wanted:
        from autocompress.evaluators.perplexity import PerplexityEvaluator

        texts = load_texts(args.texts, n=args.n_eval, seed=args.seed)
        metrics.update(PerplexityEvaluator(loaded.tokenizer, texts, reference_model=reference).evaluate(model))
    if "accuracy" in wanted:
        from autocompress.evaluators.accuracy import AccuracyEvaluator

        texts, labels = load_labeled(args.labels)
        label2id = getattr(loaded.model.config, "label2id", None)
        metrics.update(AccuracyEvaluator(loaded.tokenizer, texts, labels, label2id=label2id).evaluate(model))
    return metrics


def _cmd_apply(args: argparse.Namespace) -> int:
    from autocompress.data import load_texts, make_batches
    from autocompress.models import load_model
    from autocompress.plan import CompressionPlan
    from autocompress.policies import apply_plan
    from autocompress.validation import validate_plan

    plan = CompressionPlan.load(args.plan)
    _wanted_evals(args, args.task if args.task != "auto" else "embedding")  # fail fast on a bad --eval
    with _step(f"loading {args.model}"):
        loaded = load_model(args.model, task=args.task, trust_remote_code=args.trust_remote_code)
    validate_plan(plan, loaded.info)
    calibration = None
    if loaded.tokenizer is not None:
        calib_texts = load_texts(args.calibration, n=args.n_calibration, seed=args.seed + 1)
        calibration = make_batches(loaded.tokenizer, calib_texts, batch_size=16, max_length=128)
    reference = copy.deepcopy(loaded.model)
    with _step(f"applying the plan to {len(plan)} layers"):
        model = apply_plan(loaded.model, plan, calibration, info=loaded.info)
    with _step("evaluating"):
        metrics = _evaluate(args, loaded, reference, model, plan)
    if args.json:
        print(json.dumps({"model": args.model, "plan": args.plan, "metrics": metrics}, indent=2))
        return 0
    console = _console()
    console.print(plan)
    for k, v in metrics.items():
        console.print(f"{k:>16}: {v:.6g}")
    return 0


def _cmd_search(args: argparse.Namespace) -> int:
    from autocompress.config import SearchConfig

    overrides: dict = {}
    if args.trials is not None:
        overrides["budget"] = {"n_trials": args.trials}
    backend = {k: v for k, v in (("name", args.backend), ("workers", args.workers)) if v is not None}
    if backend:
        overrides["backend"] = backend
    if args.run_dir:
        overrides["run_dir"] = args.run_dir
    config = SearchConfig.from_yaml(args.config, overrides)
    return _run_and_report(config, args)


def _run_and_report(config: Any, args: argparse.Namespace) -> int:
    from autocompress.search.driver import run_search

    out = _console()
    result = run_search(config, show_progress=not args.quiet)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    from rich.table import Table

    names = list(result.pareto[0].values) if result.pareto else []
    table = Table(title=f"Pareto front of {result.study_name}: {len(result.pareto)} feasible trials")
    for col in ("trial", *names, "plan (layers per setting)"):
        table.add_column(col, justify="right" if col in names or col == "trial" else "left")
    first = names[0] if names else None
    for p in sorted(result.pareto, key=lambda p: p.values[first] if first else p.number):
        table.add_row(str(p.number), *(f"{p.values[n]:.5g}" for n in names), p.plan_summary)
    out.print(table)
    counts = ", ".join(f"{v} {k.lower()}" for k, v in sorted(result.counts.items()))
    out.print(f"trials: {counts}; {result.elapsed_s:.0f} s")
    if result.picked is not None:
        values = ", ".join(f"{k} {v:.5g}" for k, v in result.picked.values.items())
        out.print(f"picked ({result.pick_rule}): trial {result.picked.number}: {values}; plan {result.picked.plan_path}")
    else:
        out.print(f"no feasible Pareto trial satisfies the pick rule ({result.pick_rule})")
    out.print(f"run directory: {result.run_dir} (plans/, pareto.md, summary.json)   study: {result.storage}")
    if result.tracking_uri.startswith("http"):
        out.print(f"MLflow: {result.ui_hint}")
    elif result.tracking_uri != "none":
        out.print(f"MLflow: autocompress ui {result.run_dir}")
    return 0


def _cmd_auto(args: argparse.Namespace) -> int:
    from autocompress.config import SearchConfig
    from autocompress.models import model_task
    from autocompress.search.auto import auto_config, write_auto_config

    task = model_task(args.model, task=args.task)  # the config alone: the workers load the weights
    name = os.path.basename(os.path.normpath(args.model)).replace(":", "-") or "model"
    run_dir = os.path.abspath(args.run_dir or os.path.join("runs", f"auto-{name}"))
    if args.target:
        from autocompress.hardware import load_profile

        load_profile(args.target)  # an unknown device fails here, listing the known ones
    data = auto_config(args.model, task, args.max_drop, args.trials, run_dir, args.backend, args.workers,
                       target=args.target)
    path = write_auto_config(data, run_dir)
    _console(stderr=True).print(f"wrote {path}: edit it and run `autocompress search {path}` to change the search")
    return _run_and_report(SearchConfig.from_yaml(path), args)


def _cmd_ui(args: argparse.Namespace) -> int:
    """Start the MLflow UI on the study's tracking store (127.0.0.1 unless --host says otherwise)."""
    import os
    import shutil
    import subprocess

    uri = args.tracking_uri
    if uri is None and args.run_dir:
        from autocompress.config import read_yaml

        cfg_path = os.path.join(args.run_dir, "config.yaml")
        if not os.path.isfile(cfg_path):
            raise UserError(f"{args.run_dir!r} is not a run directory (no config.yaml); give the run_dir of a search")
        uri = (read_yaml(cfg_path).get("tracking") or {}).get("uri", "sqlite:///mlflow.db")
    uri = uri or "sqlite:///mlflow.db"
    if uri == "none":
        raise UserError("this search ran with tracking.uri: none; there is nothing for the MLflow UI to show")
    if uri.startswith("http"):
        print(f"MLflow is served at {uri}")
        return 0
    if uri.startswith("sqlite:///") and not os.path.exists(uri[len("sqlite:///"):]):
        raise UserError(f"no MLflow store at {uri}; run a search first or pass --tracking-uri")
    exe = shutil.which("mlflow") or os.path.join(os.path.dirname(sys.executable), "mlflow")
    print(f"MLflow UI: http://{args.host}:{args.port}  (store {uri}; Ctrl-C stops it)", flush=True)
    cmd = [exe, "ui", "--backend-store-uri", uri, "--host", args.host, "--port", str(args.port)]
    try:
        return subprocess.call(cmd, env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    except KeyboardInterrupt:
        return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="autocompress", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def model_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("model", help="model directory, all-MiniLM-L6-v2, or random:bert|llama|gpt2")
        p.add_argument("--task", default="auto", help="auto, embedding, causal-lm or sequence-classification")
        p.add_argument("--trust-remote-code", action="store_true", help="run the model's own code (off by default)")
        p.add_argument("--json", action="store_true", help="print machine-readable JSON")

    p = sub.add_parser("inspect", help="print the layer inventory: names, shapes, params, structures, groups")
    model_args(p)
    p.set_defaults(func=_cmd_inspect)

    p = sub.add_parser("apply", help="apply a plan (JSON) to a model and print the metrics")
    model_args(p)
    p.add_argument("plan", help="a CompressionPlan JSON file")
    p.add_argument("--eval", help=f"comma list of {', '.join(EVALS)} (default: by task, plus size)")
    p.add_argument("--texts", default="builtin", help="evaluation texts: builtin or a .txt/.jsonl file")
    p.add_argument("--labels", help="labeled .jsonl/.csv (text,label) for --eval accuracy")
    p.add_argument("--calibration", default="builtin", help="calibration texts: builtin or a .txt/.jsonl file")
    p.add_argument("--n-eval", type=int, default=256, help="evaluation texts to use (default 256)")
    p.add_argument("--n-calibration", type=int, default=64, help="calibration texts (default 64)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_apply)

    p = sub.add_parser("search", help="run (or resume) the search a YAML config describes")
    p.add_argument("config", help="a search config (see examples/README.md)")
    p.add_argument("--trials", type=int, help="override budget.n_trials (total, counting earlier runs)")
    p.add_argument("--backend", choices=("local", "ray"), help="override backend.name")
    p.add_argument("--workers", type=int, help="override backend.workers")
    p.add_argument("--run-dir", help="override run_dir (the study's SQLite storage moves with it)")
    p.add_argument("--json", action="store_true", help="print a machine-readable summary last")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_search)

    p = sub.add_parser("auto", help="hands-off: write a complete config for MODEL into the run dir and run it")
    p.add_argument("model", help="model directory, all-MiniLM-L6-v2, or random:bert|llama|gpt2")
    p.add_argument("--task", default="auto", help="auto, embedding or causal-lm")
    p.add_argument("--target", help="device profile to optimize predicted latency for (e.g. h100-sxm, cpu-local; "
                                    "`autocompress latency profiles` lists them); without it, packed size")
    p.add_argument("--max-drop", type=float, default=0.01,
                   help="quality you can give up (default 0.01: fidelity >= 0.99, or perplexity within 1%%)")
    p.add_argument("--trials", type=int, default=48, help="trials to run (default 48)")
    p.add_argument("--backend", choices=("local", "ray"), default="ray")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--run-dir", help="where the config and results go (default runs/auto-<model>)")
    p.add_argument("--json", action="store_true", help="print a machine-readable summary last")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_auto)

    p = sub.add_parser("ui", help="open the MLflow UI on a search's tracking store (127.0.0.1)")
    p.add_argument("run_dir", nargs="?", help="a search's run directory (its config names the store)")
    p.add_argument("--tracking-uri", help="the MLflow store (default: the run's, else sqlite:///mlflow.db)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=5000)
    p.set_defaults(func=_cmd_ui)

    from autocompress.latency_cli import add_latency_commands

    add_latency_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
