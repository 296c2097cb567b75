"""Export one trial of a search: rebuild its model exactly as the search evaluated it, write it in the packed
format, reload the written files, measure them again, write the model card, log it all to MLflow.

`export(source, out_dir, trial=None, pick=None, force=False) -> ExportResult`
  source: a `SearchResult` (from `run_search`) or a run directory path.
  trial / pick: which trial (see `RunDir.choose`); default: the config's pick rule.
"Exactly": the rebuild and the measurement run with the torch thread count the trial's worker had (user attr
`torch_threads`: `backend.cpus_per_trial` on either backend), because GPTQ's Cholesky factorization sums in
a thread-dependent order and a changed sum can flip a rounding; with the same count the exported weights are
the searched ones bit for bit, and the metrics match. The calibration is the search's too: the TrialRunner
builds it from the run's config (the same texts, extended to the same token count, the same
`data.calibration.sequential`).
The output directory is written under a temporary name next to it and renamed when complete, so an
interrupted export leaves nothing half-written behind; an existing `out_dir` is refused unless `force`.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autocompress.errors import UserError
from autocompress.evaluators.generation import DEFAULT_PROMPTS
from autocompress.threads import torch_threads  # noqa: F401  (re-exported)

FIDELITY_TOLERANCE = 1e-4  # the exported model's metrics match the searched model's to this
CARD_NEW_TOKENS = 24  # greedy tokens per prompt in a causal LM's model card
CARD_PROMPTS = DEFAULT_PROMPTS[:3]


@dataclass
class ExportResult:
    """What `export` wrote and measured. `searched` holds the trial's metrics from the search;
    `measured` the same metrics re-measured on the model reloaded from `out_dir`."""

    out_dir: str
    trial: int
    plan_path: str
    searched: dict[str, float]
    measured: dict[str, float]
    file_bytes: int
    predicted_bytes: int
    kernels: dict[str, str] = field(default_factory=dict)
    torch_threads: int | None = None  # the thread count it was rebuilt and measured with (the search worker's)
    logged_to: list[str] = field(default_factory=list)

    @property
    def max_metric_diff(self) -> float:
        common = [k for k in self.measured if k in self.searched]
        return max((abs(self.measured[k] - self.searched[k]) for k in common), default=0.0)


def _check_out_dir(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {str(out)!r} is a file; give a directory path")
    if out.exists() and any(out.iterdir()) and not force:
        raise UserError(f"--out {str(out)!r} already exists and is not empty; choose another directory or "
                        "pass --force to replace it")


def export(source: Any, out_dir: str | os.PathLike, trial: int | None = None, pick: str | None = None,
           force: bool = False, log: bool = True, progress: Any = None) -> ExportResult:
    """Export a trial of a finished search (module docstring). `progress(message)` is called before each
    long step when given. Raises `UserError` for a bad run directory, trial, pick rule or out directory."""
    from autocompress.search.rundir import RunDir

    say = progress or (lambda message: None)
    run = RunDir.open(getattr(source, "run_dir", source))
    chosen = run.choose(trial, pick)
    plan = run.plan(chosen.number)
    out = Path(out_dir).resolve()
    _check_out_dir(out, force)
    threads = searched_threads(run, chosen)
    with torch_threads(threads):
        result = _rebuild_and_write(run, chosen, plan, out, say, threads)
    drift = result.max_metric_diff
    if drift > FIDELITY_TOLERANCE:
        warnings.warn(f"the exported model's metrics differ from the search's by {drift:.2g} (> "
                      f"{FIDELITY_TOLERANCE:g}); see {out / 'README.md'}", stacklevel=2)
    if log:
        from autocompress.search.artifacts import attach

        result.logged_to = attach(run.config, out, f"export/trial-{chosen.number:04d}", trial_number=chosen.number)
    return result


def searched_threads(run: Any, chosen: Any) -> int | None:
    """The torch thread count of the worker that ran `chosen`; for a trial that reused an identical plan's
    metrics (worker "cache"), that plan's. None when no trial recorded it (runs from before it was recorded)."""
    for t in [chosen] + [t for t in run.completed() if t.params == chosen.params]:
        if t.user_attrs.get("torch_threads"):
            return int(t.user_attrs["torch_threads"])
    return None


def _rebuild_and_write(run: Any, chosen: Any, plan: Any, out: Path, say: Any, threads: int | None) -> ExportResult:
    """Rebuild `plan` as the trial did, write it packed to `out` (via a temporary sibling), reload, measure."""
    from autocompress.export.load import load_compressed
    from autocompress.export.save import save_compressed
    from autocompress.distill.train import apply_and_distill
    from autocompress.evaluators.generation import generate_samples
    from autocompress.search.trial import TrialRunner

    say(f"loading {run.config.model.name} and the search's data")
    runner = TrialRunner(run.config)
    samples = None
    if runner.info.task == "causal-lm":  # the original's completions, before the plan changes the model
        say(f"greedy completions of {len(CARD_PROMPTS)} prompts by the original model")
        original = generate_samples(runner.loaded.model, runner.loaded.tokenizer, CARD_PROMPTS, CARD_NEW_TOKENS)
    say(f"applying trial {chosen.number}'s plan ({len(plan)} layers)")
    model = apply_and_distill(runner.loaded.model, plan, runner.calibration, runner.info)  # as the trial did
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        say("packing and writing")
        report = save_compressed(model, plan, runner.info, tmp, tokenizer=runner.loaded.tokenizer)
        say("reloading the written files and measuring them")
        reloaded = load_compressed(tmp)
        measured = {k: float(v) for k, v in runner.evaluator.evaluate(reloaded.model).items()}
        searched = dict(chosen.user_attrs.get("metrics", {}))
        file_bytes = (tmp / "model.safetensors").stat().st_size
        fast = load_compressed(tmp, kernels=True).kernels  # what runs packed with kernels=True here
        result = ExportResult(str(out), chosen.number, str(run.path / "plans" / f"trial-{chosen.number:04d}.json"),
                              searched, measured, file_bytes, int(report.predicted_bytes), kernels=dict(fast),
                              torch_threads=threads)
        if runner.info.task == "causal-lm":  # what the written files say, beside what the original said
            say("greedy completions of the same prompts by the export")
            compressed = generate_samples(reloaded.model, runner.loaded.tokenizer, CARD_PROMPTS, CARD_NEW_TOKENS)
            samples = [(p, o, c) for (p, o), (_, c) in zip(original, compressed)]
        (tmp / "README.md").write_text(model_card(run, chosen, plan, result, runner.info.task, samples))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return result


def _fmt(v: Any) -> str:
    return f"{v:.6g}" if isinstance(v, float) and math.isfinite(v) else str(v)


def _cell(text: str) -> str:
    """`text` as one markdown table cell: on one line, pipes escaped, empty shown as such."""
    flat = " ".join(text.split()).replace("|", "\\|")
    return flat if flat else "(nothing)"


def samples_section(samples: list[tuple[str, str, str]]) -> list[str]:
    """The model card's lines for [(prompt, original's completion, export's completion)]."""
    from autocompress.search.pareto import markdown_table

    return [
        "## Greedy completions",
        "",
        f"The first {CARD_NEW_TOKENS} new tokens, greedy, of the original model and of the model reloaded from "
        "this directory (`autocompress.evaluators.generation.generate_samples`; through the chat template when "
        "the tokenizer has one).",
        "",
        markdown_table(["prompt", "original", "this export"],
                       [[_cell(p), _cell(o), _cell(c)] for p, o, c in samples]),
    ]


def model_card(run: Any, trial: Any, plan: Any, result: ExportResult, task: str,
               samples: list[tuple[str, str, str]] | None = None) -> str:
    """The exported directory's README.md: what the model is, how it was chosen, what was measured, and for
    a causal LM (`samples`: prompt, original's and export's greedy completion) what it says."""
    from autocompress.search.pareto import markdown_table

    cfg = run.config
    t = cfg.target
    target = ("none (objectives without a device)" if t is None else
              f"`{t.profile}` ({t.model_name} latency model, batch {t.batch}, sequence {t.seq_len}, {t.mode})")
    metrics = sorted(set(result.searched) | set(result.measured))
    rows = [[m, _fmt(result.searched.get(m, "-")), _fmt(result.measured.get(m, "-"))] for m in metrics]
    columns, body = plan._visible()
    size_note = (f"{result.file_bytes / 1e6:.3f} MB on disk (`model.safetensors`); the size model predicted "
                 f"{result.predicted_bytes / 1e6:.3f} MB")
    packed = sorted({v for v in result.kernels.values()}) if result.kernels else []
    threads_note = (f"; rebuilt and measured with {result.torch_threads} torch thread(s), as the search's worker "
                    "ran it" if result.torch_threads else "")
    lines = [
        f"# {Path(str(cfg.model.name)).name}, compressed by autocompress",
        "",
        f"Trial {trial.number} of study `{cfg.study_name}` ({len(run.completed())} completed trials), "
        f"picked from the feasible Pareto front.",
        "",
        f"- base model: `{cfg.model.name}` (task {task})",
        f"- target device: {target}",
        f"- objectives: {', '.join(cfg.objectives)}; constraints: {', '.join(cfg.constraints) or 'none'}",
        f"- plan: {trial.user_attrs.get('plan_summary', plan.summary())}",
        f"- size: {size_note}",
        "",
        "## Metrics",
        "",
        "Measured during the search, and again on the model reloaded from this directory "
        "(same evaluation data: `data.evaluation` of the search config" + threads_note + ").",
        "",
        markdown_table(["metric", "search", "this export"], rows),
        *(samples_section(samples) if samples else []),
        "## Load it",
        "",
        "```python",
        "from autocompress.export import load_compressed",
        f"compressed = load_compressed({str(result.out_dir)!r})  # kernels=True: real int8/int4 kernels",
        "model, tokenizer = compressed.model, compressed.tokenizer",
        "```",
        "",
        "Weights are stored packed (integers at their bit width with fp16 scales, sparse layers as kept values "
        "plus a bitmask or N:M indices, low-rank layers as two factors) and are dequantized on load; "
        "`kernels=True` runs the formats this machine has real kernels for" +
        (f" ({', '.join(packed)})" if packed else "") + " packed instead.",
        "",
        "## Plan",
        "",
        markdown_table(list(columns), [list(r) for r in body]) if body else "(empty plan: the original model)\n",
    ]
    return "\n".join(lines)
