"""The quickstart search (examples/quickstart.yaml) end to end on a CUDA GPU, through Ray: four actors
sharing one GPU (`gpus_per_trial: 0.25`, `backend.device: cuda`), Optuna on SQLite, MLflow on SQLite.

Run (on the GPU machine; see benchmarks/gpu_session.sh):  python3 benchmarks/gpu_quickstart.py [--device cuda]
Writes benchmarks/results/quickstart_search_cuda.json and .md (`--device cpu --workers 2`: a dry run of the code,
written as *_cpu).

Only the backend and the target change from the quickstart: the plans are priced for `h100-sxm` (the shipped
Hopper profile) instead of `cpu-local`, and the trials run on the GPU. The run goes through the CLI
(`python -m autocompress search CONFIG --json`), as a user's would; the figures are what it prints and writes:
trial counts, wall time, the front, the pick, and the MLflow runs found in the store afterwards.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.common import machine_env, save_results  # noqa: E402


def config_for(device: str, workers: int, trials: int, work: Path) -> dict:
    config = yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text())
    config["target"]["profile"] = "h100-sxm" if device == "cuda" else "cpu-local"
    config["backend"] = {"name": "ray", "workers": workers, "cpus_per_trial": 2, "device": device,
                         "gpus_per_trial": round(1 / workers, 4) if device == "cuda" else 0.0}
    config["budget"] = {"n_trials": trials}
    config["tracking"] = {"uri": f"sqlite:///{work / 'mlflow.db'}", "experiment": "quickstart-cuda"}
    return config


def mlflow_runs(uri: str) -> dict[str, int]:
    """Parent and nested runs in the store (`mlflow.search_runs` over the experiment)."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("quickstart-cuda")
    runs = client.search_runs([exp.experiment_id], max_results=10000) if exp else []
    nested = sum(1 for r in runs if "mlflow.parentRunId" in r.data.tags)
    return {"parent": len(runs) - nested, "nested": nested}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--trials", type=int, default=24)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        config = config_for(args.device, args.workers, args.trials, work)
        path = work / "quickstart_cuda.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "autocompress", "search", str(path), "--run-dir",
                               str(work / "run"), "--json", "--quiet"], capture_output=True, text=True, cwd=work)
        wall = time.perf_counter() - t0
        print(proc.stderr[-3000:], flush=True)
        if proc.returncode != 0:
            print(proc.stdout[-3000:])
            raise SystemExit(f"search exited {proc.returncode}")
        summary = json.loads(proc.stdout[proc.stdout.index("{"):])
        runs = mlflow_runs(config["tracking"]["uri"])
    picked = summary["picked"]
    result = {"device": args.device, "workers": args.workers, "backend": config["backend"],
              "profile": config["target"]["profile"], "wall_s": round(wall, 1), "elapsed_s": summary["elapsed_s"],
              "counts": summary["counts"], "front": len(summary["pareto"]), "picked": picked,
              "mlflow_runs": runs, "env": machine_env(args.device)}
    tag = "cuda" if args.device == "cuda" else "cpu"
    save_results(f"quickstart_search_{tag}", result, markdown(result))


def markdown(r: dict) -> str:
    p = r["picked"] or {}
    values = ", ".join(f"{k} {v:.5g}" for k, v in (p.get("values") or {}).items())
    return "\n".join([
        f"# The quickstart search on {r['env'].get('device', r['device'])} through Ray", "",
        f"examples/quickstart.yaml with backend {r['backend']} and target profile `{r['profile']}` "
        "(benchmarks/gpu_quickstart.py, through `python -m autocompress search --json`).", "",
        "| trials by state | search s (driver) | wall s (CLI, incl. start-up) | on the front | MLflow runs (parent / nested) |",
        "|---|---|---|---|---|",
        f"| {r['counts']} | {r['elapsed_s']:.1f} | {r['wall_s']} | {r['front']} | "
        f"{r['mlflow_runs']['parent']} / {r['mlflow_runs']['nested']} |", "",
        f"Pick: trial {p.get('number')}" + (f" ({values})" if values else ""), ""])


if __name__ == "__main__":
    main()
