"""`apply_plan`: compose every policy on one model in the fixed order `ORDER`."""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import nn

from autocompress.depth.apply import remove_blocks
from autocompress.depth.reduce import reduced
from autocompress.kvcache.runtime import attach_kv_cache
from autocompress.models import ModelInfo, inspect_model
from autocompress.plan import CompressionPlan
from autocompress.policies._base import ORDER, POLICIES, Calibration
from autocompress.validation import validate_plan
from autocompress.vocab.apply import prune_vocab


def apply_plan(model: nn.Module, plan: CompressionPlan,
               calibration: Calibration | Sequence[Mapping[str, torch.Tensor]] | None = None,
               info: ModelInfo | None = None) -> nn.Module:
    """Apply `plan` to `model` in place and return it.

    The plan is validated against the model first (`UserError` on a bad plan, before any weight changes).
    Policies run in `ORDER` = structured -> sparsify -> lowrank -> smooth -> quantize, so on one layer the
    weights are pruned first, then factorized, then smoothed (SmoothQuant), and the integer grid is applied
    last (to the factors where the layer is factorized). Data-aware methods gather their input statistics
    on the model as the earlier stages left it (with `Calibration(sequential=True)`, GPTQ block by block
    through the blocks it already quantized: sequential.py). `calibration` is a `Calibration` or a list of
    tokenized batches; it is only required by plans that use gptq, wanda, whitened SVD, smooth or
    kmeans_weighting. An empty plan leaves the model unchanged. A `kv_cache` entry changes no weight: the model
    carries it (`autocompress.kvcache.runtime`), and the evaluators and generation run it with the quantized cache.
    `drop_blocks` removes those blocks first (`autocompress.depth`); entries of their layers are ignored. A
    `vocab` entry runs next (`autocompress.vocab.apply`): the later policies see the pruned table and head.
    """
    info = info or inspect_model(model)
    validate_plan(plan, info)
    if plan.drop_blocks:  # the blocks go first; the rest of the plan applies to the renumbered blocks left
        remove_blocks(model, plan.drop_blocks, info)
        plan, info = reduced(plan, info)
    if calibration is not None and not isinstance(calibration, Calibration):
        calibration = Calibration(list(calibration))
    was_training = model.training
    model.eval()
    with torch.no_grad():
        if plan.vocab is not None:  # rows go first, so a quantization grid is fitted to the kept rows only
            prune_vocab(model, plan.vocab, info, calibration.batches if calibration is not None else None)
        for name in ORDER:
            policy = POLICIES.get(name)()
            if policy.entries(plan):
                policy.apply(model, plan, calibration)
    attach_kv_cache(model, plan.kv_cache)  # no weights: the model carries the grid its cache is written on
    model.train(was_training)
    return model
