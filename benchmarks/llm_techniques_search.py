"""One search whose space holds every LLM technique beside bits: examples/llm_techniques.yaml on the real
SmolLM2-135M-Instruct (weight bits per layer group, the tied table / head, KV-cache bits, the share of the
vocabulary kept, whole blocks dropped in Block Influence order), against KL, decode latency at 1,024 tokens of
context and memory. Reports every complete trial and the feasible Pareto front, with which plan-level
techniques each plan uses, to benchmarks/results/llm_techniques_search_smollm2.{json,md}.

    python benchmarks/llm_techniques_search.py [--trials 24] [--run-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import ROOT, env_words, load_average, machine_env, save_results  # noqa: E402

TECHNIQUES = ("kv_cache", "vocab", "drop_blocks")


def uses(plan: dict) -> list[str]:
    """The plan-level techniques a plan JSON uses (besides its layer entries)."""
    return [t for t in TECHNIQUES if plan.get(t)]


def trial_rows(study, run_dir: Path, front: set[int]) -> list[dict]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        if t.state.name != "COMPLETE":
            continue
        plan_file = run_dir / "plans" / f"trial-{t.number:04d}.json"
        plan = json.loads(plan_file.read_text()) if plan_file.exists() else {}
        m = t.user_attrs.get("metrics", {})
        rows.append({"number": t.number, "front": t.number in front, "uses": uses(plan),
                     "summary": t.user_attrs.get("plan_summary", ""), "baseline": t.user_attrs.get("baseline"),
                     **{k: m.get(k) for k in ("kl", "perplexity_ratio", "latency_ms", "memory_mb", "size_mb")}})
    return rows


def markdown(env: dict, rows: list[dict], result: dict, trials: int) -> str:
    front = [r for r in rows if r["front"]]
    used = sorted({u for r in front for u in r["uses"]})
    lines = [f"# Every LLM technique in one search: SmolLM2-135M-Instruct ({trials} trials)", "",
             f"{env_words(env)} examples/llm_techniques.yaml: weight bits (RTN) per layer group, the tied table at "
             "8 or 4 bits, KV cache 16/8/4 bits, vocabulary kept 1.0/0.5, up to 4 blocks dropped by Block "
             f"Influence; objectives KL, decode ms at 1,024 tokens (cpu-local), memory MB; constraint kl <= 0.5. "
             f"Elapsed {result['elapsed_s']:.0f} s; trials {result['counts']}.", "",
             f"Plan-level techniques on the feasible front: {', '.join(used) if used else 'none'}.", "",
             "| trial | front | plan-level | KL | perplexity ratio | decode ms | memory MB | plan |",
             "|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (not r["front"], r["kl"] if r["kl"] is not None else 1e9)):
        lines.append(f"| {r['number']} | {'yes' if r['front'] else ''} | {', '.join(r['uses']) or '-'} | "
                     f"{r['kl']:.4f} | {r['perplexity_ratio']:.3f} | {r['latency_ms']:.2f} | {r['memory_mb']:.1f} | "
                     f"{r['summary']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--run-dir", default=None, help="default: a temporary directory")
    parser.add_argument("--out", default="llm_techniques_search_smollm2")
    args = parser.parse_args()

    import yaml

    from autocompress.config import SearchConfig
    from autocompress.search.driver import run_search
    from autocompress.search.study import open_study

    env = machine_env()
    root = Path(args.run_dir or tempfile.mkdtemp(prefix="llm-techniques-"))
    data = yaml.safe_load((ROOT / "examples" / "llm_techniques.yaml").read_text())
    data.update({"run_dir": str(root / "run"), "study_name": "llm-techniques",
                 "tracking": {"uri": f"sqlite:///{root / 'mlflow.db'}"}})
    data["budget"]["n_trials"] = args.trials
    config = SearchConfig.from_dict(data).resolved(ROOT)
    result = run_search(config).to_dict()
    front = {p["number"] for p in result["pareto"]}
    rows = trial_rows(open_study(config), Path(config.run_dir), front)
    env["load_after"] = load_average()
    save_results(args.out, {"env": env, "trials": args.trials, "result": result, "rows": rows},
                 markdown(env, rows, result, args.trials))


if __name__ == "__main__":
    main()
