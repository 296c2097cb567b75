"""Hand-built plans around the uniform corners of the search_quality --gptq --embeddings --wide space: which
plans beat the uniform baselines at all, and is "1.5x smaller at uniform 8-bit's fidelity" reachable there?

Run:  .venv/bin/python benchmarks/uniform_corners.py
Writes benchmarks/results/uniform_corners.{json,md}.

Setup: the real all-MiniLM-L6-v2 and the data of benchmarks/search_quality.py (calibration n 64 seed 1,
evaluation n 128 seed 0, builtin texts); the space of `search_quality.py --gptq --embeddings --wide` (per
layer group: GPTQ weight bits {3, 4, 5, 6, 8, off}, group size {32, 128}, int8 activations {on, off}; each
embedding table its own unit: bits {8, 6, 5, 4, off}, group size {32, 128}). Each plan is
built with `ConfigSpace.replay` (so it is a plan the search can sample), applied and evaluated by a `TrialRunner` (local, 1 torch thread), and sized with
`plan_size` (the packed bytes `export` writes). The uniform baselines are the ones the search starts from
(`ConfigSpace.uniform_params`: int8 activations and group size 32, the first choices).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import save_results  # noqa: E402
from benchmarks.search_quality import GPTQ_SPACE, WIDE_BITS, WIDE_TABLES  # noqa: E402


def is_ffn(unit: str) -> bool:
    return "intermediate" in unit or ("output.dense" in unit and "attention" not in unit)


def corner_plans(space: Any) -> dict[str, Any]:
    """Name -> plan. `bits_of(unit)` decides each layer group's weight bits; `tables` the bits of every table,
    `table_bits` ({"word": 4, ...}, by table kind) some tables' bits instead; `table_group` the tables' group
    size; the rest is uniform."""

    def plan(bits_of: Callable[[str], int | None], act: int | None = None, tables: int | None = 4,
             group: int = 32, table_bits: dict[str, int | None] | None = None, table_group: int = 32) -> Any:
        def pick(unit: str, field: str, choices: list) -> Any:
            if unit.startswith("embeddings."):
                kind = unit.removeprefix("embeddings.").removesuffix("_embeddings")
                return {"bits": (table_bits or {}).get(kind, tables), "group_size": table_group}.get(field, choices[0])
            return {"bits": bits_of(unit), "act_bits": act, "group_size": group}.get(field, choices[0])

        return space.replay(pick)[1]

    return {
        "uniform W8A8, tables 8 (baseline)": plan(lambda u: 8, act=8, tables=8),
        "uniform W4A8, tables 4 (baseline)": plan(lambda u: 4, act=8, tables=4),
        "uniform W3A8, tables 4 (baseline)": plan(lambda u: 3, act=8, tables=4),
        "uniform W8, tables 8 (baseline)": plan(lambda u: 8, tables=8),
        "W8, tables 8, group 128": plan(lambda u: 8, tables=8, group=128),
        "W8, tables 4": plan(lambda u: 8, tables=4),
        "Linear off (fp32), tables 4": plan(lambda u: None, tables=4),
        "W4, tables 8": plan(lambda u: 4, tables=8),
        "W3, tables 8": plan(lambda u: 3, tables=8),
        "W3, tables 8, group 128": plan(lambda u: 3, tables=8, group=128),
        "uniform W4, tables 4 (baseline)": plan(lambda u: 4, tables=4),
        "W4, tables 4, group 128": plan(lambda u: 4, tables=4, group=128),
        "attention W8 / FFN W4, tables 4": plan(lambda u: 4 if is_ffn(u) else 8, tables=4),
        "attention W4 / FFN W8, tables 4": plan(lambda u: 8 if is_ffn(u) else 4, tables=4),
        "attention W8 / FFN W4, tables 8": plan(lambda u: 4 if is_ffn(u) else 8, tables=8),
        "W8, tables off (fp32)": plan(lambda u: 8, tables=None),
        # the tables apart (each table is a unit of its own), and 5/6-bit choices (the --wide space)
        "Linear off (fp32), word table 4, other tables 8": plan(lambda u: None, tables=8, table_bits={"word": 4}),
        **{f"Linear off (fp32), only the {t} table at 4 bits": plan(lambda u: None, tables=None, table_bits={t: 4})
           for t in ("word", "position", "token_type")},
        "W8, word table 4, other tables 8": plan(lambda u: 8, tables=8, table_bits={"word": 4}),
        "W8, word table 6, other tables 8": plan(lambda u: 8, tables=8, table_bits={"word": 6}),
        "W8, word table 8 g128, other tables 8": plan(lambda u: 8, tables=8, table_group=128),
        "W6, tables 8": plan(lambda u: 6, tables=8),
        "W6, word table 5, other tables 8": plan(lambda u: 6, tables=8, table_bits={"word": 5}),
        "W6, word table 5, other tables 8, all group 128":
            plan(lambda u: 6, tables=8, table_bits={"word": 5}, group=128, table_group=128),
        "W6 group 128, word table 5, other tables 8": plan(lambda u: 6, tables=8, table_bits={"word": 5}, group=128),
        "W6, word table 4, other tables 8": plan(lambda u: 6, tables=8, table_bits={"word": 4}),
        "W5, word table 5, other tables 8": plan(lambda u: 5, tables=8, table_bits={"word": 5}),
        "attention W8 / FFN W6, word table 5, other tables 8, all group 128":
            plan(lambda u: 6 if is_ffn(u) else 8, tables=8, table_bits={"word": 5}, group=128, table_group=128),
        "attention W6 / FFN W5, word table 5, other tables 8, all group 128":
            plan(lambda u: 5 if is_ffn(u) else 6, tables=8, table_bits={"word": 5}, group=128, table_group=128),
    }


def main() -> int:
    import torch

    from autocompress.config import SearchConfig
    from autocompress.evaluators.size import plan_size
    from autocompress.search.workers.runner import TrialRunner
    from autocompress.spaces import ConfigSpace

    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="uniform-corners-")) / "run"
    config = SearchConfig.from_dict({
        "model": {"name": "all-MiniLM-L6-v2"},
        "data": {"calibration": {"source": "builtin", "n": 64, "seed": 1},
                 "evaluation": {"source": "builtin", "n": 128, "seed": 0}},
        "space": {**GPTQ_SPACE, "quantize": {**GPTQ_SPACE["quantize"], "bits": WIDE_BITS},
                  "embeddings": WIDE_TABLES}, "objectives": ["maximize fidelity", "minimize size_mb"],
        "backend": {"name": "local"}, "tracking": {"uri": "none"}, "run_dir": str(work)}).resolved(work.parent)
    runner = TrialRunner(config)
    space = ConfigSpace(config.space, runner.info)
    rows = []
    for name, plan in corner_plans(space).items():
        start = time.perf_counter()
        outcome = runner.run(plan.to_json())
        if outcome.error:
            raise RuntimeError(f"{name}: {outcome.error}")
        rows.append({"plan": name, "fidelity": round(outcome.metrics["fidelity"], 5),
                     "size_mb": round(plan_size(plan, runner.info).size_mb, 3),
                     "seconds": round(time.perf_counter() - start, 1)})
        print(json.dumps(rows[-1]), flush=True)
    base8 = next(r for r in rows if r["plan"].startswith("uniform W8A8"))
    lines = ["# Plans around the uniform corners (benchmarks/uniform_corners.py)", "",
             "The real all-MiniLM-L6-v2; the space of `search_quality.py --gptq --embeddings --wide`; GPTQ, one torch "
             "thread. \"Dominates\" names the uniform baselines (fidelity >= 0.95) this plan is at least as good "
             "as on both axes and better on one.", "",
             "| plan | fidelity | size_mb | dominates |", "|---|---|---|---|"]
    baselines = [r for r in rows if "(baseline)" in r["plan"] and r["fidelity"] >= 0.95]
    for r in rows:
        beats = [b["plan"].split(",")[0].replace("uniform ", "") for b in baselines if b is not r and
                 r["fidelity"] >= b["fidelity"] and r["size_mb"] <= b["size_mb"] and
                 (r["fidelity"] > b["fidelity"] or r["size_mb"] < b["size_mb"])]
        lines.append(f"| {r['plan']} | {r['fidelity']:.5f} | {r['size_mb']:.2f} | {', '.join(beats) or '-'} |")
    target = base8["size_mb"] / 1.5
    meets = [r for r in rows if r["size_mb"] <= target and r["fidelity"] >= base8["fidelity"]]
    w8 = next(r for r in rows if r["plan"].startswith("uniform W8, tables 8"))
    beats_w8 = [r for r in rows if r is not w8 and r["fidelity"] >= w8["fidelity"] and r["size_mb"] <= w8["size_mb"]]
    lines += ["", f"1.5x smaller than uniform W8A8 (tables 8) means <= {target:.2f} MB at fidelity >= "
              f"{base8['fidelity']:.5f}: " + ("; ".join(f"{r['plan']} ({r['fidelity']:.5f}, {r['size_mb']:.2f} MB, "
                                                     f"{base8['size_mb'] / r['size_mb']:.2f}x)" for r in meets)
                                           or "no plan here meets it") + ".",
              "", f"At least uniform W8's fidelity ({w8['fidelity']:.5f}) at no more than its {w8['size_mb']:.2f} MB: "
              + ("; ".join(f"{r['plan']} ({r['fidelity']:.5f}, {r['size_mb']:.2f} MB)" for r in beats_w8)
                 or "no plan here") + "."]
    save_results("uniform_corners", {"rows": rows, "target_size_mb": round(target, 3)}, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
