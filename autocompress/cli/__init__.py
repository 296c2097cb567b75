"""The `autocompress` command line: `main(argv) -> exit code` and the parser.

  autocompress inspect MODEL [--task T] [--json]
  autocompress apply MODEL PLAN.json [--eval fidelity,size] [--texts builtin|python-docs|FILE] [--labels FILE]
                     [--json]
  autocompress search CONFIG.yaml [--trials N] [--backend local|ray] [--workers N] [--run-dir DIR] [--json]
  autocompress auto MODEL [--target DEVICE] [--max-drop 0.01] [--trials N] [--run-dir DIR]
  autocompress export RUN_DIR [--trial N | --pick RULE] --out DIR [--format autocompress|compressed-tensors|gguf]
                      [--entropy zstd|lzma|zlib] [--strict] [--force]
  autocompress generate EXPORT_DIR [--prompt TEXT ...] [--max-new-tokens 32] [--eager] [--json]
  autocompress report RUN_DIR [--out DIR]
  autocompress ui [RUN_DIR] [--tracking-uri URI] [--host 127.0.0.1] [--port 5000]
  autocompress latency calibrate --model MODEL --out PROFILE.yaml [--device cpu|cuda] [--batch 1] [--seq-len 128]
  autocompress latency profiles
  autocompress latency predict PLAN.json|CONFIG.yaml --profile P [--model MODEL] [--latency-model roofline|table]

Bad input (a missing model, a plan that does not fit the model, values out of range) prints one line,
`error: ...`, naming the problem and the fix, and exits with code 2. Progress goes to stderr; results to
stdout.

One module per command family, each mounting its commands with an `add_*_commands(subparsers)`: model.py
(`inspect`, `apply`), search.py (`search`, `auto`, `sensitivity`), run.py (`export`, `report`, `ui`; the
servers of `ui` in autocompress/ui.py), latency.py (`latency ...`), generate.py (`generate`); common.py
holds what they share.
"""

from __future__ import annotations

import argparse
import sys

from autocompress.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    from autocompress.cli.generate import add_generate_commands
    from autocompress.cli.latency import add_latency_commands
    from autocompress.cli.model import add_model_commands
    from autocompress.cli.run import add_run_commands
    from autocompress.cli.search import add_search_commands

    parser = argparse.ArgumentParser(prog="autocompress", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (add_model_commands, add_search_commands, add_latency_commands, add_run_commands,
                add_generate_commands):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; bad input (`UserError`) prints one `error: ...` line and returns 2, Ctrl-C returns 130."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
