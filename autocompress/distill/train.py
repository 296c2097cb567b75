"""`distill`: train a compressed model (the student) to match its original (the teacher), plan kept true.

`apply_and_distill` is the step a trial runs: `apply_plan` on a deep copy of the base model, then `distill`
when the plan carries a `DistillConfig` with steps > 0. Distillation is not a registered policy: it needs
the teacher, so it always comes after every policy has run.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from autocompress.distill.batching import MODEL_INPUTS, cycle_batches, split_rows
from autocompress.distill_spec import DistillConfig
from autocompress.distill.constraints import constrain
from autocompress.distill.losses import TASK_OUTPUT, hidden_loss, logit_kl, output_kd
from autocompress.errors import UserError
from autocompress.evaluators._base import model_device, to_device
from autocompress.evaluators.fidelity import mean_pool
from autocompress.models import ModelInfo, inspect_model
from autocompress.plan import CompressionPlan

Batch = Mapping[str, torch.Tensor]
Report = Callable[[int, dict[str, float]], bool]
EvalFn = Callable[[nn.Module], Mapping[str, float]]
RESULT_ATTR = "_autocompress_distill"  # apply_and_distill leaves the DistillResult (or None) on the model


@dataclass
class DistillResult:
    """What one `distill` call did. `losses[i]` is the total loss of step i + 1; `evals` holds (step,
    metrics) for each intermediate report; `seconds` is the wall time of the whole call."""

    steps_run: int = 0
    stopped_early: bool = False
    losses: list[float] = field(default_factory=list)
    evals: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    seconds: float = 0.0
    trainable_params: int = 0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["evals"] = [{"step": s, **m} for s, m in self.evals]
        return out


class _HeldOut:
    """The default intermediate metric: on fixed batches, the cosine of pooled embeddings (embedding) or the
    KL at T = 1 (logit tasks) between student and teacher. Teacher outputs are computed once, here."""

    def __init__(self, teacher: nn.Module, batches: Sequence[Batch], task: str, device: torch.device) -> None:
        self.task = task
        self.batches = [to_device({k: b[k] for k in MODEL_INPUTS if k in b}, device) for b in batches]
        self.reference = [self._output(teacher, b) for b in self.batches]

    def _output(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        with torch.no_grad():
            out = getattr(model(**batch), TASK_OUTPUT[self.task])
        return mean_pool(out, batch["attention_mask"]) if self.task == "embedding" else out.float()

    def __call__(self, student: nn.Module) -> dict[str, float]:
        values = []
        for batch, ref in zip(self.batches, self.reference):
            out = self._output(student, batch)
            if self.task == "embedding":
                values.append((out * ref).sum(-1).mean().item())
            else:
                mask = batch["attention_mask"] if self.task == "causal-lm" else None
                values.append(logit_kl(out, ref, 1.0, mask).item())
        return {("cosine" if self.task == "embedding" else "kl"): sum(values) / len(values)}


def _n_blocks(info: ModelInfo, model: nn.Module) -> int:
    return len(model.get_submodule(info.block_prefix)) if info.block_prefix else 0


def _forward(model: nn.Module, batch: Batch, hidden: bool):
    return model(**batch, output_hidden_states=True) if hidden else model(**batch)


def _losses(student: nn.Module, teacher: nn.Module, batch: Batch, cfg: DistillConfig, task: str,
            blocks: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total, output KD, hidden) losses of one batch; only the student's side carries gradients."""
    mask = batch["attention_mask"]
    with torch.no_grad():
        t_out = _forward(teacher, batch, bool(blocks))
    s_out = _forward(student, batch, bool(blocks))
    kd = output_kd(task, s_out, t_out, mask, cfg.temperature) if cfg.alpha > 0 else torch.zeros(())
    hid = torch.zeros(())
    if blocks:
        if len(t_out.hidden_states) < max(blocks) + 2:
            raise ValueError(f"the model returns {len(t_out.hidden_states)} hidden states, too few for blocks {blocks}")
        hid = hidden_loss(s_out.hidden_states, t_out.hidden_states, blocks, mask)
    return cfg.alpha * kd + cfg.beta * hid, kd, hid


def distill(student: nn.Module, teacher: nn.Module, batches: Sequence[Batch], cfg: DistillConfig, task: str,
            report: Report | None = None, eval_fn: EvalFn | None = None, *, plan: CompressionPlan | None = None,
            held_out: Sequence[Batch] | None = None) -> DistillResult:
    """Train `student` in place for `cfg.steps` AdamW steps (lr `cfg.lr`, no weight decay) to match `teacher`.

    Each step takes `cfg.batch_size` rows of the tokenized `batches` (cycled in a `cfg.seed` order, each row
    cut to `cfg.max_length` attended tokens: see batching.py) and minimizes
    alpha * output KD + beta * relative MSE of the hidden states of the `cfg.layers` blocks (losses.py).
    The teacher runs frozen, in eval mode, without gradients; the student also runs in eval mode (no dropout,
    so a seed fixes the whole run) and both modes are restored. What trains and how the plan stays true
    (grids, zeros, ranks, shapes, hooks) is constraints.py's contract; `plan` names the constrained layers
    (None: read off the model). The student's device is used for everything; the teacher must be on it.

    Every `cfg.eval_every` steps, when `report` or `eval_fn` is given, intermediate metrics are measured:
    "loss", "kd", "hidden" (means over the steps since the last report), then `eval_fn(student)`'s metrics,
    or without `eval_fn` the held-out metric ("cosine" for embeddings, "kl" for logit tasks) on `held_out`
    (None: the last of `batches`, which is then not trained on, or the only batch). `report(step, metrics)`
    returning True stops training there (`stopped_early`). A non-finite loss raises ValueError (the
    constraints still hold: the weights are written back on their grid before it propagates).
    """
    if task not in TASK_OUTPUT:
        raise UserError(f"distillation: task {task!r} is not supported; use one of {', '.join(TASK_OUTPUT)}")
    if student is teacher:
        raise ValueError("distill needs the compressed model and the original as two separate modules")
    t_start = time.perf_counter()
    result = DistillResult()
    if not cfg.enabled:
        return result
    measure = report is not None or eval_fn is not None
    batches = list(batches)
    if measure and eval_fn is None and held_out is None:
        held_out = batches[-1:]
        batches = batches[:-1] or held_out
    info = inspect_model(teacher, task)
    blocks = cfg.block_indices(_n_blocks(info, teacher)) if cfg.beta > 0 else []
    rows = split_rows(batches, cfg.max_length)
    device = model_device(student)
    default_eval = _HeldOut(teacher, held_out, task, device) if measure and eval_fn is None else None

    was_training, teacher_training = student.training, teacher.training
    student.eval()
    teacher.eval()
    cons = constrain(student, plan, teacher, inspect_model(student, task).block_prefix)
    try:
        result.trainable_params = sum(p.numel() for p in cons.trainable)
        fused = all(p.device.type in ("cpu", "cuda") for p in cons.trainable) or None  # one pass per step
        optimizer = torch.optim.AdamW(cons.trainable, lr=cfg.lr, weight_decay=0.0, fused=fused)
        stream = cycle_batches(rows, cfg.batch_size, cfg.seed)
        window: dict[str, list[float]] = {"loss": [], "kd": [], "hidden": []}
        for step in range(1, cfg.steps + 1):
            loss, kd, hid = _losses(student, teacher, to_device(next(stream), device), cfg, task, blocks)
            value = loss.item()
            if not math.isfinite(value):
                raise ValueError(f"distillation loss became {value} at step {step}; lower distill.lr "
                                 f"(now {cfg.lr:g})")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            cons.reapply_masks()
            result.steps_run = step
            result.losses.append(value)
            for key, v in (("loss", value), ("kd", kd.item()), ("hidden", hid.item())):
                window[key].append(v)
            if measure and step % cfg.eval_every == 0:
                metrics = {k: sum(v) / len(v) for k, v in window.items()}
                window = {k: [] for k in window}
                extra = eval_fn(student) if eval_fn is not None else default_eval(student)
                student.eval()  # an eval_fn may restore another mode
                metrics.update({k: float(v) for k, v in extra.items()})
                result.evals.append((step, metrics))
                if report is not None and report(step, metrics):
                    result.stopped_early = step < cfg.steps
                    break
    finally:
        cons.release()
        student.train(was_training)
        teacher.train(teacher_training)
        result.seconds = time.perf_counter() - t_start
    return result


def apply_and_distill(base_model: nn.Module, plan: CompressionPlan, calibration: Any, info: ModelInfo,
                      report: Report | None = None, eval_fn: EvalFn | None = None,
                      held_out: Sequence[Batch] | None = None, model: nn.Module | None = None) -> nn.Module:
    """A compressed copy of `base_model`: `apply_plan(deepcopy(base_model), plan, calibration, info)`, then,
    when `plan.distill` is set with steps > 0, `distill` towards `base_model` (the teacher, left unchanged)
    on the calibration batches (a `Calibration` or a list of tokenized batches; required then) for the task
    `info.task`. The `DistillResult` (or None without distillation) is left on the returned model as the
    attribute `_autocompress_distill` (RESULT_ATTR). `model`, when given, is the copy to compress (the caller
    vouches that it is in `base_model`'s exact state: a `ModelWorkspace` checkout); no deep copy is made then."""
    from autocompress.depth.reduce import reduced_plan
    from autocompress.policies import Calibration, apply_plan

    model = apply_plan(copy.deepcopy(base_model) if model is None else model, plan, calibration, info=info)
    result = None
    cfg = plan.distill
    if cfg is not None and cfg.enabled:
        batches = calibration.batches if isinstance(calibration, Calibration) else list(calibration or [])
        if not batches:
            raise UserError("plan distill: distillation needs calibration batches; pass the config's "
                            "data.calibration texts")
        result = distill(model, base_model, batches, cfg, info.task, report=report, eval_fn=eval_fn,
                         plan=reduced_plan(plan, info), held_out=held_out)  # the blocks left, renumbered
    setattr(model, RESULT_ATTR, result)
    return model
