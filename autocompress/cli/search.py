"""The commands that run a search: `search`, `auto` and `sensitivity`.

  autocompress search CONFIG.yaml [--trials N] [--backend local|ray] [--workers N] [--run-dir DIR] [--json]
  autocompress auto MODEL [--target DEVICE] [--max-drop 0.01] [--trials N] [--run-dir DIR]
  autocompress sensitivity CONFIG.yaml [--run-dir DIR] [--force] [--json]

Mounted by `autocompress.cli.build_parser`.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from autocompress.cli.common import MODEL_HELP, add_output_args, add_task_args, console


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

    out = console()
    result = run_search(config, show_progress=not args.quiet)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    from rich.table import Table

    names = list(result.pareto[0].values) if result.pareto else []
    n = len(result.pareto)
    table = Table(title=f"Pareto front of {result.study_name}: {n} feasible trial{'' if n == 1 else 's'}")
    for col in ("trial", *names, "plan (layers per setting)"):
        table.add_column(col, justify="right" if col in names or col == "trial" else "left")
    first = names[0] if names else None
    for p in sorted(result.pareto, key=lambda p: p.values[first] if first else p.number):
        table.add_row(str(p.number), *(f"{p.values[n]:.5g}" for n in names), p.plan_summary)
    out.print(table)
    counts = ", ".join(f"{v} {k.lower()}" for k, v in sorted(result.counts.items()))
    repeats = (f" ({result.repeats} repeated an earlier trial's plan: metrics reused, not counted toward "
               "budget.n_trials)") if result.repeats else ""
    out.print(f"trials: {counts}{repeats}; {result.elapsed_s:.0f} s")
    if result.picked is not None:
        values = ", ".join(f"{k} {v:.5g}" for k, v in result.picked.values.items())
        out.print(f"picked ({result.pick_rule}): trial {result.picked.number}: {values}; "
                  f"plan {result.picked.plan_path}")
    else:
        out.print(f"no feasible Pareto trial satisfies the pick rule ({result.pick_rule})")
    out.print(f"run directory: {result.run_dir} (plans/, pareto.md, summary.json)   study: {result.storage}")
    if result.tracking_uri.startswith("http"):
        out.print(f"MLflow: {result.ui_hint}")
    elif result.tracking_uri != "none":
        out.print(f"MLflow: autocompress ui {result.run_dir}")
    if result.hint:
        out.print(f"hint: {result.hint}")
    return 0


def _cmd_auto(args: argparse.Namespace) -> int:
    from autocompress.config import SearchConfig
    from autocompress.loading import meta_inventory
    from autocompress.search.auto import auto_config, write_auto_config

    info = meta_inventory(args.model, task=args.task)  # the config alone: the workers load the weights
    task = info.task
    name = os.path.basename(os.path.normpath(args.model)).replace(":", "-") or "model"
    run_dir = os.path.abspath(args.run_dir or os.path.join("runs", f"auto-{name}"))
    from autocompress.errors import echo
    from autocompress.paths import check_dir

    check_dir(run_dir, f"--run-dir {echo(run_dir)}")  # before auto.yaml is written into it
    if args.target:
        from autocompress.hardware import load_profile

        load_profile(args.target)  # an unknown device fails here, listing the known ones
    data = auto_config(args.model, task, args.max_drop, args.trials, run_dir, args.backend, args.workers,
                       target=args.target, seed_sensitivity=args.seed_sensitivity, info=info)
    path = write_auto_config(data, run_dir)
    console(stderr=True).print(f"wrote {path}: edit it and run `autocompress search {path}` to change the search")
    return _run_and_report(SearchConfig.from_yaml(path), args)



def _cmd_sensitivity(args: argparse.Namespace) -> int:
    """Measure (or read back) the per-unit sensitivity of a config's space, on its own backend."""
    from autocompress.config import SearchConfig
    from autocompress.search.tracking.artifacts import attach
    from autocompress.search.workers.backends import make_backend
    from autocompress.search.preflight import preflight
    from autocompress.search.progress import sensitivity_progress
    from autocompress.search.seeding.sensitivity import FILE, load_or_measure
    from autocompress.spaces import ConfigSpace

    config = SearchConfig.from_yaml(args.config, {"run_dir": args.run_dir} if args.run_dir else None)
    preflight(config)
    run_dir = Path(config.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if args.force and (run_dir / FILE).exists():
        (run_dir / FILE).unlink()
    backend = make_backend(config)
    try:
        info = backend.start()
        space = ConfigSpace(config.space, info, config.target_format)
        with sensitivity_progress(enabled=not args.quiet) as progress:
            sens, fresh = load_or_measure(config, backend, info, space, run_dir, progress=progress)
    finally:
        backend.close()
    attach(config, run_dir / FILE)
    if args.json:
        print(json.dumps(sens.__dict__, indent=1))
        return 0
    out = console()
    from rich.table import Table

    labels = list(dict.fromkeys(label for drops in sens.layers.values() for label in drops))
    table = Table(title=f"{sens.metric} drop when one unit alone is compressed (reference {sens.reference:.5g})")
    table.add_column("unit")
    for label in labels:
        table.add_column(_short_label(label), justify="right")
    for unit, drops in sens.layers.items():
        table.add_row(unit, *(f"{drops[label]:.4f}" if label in drops else "-" for label in labels))
    out.print(table)
    how = f"measured now: {sens.evaluations} plans in {sens.seconds:.0f} s" if fresh else "read from the cache"
    out.print(f"{run_dir / FILE} ({how}); `sensitivity: {{seed: true}}` in the config seeds the search with it")
    return 0


def _short_label(label: str) -> str:
    """A sensitivity label as a column header: "quantize bits=4 group_size=128 act_bits=8" -> "W4 g128 A8"."""
    if not label.startswith("quantize "):
        return label
    words = label.removeprefix("quantize ").replace("bits=", "W", 1).replace("group_size=", "g").split()
    return " ".join("A8" if w == "act_bits=8" else w for w in words if w != "act_bits=None")


def add_search_commands(sub: Any) -> None:
    """Mount `search`, `auto` and `sensitivity` on the top-level subparsers."""
    p = sub.add_parser("search", help="run (or resume) the search a YAML config describes")
    p.add_argument("config", help="a search config (see examples/README.md)")
    p.add_argument("--trials", type=int, help="override budget.n_trials (total, counting earlier runs)")
    p.add_argument("--backend", choices=("local", "ray"), help="override backend.name")
    p.add_argument("--workers", type=int, help="override backend.workers")
    p.add_argument("--run-dir", help="override run_dir (the study's SQLite storage moves with it)")
    add_output_args(p, "print a machine-readable summary last")
    p.set_defaults(func=_cmd_search)

    p = sub.add_parser("auto", help="hands-off: write a complete config for MODEL into the run dir and run it")
    p.add_argument("model", help=MODEL_HELP)
    add_task_args(p, trust_remote_code=False, task_help="auto, embedding or causal-lm")
    p.add_argument("--target", help="device profile to optimize predicted latency for (e.g. h100-sxm, cpu-local; "
                                    "`autocompress latency profiles` lists them); without it, packed size")
    p.add_argument("--max-drop", type=float, default=0.01,
                   help="quality you can give up (default 0.01: fidelity >= 0.99, or perplexity within 1%%)")
    p.add_argument("--trials", type=int, default=48, help="trials to run (default 48)")
    p.add_argument("--backend", choices=("local", "ray"), default="ray")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--run-dir", help="where the config and results go (default runs/auto-<model>)")
    p.add_argument("--seed-sensitivity", action="store_true",
                   help="measure each unit's sensitivity first and start the study from the plans it suggests "
                        "(better fronts; costs one evaluation per unit and choice)")
    add_output_args(p, "print a machine-readable summary last")
    p.set_defaults(func=_cmd_auto)

    p = sub.add_parser("sensitivity", help="measure each layer's quality drop when it alone is compressed")
    p.add_argument("config", help="a search config (its space, data, backend and run_dir are used)")
    p.add_argument("--run-dir", help="override run_dir (the measurement is cached there)")
    p.add_argument("--force", action="store_true", help="measure again even if a cached result matches")
    add_output_args(p, "print the measurement as JSON")
    p.set_defaults(func=_cmd_sensitivity)
