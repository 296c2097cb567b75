"""The search config: one YAML file, validated strictly before any work.

`SearchConfig.from_yaml(path)` reads with `yaml.safe_load` (a repeated key refused: yaml_io.py) and validates
every key with pydantic (`extra="forbid"`): an unknown key, a wrong type or a value out of range raises
`UserError` naming the key's path, the valid keys (with a "did you mean") or the valid range, and repeating
at most ~200 characters of the value (errors.echo). Every key is documented in examples/README.md.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, PrivateAttr, ValidationError, field_validator, model_validator

from autocompress.config_run import (  # noqa: F401  (re-exported: the config's public names)
    BackendSection,
    BudgetSection,
    PrunerSection,
    SamplerSection,
    SensitivitySection,
    TrackingSection,
)
from autocompress.config_sections import (  # noqa: F401  (re-exported: the config's public names)
    METRICS,
    PLAN_METRICS,
    TASK_METRICS,
    DepthSpace,
    DistillSpace,
    EmbeddingSpace,
    KVCacheSpace,
    LowRankSpace,
    PruneSpace,
    QuantizeSpace,
    SpaceSection,
    StructuredSpace,
    VocabSpace,
    _check_metric,
    _Strict,
)
from autocompress.data import TEXT_SOURCES
from autocompress.errors import UserError, echo
from autocompress.objectives import parse_constraint, parse_objective, threshold_bounds  # noqa: F401  (re-exported)
from autocompress.secrets import expand_references
from autocompress.yaml_io import read_yaml  # noqa: F401  (re-exported: cli/run.py and ui.py read run configs with it)

NAME_MAX = 255  # bytes in one file name (Linux, macOS, Windows)


class ModelSection(_Strict):
    name: str
    task: Literal["auto", "embedding", "causal-lm", "sequence-classification"] = "auto"
    trust_remote_code: bool = False


class TextSet(_Strict):
    source: str = "builtin"
    n: int = Field(128, ge=2, le=1_000_000)
    seed: int = 0


class CalibrationSet(TextSet):
    """`data.calibration`: the texts data-aware methods read (extended to enough tokens: calibration.py)."""

    sequential: bool | None = Field(
        None, description="GPTQ quantizes the blocks one after another, each from the outputs of the blocks "
        "before it as already quantized (true), or from one pass over the unquantized model (false); null: true "
        "for causal-lm models, false otherwise")


class DataSection(_Strict):
    calibration: CalibrationSet = CalibrationSet(n=64, seed=1)
    evaluation: TextSet = TextSet(n=128, seed=0)
    labels: str | None = None
    batch_size: int = Field(32, ge=1, le=4096)
    max_length: int = Field(128, ge=8, le=32768)


class TargetSection(_Strict):
    """The device the plans are for; gives the `latency_ms` and `memory_mb` metrics."""

    profile: str
    latency_model: Literal["roofline", "table", "measured"] | None = None
    batch: int = Field(1, ge=1)
    seq_len: int = Field(128, ge=1)
    mode: Literal["prefill", "decode"] = "prefill"
    device: Literal["cpu", "cuda"] = "cpu"
    format: Literal["gguf"] | None = Field(None, description="the file format the plans are exported to; gguf "
                                           "restricts the space to ggml's block types (spaces/formats.py)")

    @model_validator(mode="after")
    def _profile_exists(self) -> "TargetSection":
        from autocompress.hardware import load_profile

        try:
            profile = load_profile(self.profile)
        except UserError as exc:
            raise ValueError(str(exc)) from None
        if self.latency_model == "table" and not profile.table:
            raise ValueError(f"profile {self.profile!r} has no measured table; use latency_model: roofline, or "
                             "calibrate one with `autocompress latency calibrate`")
        return self

    @property
    def model_name(self) -> str:
        """The latency model: as given, else `table` for a calibrated profile with a table, else `roofline`."""
        if self.latency_model:
            return self.latency_model
        from autocompress.hardware import load_profile

        return "table" if load_profile(self.profile).table else "roofline"


class SearchConfig(_Strict):
    model: ModelSection
    data: DataSection = DataSection()
    space: SpaceSection
    objectives: list[str] = Field(["maximize fidelity", "minimize size_mb"], min_length=1)
    constraints: list[str] = []
    budget: BudgetSection = BudgetSection()
    sampler: SamplerSection = SamplerSection()
    backend: BackendSection = BackendSection()
    target: TargetSection | None = None
    sensitivity: SensitivitySection | None = None
    pruner: PrunerSection = PrunerSection()
    storage: str | None = None
    tracking: TrackingSection = TrackingSection()
    study_name: str | None = None
    run_dir: str | None = None
    pick: str | None = None
    _written: dict[str, str] = PrivateAttr(default_factory=dict)  # storage, tracking.uri as written: ${NAME}s

    @field_validator("objectives")
    @classmethod
    def _objectives(cls, v: list[str]) -> list[str]:
        seen = set()
        for text in v:
            direction, metric = parse_objective(text)
            if metric in seen:
                raise ValueError(f"metric {metric!r} appears twice")
            seen.add(metric)
        return v

    @field_validator("constraints")
    @classmethod
    def _constraints(cls, v: list[str]) -> list[str]:
        for text in v:
            parse_constraint(text)
        return v

    @model_validator(mode="after")
    def _study_name_as_a_path(self) -> "SearchConfig":
        """Without run_dir the study name is a directory's name (runs/STUDY_NAME): a plain name that fits."""
        name = self.study_name
        if name is None or self.run_dir is not None:
            return self
        if name in (".", "..") or any(c in name for c in "/\\\0"):
            raise ValueError(f"study_name: {echo(name)} names the run directory (runs/STUDY_NAME), so it must be a "
                             "plain name: not '.' or '..', no '/', '\\' or NUL; rename it, or set run_dir")
        if len(name.encode()) > NAME_MAX:
            raise ValueError(f"study_name: {len(name.encode())} bytes, too long for the name of the run directory "
                             f"(runs/STUDY_NAME, at most {NAME_MAX} bytes); shorten it, or set run_dir")
        return self

    @model_validator(mode="after")
    def _space_fits_format(self) -> "SearchConfig":
        from autocompress.spaces.formats import check_space

        check_space(self.space, self.target_format)
        return self

    @property
    def target_format(self) -> str | None:
        """`target.format`, or None without a target or format."""
        return self.target.format if self.target is not None else None

    @classmethod
    def from_yaml(cls, path: str | os.PathLike, overrides: dict[str, Any] | None = None) -> "SearchConfig":
        """Read and validate a YAML config; relative paths in it resolve against the file's directory.

        `overrides` (e.g. {"budget": {"n_trials": 5}, "run_dir": "x"}) are merged into the YAML before
        validation and before the defaults that depend on other keys (run_dir, storage) are filled."""
        data = read_yaml(path)
        if overrides and isinstance(data, dict):
            data = _merge(data, overrides)
        cfg = cls.from_dict(data, where=str(path))
        return cfg.resolved(Path(path).resolve().parent, default_name=Path(path).stem)

    @classmethod
    def from_dict(cls, data: Any, where: str = "config") -> "SearchConfig":
        """Validate `data`; `${NAME}` references in storage and tracking.uri are expanded from the environment
        (secrets.py), and kept as written for the run directory (`secrets.run_dir_config`)."""
        if data is None:
            raise UserError(f"{where}: the config is empty (no keys); a search config needs at least `model:` "
                            "and `space:` (every key: examples/README.md)")
        if not isinstance(data, dict):
            raise UserError(f"{where}: the YAML must be a mapping of keys (model, space, ...), "
                            f"not a {type(data).__name__}")
        try:
            data, written = expand_references(data)
            config = cls.model_validate(data)
        except UserError as exc:
            raise UserError(f"{where}: {exc}") from None
        except ValidationError as exc:
            raise UserError(f"{where}: {_explain(exc)}") from None
        config._written = written
        return config

    def resolved(self, base: Path, default_name: str = "search") -> "SearchConfig":
        """Fill the defaults that depend on where the config lives: study name, run dir, storage."""
        def local(p: str | None) -> str | None:
            if p is None or p in TEXT_SOURCES or os.path.isabs(p):
                return p
            candidate = base / p
            return str(candidate) if candidate.exists() else p

        name = self.study_name or default_name
        run_dir = self.run_dir or os.path.join("runs", name)
        data = self.data.model_copy(update={
            "calibration": self.data.calibration.model_copy(update={"source": local(self.data.calibration.source)}),
            "evaluation": self.data.evaluation.model_copy(update={"source": local(self.data.evaluation.source)}),
            "labels": local(self.data.labels)})
        tracking = self.tracking
        if tracking.uri.startswith("sqlite:///") and not tracking.uri.startswith("sqlite:////"):
            # relative to the working directory, made absolute so `autocompress ui RUN_DIR` works from anywhere
            tracking = tracking.model_copy(update={"uri": f"sqlite:///{os.path.abspath(tracking.uri[10:])}"})
        target = self.target
        if target is not None and target.profile.endswith((".yaml", ".yml")):
            target = target.model_copy(update={"profile": local(target.profile)})
        return self.model_copy(update={
            "study_name": name, "run_dir": run_dir, "data": data, "tracking": tracking, "target": target,
            "model": self.model.model_copy(update={"name": local(self.model.name)}),
            "storage": self.storage or f"sqlite:///{os.path.abspath(os.path.join(run_dir, 'optuna.db'))}"})

    def check_task(self, task: str) -> None:
        """Raise `UserError` if an objective or constraint names a metric this task cannot produce."""
        available = TASK_METRICS[task] | PLAN_METRICS | {"size_coded_mb"} | ({"latency_ms"} if self.target else set())
        used = [parse_objective(o)[1] for o in self.objectives] + [parse_constraint(c)[0] for c in self.constraints]
        for metric in used:
            if metric == "latency_ms" and not self.target:
                raise UserError("metric 'latency_ms' needs a target: add `target: {profile: NAME}` "
                                "(shipped profiles: `autocompress latency profiles`)")
            if metric == "memory_mb" and not self.target:
                raise UserError("metric 'memory_mb' needs a target (its batch and seq_len size the KV cache, its "
                                "profile's dtype the bytes per value): add `target: {profile: NAME, batch: 1, "
                                "seq_len: 2048}` (shipped profiles: `autocompress latency profiles`)")
            if metric not in available:
                raise UserError(f"metric {metric!r} is not produced for a model of task {task!r}; "
                                f"use one of {', '.join(sorted(available))}")
        if self.pruner.metric is not None and self.pruner.metric not in TASK_METRICS[task]:
            raise UserError(f"pruner.metric {self.pruner.metric!r} is not measured for a model of task {task!r}; "
                            f"use one of {', '.join(sorted(TASK_METRICS[task]))}")
        if self.pruner.name == "threshold":
            threshold_bounds(self, task)  # raises when there is no bound to stop at


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _explain(exc: ValidationError) -> str:
    """The first pydantic error as one line: the key's path, what is wrong, and the fix."""
    errors = exc.errors()
    err = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])  # a typo explains a "missing"
    loc = ".".join(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":
        parent = SearchConfig
        for part in err["loc"][:-1]:
            if isinstance(part, int):
                continue
            ann = parent.model_fields[part].annotation
            parent = next((a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type)
                           and issubclass(a, BaseModel)), parent)
        valid = list(parent.model_fields)
        key = str(err["loc"][-1])
        close = difflib.get_close_matches(key, valid, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"unknown key {loc!r}{hint}; valid keys here: {', '.join(valid)}"
    if err["type"] == "missing":
        return f"missing required key {loc!r}"
    msg = err["msg"].removeprefix("Value error, ")
    return f"{loc}: {msg} (got {echo(err.get('input'))})" if loc else msg
