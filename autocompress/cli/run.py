"""The commands that start from a search's run directory: `export`, `report` and `ui`.

  autocompress export RUN_DIR [--trial N | --pick RULE] --out DIR [--format NAME] [--entropy CODER] [--strict]
                      [--force] [--json]
  autocompress report RUN_DIR [--out DIR] [--pick RULE | --trial N]
  autocompress ui [RUN_DIR] [--tracking-uri URI] [--host 127.0.0.1] [--port 5000] [--dashboard-port 8080]

Mounted by `autocompress.cli.build_parser`; `ui` runs in autocompress/ui.py (its servers, ports and signals).
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from autocompress.cli.common import add_output_args, console
from autocompress.errors import UserError
from autocompress.ui import cmd_ui


def _cmd_export(args: argparse.Namespace) -> int:
    from autocompress.export.from_run import export

    if args.trial is not None and args.pick:
        raise UserError("give either --trial N or --pick RULE, not both")
    err = console(stderr=True)

    def progress(message: str) -> None:
        if err.is_terminal:
            err.print(f"[dim]{message}...[/dim]")

    result = export(args.run_dir, args.out, trial=args.trial, pick=args.pick, force=args.force, progress=progress,
                    format=args.format, strict=args.strict, entropy=args.entropy)
    for line in result.warnings:
        err.print(f"warning: {line}", markup=False, highlight=False, soft_wrap=True)
    if args.json:
        print(json.dumps({**result.__dict__, "max_metric_diff": result.max_metric_diff,
                          "max_relative_diff": result.max_relative_diff}, indent=2))
        return 0
    out = console()
    out.print(f"exported trial {result.trial} to {result.out_dir} ({result.format} format)")
    out.print(f"  weight files: {result.file_bytes / 1e6:.3f} MB (size model: "
              f"{result.predicted_bytes / 1e6:.3f} MB, {result.file_bytes / max(result.predicted_bytes, 1) - 1:+.2%})")
    for k in sorted(set(result.searched) & set(result.measured)):
        out.print(f"  {k:>12}: search {result.searched[k]:.6g}, reloaded export {result.measured[k]:.6g}")
    if result.kernels:
        counts: dict[str, int] = {}
        for kind in result.kernels.values():
            counts[kind] = counts.get(kind, 0) + 1
        out.print("  with kernels=True: " + ", ".join(f"{n} layers {k}" for k, n in sorted(counts.items())))
    if result.logged_to:
        out.print(f"  logged to MLflow: {'; '.join(result.logged_to)}")
    if result.format == "autocompress":
        out.print(f"  load it: from autocompress.export import load_compressed; load_compressed({result.out_dir!r})")
    else:
        out.print(f"  how to load it: {os.path.join(result.out_dir, 'README.md')}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from autocompress.report import write_report
    from autocompress.search.tracking.artifacts import attach
    from autocompress.search.rundir.reader import RunDir

    run = RunDir.open(args.run_dir)
    files = write_report(run.path, args.out, pick=args.pick, trial=args.trial)
    folder = os.path.dirname(str(files.paths()[0]))
    logged = attach(run.config, folder, "report")
    out = console()
    out.print(f"report written to {folder}:")
    for path in files.paths():
        out.print(f"  {path}")
    if logged:
        out.print(f"attached to the MLflow {logged[0]} (artifacts/report): autocompress ui {run.path}")
    return 0


def add_run_commands(sub: Any) -> None:
    """Mount `export`, `report` and `ui` on the top-level subparsers."""
    p = sub.add_parser("export", help="write a trial's compressed model: packed (autocompress), compressed-tensors "
                                      "(transformers, vLLM) or gguf (llama.cpp)")
    p.add_argument("run_dir", help="a search's run directory")
    p.add_argument("--out", required=True, help="directory to write (refused if it exists, unless --force)")
    p.add_argument("--trial", type=int, help="the trial number to export (default: the config's pick rule)")
    p.add_argument("--pick", help="a pick rule, e.g. 'minimize size_mb where fidelity >= 0.99'")
    p.add_argument("--format", default="autocompress", metavar="NAME",  # checked by export.formats.get_format
                   help="export format: autocompress (default; load_compressed), compressed-tensors (transformers, "
                        "vLLM), gguf (llama.cpp)")
    p.add_argument("--entropy", metavar="CODER", help="code the packed tensors losslessly: zstd, lzma or "
                   "zlib (the autocompress format; load_compressed decodes them)")
    p.add_argument("--strict", action="store_true",
                   help="refuse a plan the format would write partly dense or without its sparse saving")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    add_output_args(p, "print a machine-readable summary", progress=False)
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("report", help="the Pareto front, baselines and the picked plan as PNG, HTML and markdown")
    p.add_argument("run_dir", help="a search's run directory")
    p.add_argument("--out", help="where the files go (default RUN_DIR/report)")
    p.add_argument("--pick", help="the pick rule for the plan heat map (default: the config's)")
    p.add_argument("--trial", type=int, help="draw this trial's plan instead")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("ui", help="open the MLflow UI (and optuna-dashboard) on a search (127.0.0.1)")
    p.add_argument("run_dir", nargs="?", help="a search's run directory (its config names the stores)")
    p.add_argument("--tracking-uri", help="the MLflow store (default: the run's, else sqlite:///mlflow.db)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=5000, help="MLflow UI port (default 5000)")
    p.add_argument("--dashboard-port", type=int, default=8080, help="optuna-dashboard port (default 8080)")
    p.add_argument("--no-dashboard", action="store_true", help="do not start optuna-dashboard")
    p.set_defaults(func=cmd_ui)
