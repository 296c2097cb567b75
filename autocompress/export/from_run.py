"""Export one trial of a search: rebuild its model exactly as the search evaluated it, write it in an export
format, load the written files the format's way, measure them again, write the model card, log it all to MLflow.

`export(source, out_dir, trial=None, pick=None, force=False, format="autocompress", strict=False) -> ExportResult`
  source: a `SearchResult` (from `run_search`) or a run directory path.
  trial / pick: which trial (see `RunDir.choose`); default: the config's pick rule.
  format: a name of `formats.MODULES` (autocompress: the packed format, loaded with `load_compressed`;
    compressed-tensors: loaded with transformers' `from_pretrained`; gguf); checked before anything else.
  strict: refuse (UserError) a plan the format would write partly dense or without its sparse saving.
"Exactly": the rebuild and the measurement run with the torch thread count the trial's worker had (user attr
`torch_threads`: `backend.cpus_per_trial` on either backend), because GPTQ's Cholesky factorization sums in
a thread-dependent order and a changed sum can flip a rounding; with the same count the exported weights are
the searched ones bit for bit, and the metrics match. The calibration is the search's too: the TrialRunner
builds it from the run's config (the same texts, extended to the same token count, the same
`data.calibration.sequential`).
The output directory is written under a temporary name next to it and renamed when complete, so an
interrupted or refused export leaves nothing half-written behind; an existing `out_dir` is refused unless
`force`. MLflow gets the directory under `export/trial-NNNN` (`export/trial-NNNN-<format>` for the other
formats) and the tag `autocompress.export_format`, on the study's parent run and on the trial's run.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

from autocompress.errors import UserError
from autocompress.evaluators.generation import DEFAULT_PROMPTS
from autocompress.export.card import CARD_NEW_TOKENS, model_card
from autocompress.export.formats import DEFAULT_FORMAT, ExportFormat, get_format
from autocompress.search.rundir.plan_files import plan_path
from autocompress.threads import torch_threads  # noqa: F401  (re-exported)

FIDELITY_TOLERANCE = 1e-4  # relative: the exported model's metrics match the searched model's to this
CARD_PROMPTS = DEFAULT_PROMPTS[:3]


@dataclass
class ExportResult:
    """What `export` wrote and measured. `searched` holds the trial's metrics from the search;
    `measured` the same metrics re-measured on the model loaded from `out_dir` the format's way; `warnings`
    one line per layer the format wrote other than the plan says (and engine notes)."""

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
    format: str = DEFAULT_FORMAT
    warnings: list[str] = field(default_factory=list)

    @property
    def max_metric_diff(self) -> float:
        common = [k for k in self.measured if k in self.searched]
        return max((abs(self.measured[k] - self.searched[k]) for k in common), default=0.0)

    def relative_diffs(self) -> dict[str, float]:
        """Per metric both hold: |measured - searched| / |searched| (the absolute difference where the searched
        value is 0)."""
        return {k: abs(self.measured[k] - self.searched[k]) / (abs(self.searched[k]) or 1.0)
                for k in self.measured if k in self.searched}

    @property
    def max_relative_diff(self) -> float:
        """The largest of `relative_diffs` (0 when no metric is common)."""
        return max(self.relative_diffs().values(), default=0.0)

    def drift_warning(self, tolerance: float = FIDELITY_TOLERANCE) -> str | None:
        """One line naming the metric that moved most, when its relative difference exceeds `tolerance`; else
        None. Relative, so a perplexity in the thousands and a fidelity near 1 are judged alike."""
        diffs = self.relative_diffs()
        if not diffs or max(diffs.values()) <= tolerance:
            return None
        name = max(diffs, key=diffs.get)
        return (f"the exported model's {name} is {self.measured[name]:.6g} where the search measured "
                f"{self.searched[name]:.6g} (relative difference {diffs[name]:.2g} > {tolerance:g})")


def _check_out_dir(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {str(out)!r} is a file; give a directory path")
    if out.exists() and any(out.iterdir()) and not force:
        raise UserError(f"--out {str(out)!r} already exists and is not empty; choose another directory or "
                        "pass --force to replace it")


def export(source: Any, out_dir: str | os.PathLike, trial: int | None = None, pick: str | None = None,
           force: bool = False, log: bool = True, progress: Any = None, format: str = DEFAULT_FORMAT,
           strict: bool = False, entropy: str | None = None) -> ExportResult:
    """Export a trial of a finished search (module docstring). `progress(message)` is called before each
    long step when given. `entropy` ("zstd", "lzma", "zlib"; the autocompress format only) codes the packed
    tensors losslessly (export/entropy.py). Raises `UserError` for an unknown format or coder, a bad run
    directory, trial, pick rule or out directory, and a plan the format cannot hold (under `strict`, also one it
    would write partly dense)."""
    from autocompress.export.entropy import check_coder
    from autocompress.search.rundir.reader import RunDir

    fmt = get_format(format)
    check_coder(entropy)
    if entropy is not None:
        if fmt.name != DEFAULT_FORMAT:
            raise UserError(f"--entropy codes the {DEFAULT_FORMAT} format's packed streams, not {fmt.name}'s; drop "
                            f"--entropy or export with --format {DEFAULT_FORMAT}")
        fmt = replace(fmt, write=partial(fmt.write, entropy=entropy))
    say = progress or (lambda message: None)
    run = RunDir.open(getattr(source, "run_dir", source))
    chosen = run.choose(trial, pick)
    plan = run.plan(chosen.number)
    out = Path(out_dir).resolve()
    _check_out_dir(out, force)
    threads = searched_threads(run, chosen)
    with torch_threads(threads):
        result = _rebuild_and_write(run, chosen, plan, out, say, threads, fmt, strict)
    drift = result.drift_warning()
    if drift:
        warnings.warn(f"{drift}; see {out / 'README.md'}", stacklevel=2)
    if log:
        from autocompress.search.tracking.artifacts import attach

        folder = f"export/trial-{chosen.number:04d}" + ("" if fmt.name == DEFAULT_FORMAT else f"-{fmt.name}")
        result.logged_to = attach(run.config, out, folder, trial_number=chosen.number,
                                  tags={"autocompress.export_format": fmt.name})
    return result


def searched_threads(run: Any, chosen: Any) -> int | None:
    """The torch thread count of the worker that ran `chosen`; for a trial that reused an identical plan's
    metrics (worker "cache"), that plan's. None when no trial recorded it (runs from before it was recorded)."""
    for t in [chosen] + [t for t in run.completed() if t.params == chosen.params]:
        if t.user_attrs.get("torch_threads"):
            return int(t.user_attrs["torch_threads"])
    return None


def _rebuild_and_write(run: Any, chosen: Any, plan: Any, out: Path, say: Any, threads: int | None,
                       fmt: ExportFormat, strict: bool) -> ExportResult:
    """Rebuild `plan` as the trial did, write it in `fmt` to `out` (via a temporary sibling), load it the
    format's way, measure."""
    from autocompress.export.load import load_compressed
    from autocompress.distill.train import apply_and_distill
    from autocompress.evaluators.generation import generate_samples
    from autocompress.depth.reduce import reduced_plan
    from autocompress.kvcache.runtime import attach_kv_cache
    from autocompress.search.workers.runner import TrialRunner

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
        say(f"writing the {fmt.name} format")
        report = fmt.write(model, plan, runner.info, tmp, tokenizer=runner.loaded.tokenizer, strict=strict)
        say(f"loading the written files with {fmt.loaded_by} and measuring them")
        reloaded = fmt.load(str(tmp), runner.info.task)
        # the KV cache is a run-time setting in every engine (kvcache/export.py): measured with the plan's cache
        attach_kv_cache(reloaded, reduced_plan(plan, runner.info).kv_cache)  # its blocks renumbered after drops
        measured = {k: float(v) for k, v in runner.evaluator.evaluate(reloaded).items()}
        searched = dict(chosen.user_attrs.get("metrics", {}))
        # what runs packed with kernels=True here (the autocompress format's CPU kernels)
        fast = load_compressed(tmp, kernels=True).kernels if fmt.name == DEFAULT_FORMAT else {}
        result = ExportResult(str(out), chosen.number, str(plan_path(run.path, chosen.number)),
                              searched, measured, int(report.file_bytes), int(report.predicted_bytes),
                              kernels=dict(fast), torch_threads=threads, format=fmt.name,
                              warnings=list(report.warnings))
        if runner.info.task == "causal-lm":  # what the written files say, beside what the original said
            say("greedy completions of the same prompts by the export")
            compressed = generate_samples(reloaded, runner.loaded.tokenizer, CARD_PROMPTS, CARD_NEW_TOKENS)
            samples = [(p, o, c) for (p, o), (_, c) in zip(original, compressed)]
        (tmp / "README.md").write_text(model_card(run, chosen, plan, result, runner.info.task, fmt, samples))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return result
