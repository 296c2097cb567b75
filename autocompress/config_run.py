"""The parts of the search config that say how the search runs: its budget, sampler, early stopping (pruner),
sensitivity seeding, workers (backend) and MLflow tracking. `autocompress.config` re-exports every name here; import from there.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from autocompress.config_sections import PLAN_METRICS, _check_metric, _Strict


class BudgetSection(_Strict):
    n_trials: int | None = Field(20, ge=1)
    timeout_s: float | None = Field(None, gt=0)
    trial_timeout_s: float | None = Field(
        None, gt=0, description="a trial still running after this many seconds ends FAIL ('timed out after N s') "
        "and its worker process is killed and replaced; with the local backend, setting it runs the trials in a "
        "child process (a hung trial can only be stopped by killing its process)")

    @model_validator(mode="after")
    def _some_limit(self) -> "BudgetSection":
        if self.n_trials is None and self.timeout_s is None:
            raise ValueError("set n_trials, timeout_s or both; a search needs a limit")
        return self


class SamplerSection(_Strict):
    name: Literal["nsga2", "tpe", "random", "gp"] = "nsga2"
    seed: int | None = 0
    population_size: int | None = Field(None, ge=2)
    enqueue_uniform: bool = True


class PrunerSection(_Strict):
    """Early stopping of bad trials with an Optuna pruner (search/early_stopping.py). Unset arguments keep Optuna's
    defaults; an argument the named pruner does not take is refused."""

    name: Literal["none", "median", "percentile", "successive_halving", "hyperband", "threshold"] = "none"
    metric: str | None = Field(None, description="the quality metric reported at each step; default: the first "
                                                 "objective the evaluator measures, else the task's quality metric")
    subset: float = Field(0.25, gt=0, le=1, description="share of data.evaluation (at least 8 texts) that the "
                                                        "intermediate steps evaluate on")
    n_startup_trials: int | None = Field(None, ge=0)
    n_warmup_steps: int | None = Field(None, ge=0)
    interval_steps: int | None = Field(None, ge=1)
    percentile: float | None = Field(None, ge=0, le=100)
    min_resource: int | Literal["auto"] | None = None
    max_resource: int | Literal["auto"] | None = None
    reduction_factor: int | None = Field(None, ge=2)
    min_early_stopping_rate: int | None = Field(None, ge=0)
    lower: float | None = None
    upper: float | None = None

    ARGS: ClassVar[dict[str, tuple[str, ...]]] = {
        "none": (), "median": ("n_startup_trials", "n_warmup_steps", "interval_steps"),
        "percentile": ("percentile", "n_startup_trials", "n_warmup_steps", "interval_steps"),
        "successive_halving": ("min_resource", "reduction_factor", "min_early_stopping_rate"),
        "hyperband": ("min_resource", "max_resource", "reduction_factor"),
        "threshold": ("lower", "upper", "n_warmup_steps", "interval_steps")}

    @model_validator(mode="after")
    def _args_fit(self) -> "PrunerSection":
        args = self.ARGS[self.name]
        extra = [k for k in sorted(self.model_fields_set) if k not in ("name", "metric", "subset", *args)
                 and getattr(self, k) is not None]
        if extra:
            takes = ", ".join(args) or "no arguments"
            raise ValueError(f"{extra[0]} is not an argument of the {self.name} pruner (it takes {takes})")
        if self.name == "percentile" and self.percentile is None:
            raise ValueError("the percentile pruner needs percentile (0..100), e.g. percentile: 25")
        if self.name == "hyperband" and self.min_resource == "auto":
            raise ValueError("min_resource 'auto' is only for successive_halving; give hyperband an integer >= 1")
        for k in ("min_resource", "max_resource"):
            if isinstance(getattr(self, k), int) and getattr(self, k) < 1:
                raise ValueError(f"{k} must be an integer >= 1 or 'auto'")
        if self.metric is not None:
            _check_metric(self.metric)
            if self.metric == "size_coded_mb":
                raise ValueError("metric 'size_coded_mb' is a size, known once a trial is done; a pruner needs a "
                                 "quality metric such as fidelity, perplexity or accuracy")
            if self.metric in PLAN_METRICS or self.metric == "latency_ms":
                raise ValueError(f"metric {self.metric!r} is decided by the plan; a pruner needs a quality metric "
                                 "such as fidelity, perplexity or accuracy")
        return self


class SensitivitySection(_Strict):
    """Per-unit sensitivity (`autocompress sensitivity`): measured once, cached in the run directory."""

    seed: bool = Field(True, description="a fresh study starts from plans built from the sensitivity "
                                         "(one per threshold); false measures nothing and seeds nothing")
    thresholds: list[float] = Field([0.002, 0.01, 0.03], min_length=1,
                                    description="quality drop each unit may cost alone, one seeded plan each")
    budgets: bool = Field(True, description="also one plan per uniform baseline: the least summed drop at no "
                                            "more packed bytes, and at no more predicted latency when the "
                                            "target prices plans (search/seeding/allocation.py)")
    swaps: list[Annotated[int, Field(ge=1)]] = Field(
        [2, 16], description="also each uniform baseline with its k best swaps between units of one shape that add "
        "no bytes, one plan per k (search/seeding/swaps.py); [] for none")

    @field_validator("thresholds")
    @classmethod
    def _non_negative(cls, v: list[float]) -> list[float]:
        if any(t < 0 for t in v):
            raise ValueError("each threshold must be >= 0 (a quality drop)")
        return v


class BackendSection(_Strict):
    name: Literal["local", "ray"] = "local"
    workers: int = Field(1, ge=1, le=4096)
    cpus_per_trial: float = Field(1.0, gt=0)
    gpus_per_trial: float = Field(0.0, ge=0)
    device: Literal["cpu", "cuda"] = Field(
        "cpu", description="where trials run: the base model, its working copy, the calibration batches and the "
        "evaluation on this device; cuda: the worker's GPU (on the ray backend each actor's share of one, "
        "gpus_per_trial)")
    address: str | None = None
    max_retries: int = Field(
        1, ge=0, le=10, description="how many times a trial is run again, with the same params, when the "
        "process running it dies (a Ray actor or the local child process killed, or the driver itself); "
        "after that the trial ends FAIL with the reason")
    heartbeat_s: int = Field(
        10, ge=1, le=3600, description="with an RDB storage (SQLite, PostgreSQL) the driver records a heartbeat "
        "for each of its running trials every heartbeat_s; a RUNNING trial with none for 3 x heartbeat_s belongs "
        "to a dead driver: it ends FAIL ('driver died') and its params are queued again")

    @model_validator(mode="after")
    def _gpus_used(self) -> "BackendSection":
        if self.gpus_per_trial > 0 and self.device == "cpu":
            raise ValueError("gpus_per_trial reserves GPUs that trials on device cpu would not use; set "
                             "backend.device: cuda, or gpus_per_trial: 0")
        if self.device == "cuda" and self.name == "ray" and self.gpus_per_trial == 0:
            raise ValueError("device cuda on the ray backend needs gpus_per_trial > 0 (Ray hides the GPUs from an "
                             "actor that reserves none); e.g. gpus_per_trial: 0.25 lets four workers share one GPU")
        return self


class TrackingSection(_Strict):
    uri: str = "sqlite:///mlflow.db"
    experiment: str = "autocompress"
    timeout_s: float = Field(
        10.0, gt=0, le=600, description="the longest one MLflow request may take during the search "
                                        "(MLFLOW_HTTP_REQUEST_TIMEOUT; not retried at once)")
    retry_s: float = Field(
        30.0, ge=0, description="after a logging failure the trials are kept in memory and MLflow is tried "
                                "again retry_s later (at least 1 s) by the MLflow writer thread, and at the end")
    writer: Literal["thread", "process"] = Field(
        "thread", description="who logs the trials: a thread of the driver, or a child process "
                              "(search/tracking/writer_process.py) that keeps MLflow's ~40 ms of Python per trial off the "
                              "driver's interpreter; for trials well under a second (GPU workers)")
