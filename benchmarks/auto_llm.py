"""`autocompress auto` on the real SmolLM2-135M-Instruct, hands-off through export and generation, as a user runs it.

Run:  .venv/bin/python benchmarks/auto_llm.py [--trials 8] [--work-dir DIR]
Writes benchmarks/results/auto_smollm2.{json,md}. (--model, --backend, --eager and --out run the same steps on
another model, e.g. random:llama-tied in tests/test_bench_auto_llm.py.)

Three CLI commands in fresh processes, each timed:
  autocompress auto SmolLM2-135M-Instruct --target cpu-local --trials N --json      (the search: Ray, 2 workers)
  autocompress export RUN_DIR --out EXPORT --json                                   (packed format, reloaded)
  autocompress generate EXPORT --json                                               (compiled decode, CPU kernels)
Recorded: the picked trial's metrics, the export's re-measured metrics beside the search's (largest relative
difference), the weight files' bytes against the size model's, the greedy completions and ms/token of the
export (the first prompt includes compiling, so ms/token is the median of the later prompts). MLflow goes to a
SQLite store in the work directory. SmolLM2 comes from a Q4_1 GGUF: its weights lie on a 4-bit, group-32
asymmetric grid.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import ROOT, env_words, load_average, machine_env, save_results  # noqa: E402

MODEL = "SmolLM2-135M-Instruct"


def run_cli(args: list[str], cwd: Path) -> tuple[dict, float]:
    """`python -m autocompress ARGS` in `cwd`: its JSON stdout and wall seconds; a failure raises with stderr."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "autocompress", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"autocompress {' '.join(args)} exited {done.returncode}:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout), seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--work-dir", help="where the run and the export go (default: a new temporary folder)")
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--backend", choices=("ray", "local"), default="ray")
    parser.add_argument("--eager", action="store_true", help="generate without compiling")
    parser.add_argument("--out", default="auto_smollm2", help="results stem (a bare name: benchmarks/results/)")
    args = parser.parse_args(argv)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="auto-llm-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    env = machine_env()
    run_dir, out_dir = work / "run", work / "export"

    summary, search_s = run_cli(["auto", args.model, "--target", "cpu-local", "--trials", str(args.trials),
                                 "--backend", args.backend, "--run-dir", str(run_dir), "--quiet", "--json"], work)
    picked = summary["picked"]
    if picked is None:
        raise RuntimeError(f"the search picked no trial: {summary['counts']}")
    exported, export_s = run_cli(["export", str(run_dir), "--out", str(out_dir), "--json"], work)
    generated, generate_s = run_cli(["generate", str(out_dir), "--json", *(["--eager"] if args.eager else [])], work)
    later = [r["seconds"] * 1000 / max(r["new_tokens"], 1) for r in generated["results"][1:]]
    env["load_after"] = load_average()
    result = {
        "env": env, "model": args.model, "trials": args.trials, "backend": args.backend, "counts": summary["counts"],
        "seconds": {"auto": round(search_s, 1), "export": round(export_s, 1), "generate": round(generate_s, 1)},
        "picked": {k: picked[k] for k in ("number", "values", "metrics", "plan_summary", "baseline")},
        "front": [{"number": t["number"], "values": t["values"], "plan_summary": t["plan_summary"]}
                  for t in summary["pareto"]], "pick_rule": summary["pick_rule"],
        "export": {k: exported[k] for k in ("trial", "format", "searched", "measured", "file_bytes",
                                            "predicted_bytes", "max_relative_diff", "kernels")},
        "generate": {"results": generated["results"], "ms_per_token_after_compile": round(statistics.median(later), 1)
                     if later else None},
    }
    result["export"]["kernels"] = dict(sorted(Counter(exported["kernels"].values()).items()))  # kernel -> layers
    save_results(args.out, result, markdown(result))
    return 0


def markdown(r: dict) -> str:
    e, p = r["export"], r["picked"]
    values = ", ".join(f"{k} {v:.4g}" for k, v in p["values"].items())
    metrics = ", ".join(f"{k} {v:.4g}" for k, v in sorted(p["metrics"].items()))
    lines = [f"# `autocompress auto {r['model']} --target cpu-local` through export and generation "
             "(benchmarks/auto_llm.py)", "",
             f"{env_words(r['env'])}" + (" The model's weights lie on the GGUF's Q4_1 grid (4-bit, asymmetric, "
                                         "groups of 32)." if r["model"] == MODEL else "") +
             f" {r['trials']} trials on the {r['backend']} backend"
             f"{' (2 workers, the default)' if r['backend'] == 'ray' else ''}, MLflow on SQLite.", "",
             "| step | command | wall s |", "|---|---|---:|",
             f"| search | `autocompress auto {r['model']} --target cpu-local --trials {r['trials']}"
             f"{' --backend local' if r['backend'] == 'local' else ''}` | "
             f"{r['seconds']['auto']} |",
             f"| export | `autocompress export RUN_DIR --out EXPORT` | {r['seconds']['export']} |",
             f"| generate | `autocompress generate EXPORT` | {r['seconds']['generate']} |", "",
             f"Trials: {r['counts']}. Feasible Pareto front:", "", "| trial | " + " | ".join(p["values"]) +
             " | plan |", "|---|" + "---:|" * len(p["values"]) + "---|",
             *[f"| {t['number']} | " + " | ".join(f"{v:.4g}" for v in t["values"].values()) +
               f" | {t['plan_summary']} |" for t in r["front"]], "",
             f"Picked ({r['pick_rule']}): trial {p['number']} ({p['plan_summary']}"
             f"{', enqueued as ' + p['baseline'] if p['baseline'] else ''}): {values}; all metrics: {metrics}.", "",
             f"Export (`{e['format']}` format): weight files {e['file_bytes'] / 1e6:.2f} MB against the size model's "
             f"{e['predicted_bytes'] / 1e6:.2f} MB; kernels {e['kernels']}; largest relative difference of the "
             f"reloaded export's metrics from the search's: {e['max_relative_diff']:.2g}.", "",
             "| metric | search | reloaded export |", "|---|---:|---:|"]
    lines += [f"| {k} | {e['searched'][k]:.6g} | {e['measured'][k]:.6g} |"
              for k in sorted(set(e["searched"]) & set(e["measured"]))]
    g = r["generate"]
    runtime = g["results"][0]["runtime"]
    predicted = p["values"].get("latency_ms")
    lines += ["", f"Greedy completions of the export ({runtime} decode; {g['ms_per_token_after_compile']} ms/token, "
              "median over the prompts after the first" + (", which includes compiling" if runtime == "compiled"
                                                           else "") + "):", "",
              "| prompt | completion | new tokens | s |", "|---|---|---:|---:|"]
    lines += [f"| {x['prompt']} | {' '.join(x['completion'].split()).replace('|', '/')} | {x['new_tokens']} | "
              f"{x['seconds']:.2f} |" for x in g["results"]]
    if predicted:
        lines += ["", f"The search priced one decode step at {predicted:.2f} ms on the `cpu-local` profile; the "
                  "ms/token here also counts each prompt's eager prefill, and it is measured on this machine's CPU "
                  f"({r['env'].get('cpu_capability', 'unknown ISA')}); the profile's kernel timings come from the "
                  "machine it was calibrated on (`autocompress latency calibrate` measures one for the CPU at hand)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
