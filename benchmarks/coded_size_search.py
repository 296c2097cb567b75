"""A search whose space holds k-means clustering beside uniform grids and whose objective is the entropy-coded
size: the real all-MiniLM-L6-v2, per layer group 8/4/3-bit weights by RTN or k-means (or none) and 0 or 50%
magnitude pruning, the embedding tables at 8 or 4 bits; objectives maximize fidelity and minimize
`size_coded_mb` (the zstd-coded bytes of the packed tensors, measured by the worker), constraint fidelity >= 0.95.
Reports every complete trial (coded and uncoded size, which layers use k-means) and the feasible front to
benchmarks/results/coded_size_search_minilm.{json,md}.

    python benchmarks/coded_size_search.py [--trials 40] [--run-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import ROOT, env_words, load_average, machine_env, save_results  # noqa: E402

SPACE = {"share": "group",
         "quantize": {"bits": [8, 4, 3, None], "group_size": {8: [None], 4: [128], 3: [128]},
                      "method": ["rtn", "kmeans"]},
         "prune": {"sparsity": [0.0, 0.5], "method": ["magnitude"]},
         "embeddings": {"bits": [8, 4], "group_size": [32]}}


def kmeans_share(plan: dict) -> float:
    """The share of a plan's quantized layers that use k-means."""
    quantized = [e for e in plan.get("layers", {}).values() if e.get("bits") is not None]
    return sum(e.get("quant_method") == "kmeans" for e in quantized) / len(quantized) if quantized else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--run-dir", default=None, help="default: a temporary directory")
    parser.add_argument("--out", default="coded_size_search_minilm")
    args = parser.parse_args()

    from autocompress.config import SearchConfig
    from autocompress.search.driver import run_search
    from autocompress.search.study import open_study

    env = machine_env()
    root = Path(args.run_dir or tempfile.mkdtemp(prefix="coded-size-"))
    config = SearchConfig.from_dict({
        "model": {"name": "all-MiniLM-L6-v2"},
        "data": {"calibration": {"source": "builtin", "n": 64, "seed": 1},
                 "evaluation": {"source": "builtin", "n": 128, "seed": 0}},
        "space": SPACE, "objectives": ["maximize fidelity", "minimize size_coded_mb"],
        "constraints": ["fidelity >= 0.95"], "budget": {"n_trials": args.trials},
        "sampler": {"name": "nsga2", "seed": 0, "population_size": 8},
        "backend": {"name": "local", "cpus_per_trial": 1},
        "pick": "minimize size_coded_mb where fidelity >= 0.99",
        "run_dir": str(root / "run"), "study_name": "coded-size",
        "tracking": {"uri": f"sqlite:///{root / 'mlflow.db'}"}}).resolved(ROOT)
    result = run_search(config).to_dict()
    front = {p["number"] for p in result["pareto"]}
    rows = []
    for t in open_study(config).get_trials(deepcopy=False):
        if t.state.name != "COMPLETE":
            continue
        plan_file = Path(config.run_dir) / "plans" / f"trial-{t.number:04d}.json"
        plan = json.loads(plan_file.read_text()) if plan_file.exists() else {}
        m = t.user_attrs.get("metrics", {})
        rows.append({"number": t.number, "front": t.number in front, "kmeans_share": kmeans_share(plan),
                     "summary": t.user_attrs.get("plan_summary", ""),
                     **{k: m.get(k) for k in ("fidelity", "size_mb", "size_coded_mb")}})
    env["load_after"] = load_average()
    on_front = [r for r in rows if r["front"]]
    lines = [f"# A search over k-means and uniform grids for the coded size: all-MiniLM-L6-v2 ({args.trials} trials)",
             "", f"{env_words(env)} Space: per layer group 8/4/3-bit weights by RTN or k-means (or none), 0 or 50% "
             "magnitude pruning, tables at 8 or 4 bits; objectives fidelity and size_coded_mb (zstd); constraint "
             f"fidelity >= 0.95. Elapsed {result['elapsed_s']:.0f} s; trials {result['counts']}.", "",
             f"Front: {len(on_front)} trials, {sum(r['kmeans_share'] > 0 for r in on_front)} of them with k-means "
             "layers.", "",
             "| trial | front | fidelity | size MB | coded MB | coded / size | k-means share of quantized layers | plan |",
             "|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (not r["front"], r["size_coded_mb"])):
        lines.append(f"| {r['number']} | {'yes' if r['front'] else ''} | {r['fidelity']:.4f} | {r['size_mb']:.2f} | "
                     f"{r['size_coded_mb']:.2f} | {r['size_coded_mb'] / r['size_mb']:.3f} | {r['kmeans_share']:.0%} | "
                     f"{r['summary']} |")
    save_results(args.out, {"env": env, "trials": args.trials, "result": result, "rows": rows},
                 "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
