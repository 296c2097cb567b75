"""What several benchmarks share: where results go and how they are written, and the quickstart config they
measure real trials on."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parent.parent


def save_results(stem: str | Path, result: dict, text: str) -> None:
    """Write `result` to STEM.json and the markdown `text` to STEM.md (the folder is created), then print the
    markdown. A bare name goes to benchmarks/results/."""
    stem = Path(stem) if Path(stem).parent != Path(".") else RESULTS / stem
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_name(stem.name + ".json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    stem.with_name(stem.name + ".md").write_text(text)
    print(text)


def machine_env(device: str = "cpu") -> dict[str, Any]:
    """The machine a benchmark runs on, and its load now: cpus, machine, torch, device (the GPU's name with
    cuda), cpu_capability (AVX2, AVX512, ...: CPU kernel speeds differ by far between them), torch_threads,
    load_before. Set `load_after` (`load_average()`) when the run ends."""
    import os
    import platform

    import torch

    return {"cpus": os.cpu_count(), "machine": platform.machine(), "torch": torch.__version__, "device": device,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),  # the vector ISA torch's CPU kernels use
            "gpu": torch.cuda.get_device_name() if device == "cuda" else None,
            "torch_threads": torch.get_num_threads(), "load_before": load_average()}


def load_average() -> list[float]:
    import os

    return [round(x, 2) for x in os.getloadavg()]


def cpu_words(env: dict[str, Any]) -> str:
    """The CPU of a `machine_env`: "2 CPU cores (x86_64, AVX2)" (the ISA left out where it was not recorded)."""
    isa = f", {env['cpu_capability']}" if env.get("cpu_capability") else ""
    return f"{env['cpus']} CPU cores ({env['machine']}{isa})"


def env_words(env: dict[str, Any]) -> str:
    """`machine_env` (with load_after) as the opening of a results file's first paragraph."""
    return (f"{cpu_words(env)}, torch {env['torch']} with {env['torch_threads']} threads, "
            f"trials on {env.get('gpu') or env.get('device', 'cpu')}, load average before {env['load_before']}, "
            f"after {env['load_after']}.")


def quickstart_config(root: Path, name: str, trials: int, backend: dict[str, Any], tracking_uri: str,
                      experiment: str) -> Any:
    """examples/quickstart.yaml with `trials` trials, run directory and study ROOT/NAME, the given backend
    and MLflow store: the real-trial workload of the orchestration and scaling benchmarks."""
    import yaml

    from autocompress.config import SearchConfig

    data = yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text())
    data.update({"budget": {"n_trials": trials}, "run_dir": str(root / name), "study_name": name,
                 "tracking": {"uri": tracking_uri, "experiment": experiment}, "backend": backend})
    return SearchConfig.from_dict(data).resolved(ROOT)


def plan_with_tables(info: Any, rules: list, tables: Any = None) -> Any:
    """The plan of `rules` (`build_plan`; none = no Linear entries) plus, when `tables` (a LayerPlan) is given,
    every untied embedding table at those settings."""
    from autocompress.plan import CompressionPlan
    from autocompress.selection import build_plan

    layers = dict(build_plan(info, rules).layers) if rules else {}
    layers.update({name: tables for name in info.untied_tables()} if tables is not None else {})
    return CompressionPlan(layers)


def merge_rows(path: Path, rows: list[dict], order: list[str]) -> list[dict]:
    """`rows` (dicts with a "case") merged over the rows already saved in the JSON at `path`: a rerun of some
    cases (`--only`) replaces just those; the result follows `order` (the benchmark's case names)."""
    kept = {r["case"]: r for r in json.loads(path.read_text())["rows"]} if path.is_file() else {}
    kept.update({r["case"]: r for r in rows})
    return [kept[c] for c in order if c in kept]


@dataclass
class LoopWindow:
    """What a finished search's trials say about its loop: `done` (finished trials, by number), `evaluated`
    (those a worker ran: user attr `work_s`), `first_start` (epoch s), `window_s` (first trial start to last
    trial end), `work_s` (the evaluated trials' apply + evaluate seconds, summed)."""

    done: list[Any]
    evaluated: list[Any]
    first_start: float
    window_s: float
    work_s: float


def loop_window(run_dir: str | Path) -> LoopWindow:
    """The `LoopWindow` of the search in `run_dir` (read from its Optuna storage)."""
    from autocompress.search.rundir.reader import RunDir

    done = sorted((t for t in RunDir.open(run_dir).trials if t.state.is_finished()), key=lambda t: t.number)
    evaluated = [t for t in done if "work_s" in t.user_attrs]
    first = min(t.datetime_start.timestamp() for t in done)
    window = max(t.datetime_complete.timestamp() for t in done) - first
    return LoopWindow(done, evaluated, first, window, sum(t.user_attrs["work_s"] for t in evaluated))
