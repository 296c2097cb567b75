"""Distillation losses: output KD per task and hidden-state matching. All return float32 scalars.

Choices:
  embedding: 1 - cosine of the mean-pooled (attention-masked), L2-normalized last hidden states. This is
    exactly what `FidelityEvaluator` scores (sentence-transformers normalizes embeddings), so the loss
    optimizes the metric itself; a pooled MSE would add a pull on the embedding norm, which normalization
    throws away. The scale of the token states is constrained by the hidden-state term instead.
  causal-lm: KL(teacher || student) of next-token distributions at temperature T, times T^2 (Hinton et
    al.: keeps the gradient scale independent of T), averaged over attended positions.
  sequence-classification: the same KL on the class logits, averaged over texts.
  hidden states: relative MSE, sum((s - t)^2) / sum(t^2) over attended tokens, averaged over the matched
    blocks. Dividing by the teacher's energy makes beta mean the same on BERT (LayerNorm'd states of
    magnitude ~1) and on decoders (residual streams that grow with depth) and across blocks.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from autocompress.evaluators.fidelity import mean_pool

TASK_OUTPUT = {"embedding": "last_hidden_state", "causal-lm": "logits", "sequence-classification": "logits"}


def pooled_cosine_loss(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over texts of 1 - cos(mean_pool(student), mean_pool(teacher)); hidden states [batch, seq, dim]."""
    return 1.0 - (mean_pool(student, mask) * mean_pool(teacher, mask)).sum(-1).mean()


def logit_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float,
             mask: torch.Tensor | None = None) -> torch.Tensor:
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)), summed over the last (class/vocabulary) dim and
    averaged over the other positions, or over those where `mask` ([batch, seq]) is 1."""
    t = F.log_softmax(teacher.float() / temperature, dim=-1)
    s = F.log_softmax(student.float() / temperature, dim=-1)
    kl = (t.exp() * (t - s)).sum(-1)
    if mask is not None:
        m = mask.to(kl.dtype)
        kl = (kl * m).sum() / m.sum().clamp_min(1.0)
    else:
        kl = kl.mean()
    return kl * temperature ** 2


def output_kd(task: str, student_out, teacher_out, mask: torch.Tensor, temperature: float) -> torch.Tensor:
    """The output KD loss of `task` (see the module doc) from two Hugging Face model outputs."""
    if task == "embedding":
        return pooled_cosine_loss(student_out.last_hidden_state, teacher_out.last_hidden_state, mask)
    if task == "causal-lm":
        return logit_kl(student_out.logits, teacher_out.logits, temperature, mask)
    if task == "sequence-classification":
        return logit_kl(student_out.logits, teacher_out.logits, temperature)
    raise ValueError(f"distillation: unknown task {task!r}; use one of {', '.join(TASK_OUTPUT)}")


def hidden_loss(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor], blocks: Sequence[int],
                mask: torch.Tensor) -> torch.Tensor:
    """Mean over `blocks` of the relative MSE between the outputs of block i, `hidden_states[i + 1]` as
    transformers returns them (index 0 is the embedding output; for decoders the last entry is taken after
    the final norm), over attended tokens."""
    m = mask.bool()
    losses = []
    for i in blocks:
        s, t = student[i + 1][m].float(), teacher[i + 1][m].float()
        losses.append((s - t).pow(2).sum() / t.pow(2).sum().clamp_min(1e-12))
    return torch.stack(losses).mean()
