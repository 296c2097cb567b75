"""The work of one trial, and the worker state that makes it cheap: load once, run many plans.

`TrialRunner(config)` loads the base model, tokenizer, calibration batches and the task's evaluator once
(per process: the driver for the local backend, each Ray actor for the ray backend), and a memo of what
data-aware methods compute on the unchanged base model (calibration Gram matrices, GPTQ-quantized layers:
policies/memo.py), so a later plan reuses them exactly instead of recomputing, and one working copy of the
base model (search/workers/workspace.py) that each trial compresses and the next puts back in place, bit for bit,
instead of deep-copying the base model per trial; all of it on `backend.device`. `run(plan_json)` takes that
copy, applies the plan and its distillation (`apply_and_distill`: the teacher is the base model, the data the
calibration batches), evaluates, and returns a `TrialOutcome`. With a pruner
(search/early_stopping.py) and a companion trial number, it reports the quality on a subset of the evaluation
texts after applying the plan and every `distill.eval_every` steps, and stops when the pruner says so: the
outcome is then `pruned` and carries the last intermediate metrics; the full evaluation runs only for plans
that survive. It never raises for a
trial's own failure: the exception (or non-finite metrics) comes back as `error`, so one bad plan cannot
take a worker down. Running out of memory (MemoryError, torch.OutOfMemoryError) is such a failure too: the
error reads "out of memory: ..." and what the trial added to the working copy is freed (and the CUDA cache
emptied) before the worker takes the next plan. A worker process that is killed instead (the kernel's OOM
killer, a lost node) is the backend's business: see workers/backends.py.
"""

from __future__ import annotations

import gc
import math
import os
import socket
import time
import traceback
from dataclasses import dataclass, field, replace
from typing import Any

from autocompress.config import SearchConfig


@dataclass
class TrialOutcome:
    """What a worker reports for one plan. `metrics` is empty and `error` set when the trial failed."""

    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    worker: str = ""
    apply_s: float = 0.0
    eval_s: float = 0.0
    retries: int = 0  # times the trial was started again on a new worker because its worker died (backend)
    retry_reasons: list[str] = field(default_factory=list)
    pruned: str | None = None  # "at step k (fidelity x)" when the pruner stopped the trial
    torch_threads: int = 0  # torch's intra-op threads on the worker: float sums (GPTQ's Cholesky) depend on it


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class TrialRunner:
    """Holds everything a trial needs that does not depend on the plan. Build once per worker process."""

    def __init__(self, config: SearchConfig, reuse_model: bool = True) -> None:
        """`reuse_model=False` deep-copies the base model for every trial instead of restoring one working
        copy (the same results; benchmarks compare the two)."""
        from autocompress.calibration import search_calibration
        from autocompress.loading import load_model
        from autocompress.search.workers.workspace import ModelWorkspace

        self.config = config
        self.loaded = load_model(config.model.name, task=config.model.task,
                                 trust_remote_code=config.model.trust_remote_code)
        self.info = self.loaded.info
        self.device = self._place(config.backend.device)
        self.workspace = ModelWorkspace(self.loaded.model) if reuse_model else None
        tok = self.loaded.tokenizer
        if tok is None:
            from autocompress.errors import UserError

            raise UserError(f"model {config.model.name!r} has no tokenizer; a search needs one to evaluate")
        self.calibration = search_calibration(config, tok, self.info, self.loaded.model, self.device,
                                              exclude=self._evaluation_data()[0])
        self.evaluator = self._evaluator()
        self.pruning, self.subset_evaluator = None, None
        if config.pruner.name != "none":  # nothing of this without a pruner
            from autocompress.search.early_stopping import WorkerPruning, subset_size

            self.pruning = WorkerPruning(config, self.loaded.task)
            self.subset_evaluator = self._evaluator(lambda n: subset_size(n, config.pruner.subset))
        from autocompress.objectives import parse_constraint, parse_objective

        used = [parse_objective(o)[1] for o in config.objectives] + [parse_constraint(c)[0] for c in config.constraints]
        self.coded = "size_coded_mb" in used  # measured on the compressed model (export/entropy.py)
        self.latency = None
        t = config.target
        if t is not None and t.model_name == "measured":
            from autocompress.evaluators.latency import LATENCY_MODELS, Workload
            from autocompress.hardware import load_profile

            measured = LATENCY_MODELS.get("measured")
            self.latency = (measured(load_profile(t.profile), self.loaded.model, device=t.device),
                            Workload(t.batch, t.seq_len, t.mode))

    def _place(self, device: str) -> Any:
        """Move the base model to `device` (config `backend.device`) before anything is derived from it: the
        working copy, the memo and the evaluators' reference outputs then live there too."""
        import torch

        if device == "cuda" and not torch.cuda.is_available():
            from autocompress.errors import UserError

            raise UserError(f"backend.device: cuda, but this worker ({worker_name()}) sees no CUDA GPU; on the ray "
                            "backend set gpus_per_trial > 0, or set backend.device: cpu")
        target = torch.device(device)
        self.loaded.model.to(target)
        return target

    def _evaluation_data(self) -> tuple[list[str], list[Any] | None]:
        """The texts the task's evaluator scores (and their labels for sequence classification)."""
        from autocompress.data import load_labeled, load_texts

        d = self.config.data
        if self.loaded.task in ("embedding", "causal-lm"):
            return load_texts(d.evaluation.source, n=d.evaluation.n, seed=d.evaluation.seed), None
        if not d.labels:
            from autocompress.errors import UserError

            raise UserError("data.labels: a sequence-classification search needs a labeled .jsonl/.csv file")
        texts, labels = load_labeled(d.labels)
        return list(texts), list(labels)

    def _evaluator(self, keep: Any = None) -> Any:
        """The task's evaluator on the evaluation texts, or on the first `keep(n)` of the n texts."""
        d, task, tok, base = self.config.data, self.loaded.task, self.loaded.tokenizer, self.loaded.model
        cut = (lambda xs: xs) if keep is None else (lambda xs: xs[:keep(len(xs))])
        texts, labels = self._evaluation_data()
        from autocompress.evaluators import TASK_EVALUATOR, build_evaluator

        # causal-lm: next_token, KL, top-1 agreement and perplexity from one forward pass per batch
        options = {} if task == "sequence-classification" else {"batch_size": d.batch_size, "max_length": d.max_length}
        return build_evaluator(TASK_EVALUATOR[task], base, tok, cut(texts),
                               labels=None if labels is None else cut(labels), **options)

    def run(self, plan_json: str, number: int | None = None, attempt: int = 0,
            pruning: int | None = None) -> TrialOutcome:
        """Apply the plan (and its distillation) to a copy of the base model and evaluate it. Failures come
        back as `error`.

        `number` and `attempt` (the trial number, and how often it was started before on a worker that died)
        only feed the test hook in workers/fault_hook.py. `pruning` is the number of the trial's companion trial in
        the pruning study (None: no pruning)."""
        from autocompress.distill.train import apply_and_distill
        from autocompress.plan import CompressionPlan
        from autocompress.search.workers import fault_hook

        import torch

        outcome = TrialOutcome(worker=worker_name(), torch_threads=torch.get_num_threads())
        out_of_memory, model = False, None
        try:
            plan = CompressionPlan.from_json(plan_json)
            fault_hook.before_trial(number, attempt)
            t0 = time.perf_counter()
            reporter = self.pruning.trial(pruning) if self.pruning is not None else None
            if reporter is None:
                model = apply_and_distill(self.loaded.model, plan, self.calibration, self.info,
                                          model=self._working_copy())
            else:
                model = self._apply_pruned(plan, reporter)
            t1 = time.perf_counter()
            if reporter is not None and reporter.pruned:
                outcome.apply_s, outcome.pruned, outcome.metrics = t1 - t0, reporter.pruned, reporter.last
                return outcome
            metrics = fault_hook.after_trial(number, attempt, self.evaluator.evaluate(model))
            if self.coded:
                from autocompress.export.entropy import size_coded_mb

                metrics["size_coded_mb"] = size_coded_mb(model, plan, self.info)
            model = None
            outcome.apply_s, outcome.eval_s = t1 - t0, time.perf_counter() - t1
            if self.latency is not None:  # timed on this worker's device with the real kernels
                latency_model, workload = self.latency
                metrics["latency_ms"] = latency_model.predict(plan, self.info, workload).total_ms
            bad = [k for k, v in metrics.items() if not math.isfinite(v)]
            if bad:
                outcome.error = f"non-finite metric {bad[0]} = {metrics[bad[0]]}"
            outcome.metrics = {k: float(v) for k, v in metrics.items()}
        except Exception as exc:  # a trial's failure is data, not a crash of the worker
            out_of_memory = isinstance(exc, (MemoryError, torch.OutOfMemoryError))
            last = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
            where = f" ({os.path.basename(last.filename)}:{last.lineno})" if last else ""
            outcome.error = ("out of memory: " if out_of_memory else "") + f"{type(exc).__name__}: {exc}{where}"
        if out_of_memory:  # the exception (and the model copy its frames held) is gone now: give the memory back
            model = None
            if self.workspace is not None:
                self._put_back()  # drops what the plan added (factors, packed weights) from the working copy
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        return outcome

    def _working_copy(self) -> Any:
        """The working copy in the base model's state, or None (deep-copy per trial) without a workspace."""
        if self.workspace is None:
            return None
        if self.workspace.dirty:
            self._put_back()
        return self.workspace.checkout()

    def _put_back(self) -> None:
        """Restore the working copy; if that fails, a fresh deep copy replaces it, so one bad trial never
        spoils the next."""
        from autocompress.search.workers.workspace import ModelWorkspace

        try:
            self.workspace.restore()
        except Exception:
            self.workspace = ModelWorkspace(self.loaded.model)

    def _apply_pruned(self, plan: Any, reporter: Any) -> Any:
        """`apply_and_distill` with reports to the pruner: the quality on the subset at step 0 (after the
        plan is applied), then every `eval_every` distillation steps. Stops at the first prune (`reporter.pruned`).
        Trains exactly as `apply_and_distill` does: the reports only read the model."""
        from autocompress.depth.reduce import reduced_plan
        from autocompress.distill.train import apply_and_distill, distill

        undistilled = replace(plan, distill=None)  # every plan-level entry but the distillation
        model = apply_and_distill(self.loaded.model, undistilled,
                                  self.calibration, self.info, model=self._working_copy())
        if reporter(0, self.subset_evaluator.evaluate(model)) or plan.distill is None:
            return model
        distill(model, self.loaded.model, self.calibration.batches, plan.distill, self.info.task, report=reporter,
                eval_fn=self.subset_evaluator.evaluate, plan=reduced_plan(plan, self.info))
        return model
