"""The work of one trial, and the worker state that makes it cheap: load once, run many plans.

`TrialRunner(config)` loads the base model, tokenizer, calibration batches and the task's evaluator once
(per process: the driver for the local backend, each Ray actor for the ray backend). `run(plan_json)`
copies the base model, applies the plan, evaluates, and returns a `TrialOutcome`. It never raises for a
trial's own failure: the exception (or non-finite metrics) comes back as `error`, so one bad plan cannot
take a worker down.
"""

from __future__ import annotations

import copy
import math
import os
import socket
import time
import traceback
from dataclasses import dataclass, field
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


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class TrialRunner:
    """Holds everything a trial needs that does not depend on the plan. Build once per worker process."""

    def __init__(self, config: SearchConfig) -> None:
        from autocompress.data import load_texts, make_batches
        from autocompress.models import load_model

        self.config = config
        d = config.data
        self.loaded = load_model(config.model.name, task=config.model.task,
                                 trust_remote_code=config.model.trust_remote_code)
        self.info = self.loaded.info
        tok = self.loaded.tokenizer
        if tok is None:
            from autocompress.errors import UserError

            raise UserError(f"model {config.model.name!r} has no tokenizer; a search needs one to evaluate")
        calib = load_texts(d.calibration.source, n=d.calibration.n, seed=d.calibration.seed)
        self.calibration = make_batches(tok, calib, batch_size=min(d.batch_size, 16), max_length=d.max_length)
        self.evaluator = self._evaluator()
        self.latency = None
        t = config.target
        if t is not None and t.model_name == "measured":
            from autocompress.evaluators.latency import LATENCY_MODELS, Workload
            from autocompress.hardware import load_profile

            measured = LATENCY_MODELS.get("measured")
            self.latency = (measured(load_profile(t.profile), self.loaded.model, device=t.device),
                            Workload(t.batch, t.seq_len, t.mode))

    def _evaluator(self) -> Any:
        from autocompress.data import load_labeled, load_texts

        d, task, tok, base = self.config.data, self.loaded.task, self.loaded.tokenizer, self.loaded.model
        if task == "embedding":
            from autocompress.evaluators.fidelity import FidelityEvaluator

            texts = load_texts(d.evaluation.source, n=d.evaluation.n, seed=d.evaluation.seed)
            return FidelityEvaluator(base, tok, texts, batch_size=d.batch_size, max_length=d.max_length)
        if task == "causal-lm":
            from autocompress.evaluators.perplexity import PerplexityEvaluator

            texts = load_texts(d.evaluation.source, n=d.evaluation.n, seed=d.evaluation.seed)
            return PerplexityEvaluator(tok, texts, max_length=d.max_length, batch_size=d.batch_size,
                                       reference_model=base)
        from autocompress.errors import UserError
        from autocompress.evaluators.accuracy import AccuracyEvaluator

        if not d.labels:
            raise UserError("data.labels: a sequence-classification search needs a labeled .jsonl/.csv file")
        texts, labels = load_labeled(d.labels)
        return AccuracyEvaluator(tok, texts, labels, label2id=getattr(base.config, "label2id", None))

    def run(self, plan_json: str) -> TrialOutcome:
        """Apply the plan to a copy of the base model and evaluate it. Failures come back as `error`."""
        from autocompress.plan import CompressionPlan
        from autocompress.policies import apply_plan

        outcome = TrialOutcome(worker=worker_name())
        try:
            plan = CompressionPlan.from_json(plan_json)
            t0 = time.perf_counter()
            model = apply_plan(copy.deepcopy(self.loaded.model), plan, self.calibration, info=self.info)
            t1 = time.perf_counter()
            metrics = self.evaluator.evaluate(model)
            outcome.apply_s, outcome.eval_s = t1 - t0, time.perf_counter() - t1
            if self.latency is not None:  # timed on this worker's device with the real kernels
                latency_model, workload = self.latency
                metrics["latency_ms"] = latency_model.predict(plan, self.info, workload).total_ms
            bad = [k for k, v in metrics.items() if not math.isfinite(v)]
            if bad:
                outcome.error = f"non-finite metric {bad[0]} = {metrics[bad[0]]}"
            outcome.metrics = {k: float(v) for k, v in metrics.items()}
        except Exception as exc:  # a trial's failure is data, not a crash of the worker
            last = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
            where = f" ({os.path.basename(last.filename)}:{last.lineno})" if last else ""
            outcome.error = f"{type(exc).__name__}: {exc}{where}"
        return outcome
