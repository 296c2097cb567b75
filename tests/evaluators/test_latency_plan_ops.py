"""`plan_ops`: the LM head tied to the embedding table is priced in the format its plan entry gives it."""

from __future__ import annotations

from autocompress.config import SpaceSection
from autocompress.evaluators.latency._base import Workload, plan_ops
from autocompress.loading import load_model
from autocompress.spaces import ConfigSpace


def test_a_tied_head_quantized_through_space_embeddings_is_a_quantized_gemm():
    info = load_model("random:llama-tied").info
    cs = ConfigSpace(SpaceSection.model_validate({"embeddings": {"bits": [4, None], "group_size": [32]}}), info)
    for bits, fmt in ((4, "w4"), (None, "dense")):
        plan = cs.plan_from_params({"model.embed_tokens.bits": bits})
        for workload in (Workload(batch=2, seq_len=16), Workload(batch=2, seq_len=16, mode="decode")):
            head = [op for op in plan_ops(plan, info, workload) if op.layer == "lm_head"]
            assert [(op.kind, op.m, op.k, op.n, op.fmt) for op in head] == [("gemm", 2, 64, 30522, fmt)]
