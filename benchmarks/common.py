"""What several benchmarks share: where results go and how they are written, and the quickstart config they
measure real trials on."""

from __future__ import annotations

import json
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
