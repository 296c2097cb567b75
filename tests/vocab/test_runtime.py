"""The id map in front of the table and the logit map behind the head."""

from __future__ import annotations

import math

import torch
from torch import nn

from autocompress.vocab.runtime import attach_head, attach_table, build_id_map, fallback_class


def test_id_map_sends_dropped_ids_to_the_fallback_row():
    id_map = build_id_map([2, 5, 7], fallback=5, vocab_size=9)
    assert id_map.dtype == torch.int32
    assert id_map.tolist() == [1, 1, 0, 1, 1, 1, 1, 2, 1]
    assert fallback_class(id_map, torch.tensor([2, 5, 0, 7])).tolist() == [False, True, True, False]
    assert build_id_map([2, 5, 7], fallback=None, vocab_size=9).tolist() == [3, 3, 0, 3, 3, 1, 3, 2, 3]


def test_table_takes_original_ids_and_head_gives_a_distribution_over_them():
    torch.manual_seed(0)
    full = nn.Embedding(9, 4)
    keep = [2, 5, 7]
    id_map = build_id_map(keep, fallback=5, vocab_size=9)
    table = nn.Embedding(3, 4)
    table.weight.data = full.weight.data[keep].clone()
    attach_table(table, id_map)
    assert torch.equal(table(torch.tensor([7, 0])), full.weight.data[[7, 5]])
    head = nn.Linear(4, 3, bias=False)
    attach_head(head, id_map)
    x = torch.randn(2, 4)
    kept_logits = x @ head.weight.data.t()
    logits = head(x)
    assert logits.shape == (2, 9)
    assert torch.equal(logits[:, 7], kept_logits[:, 2])
    # the fallback row's logit shared by the fallback and the 6 dropped ids: log(7) below it
    assert torch.allclose(logits[:, 0], kept_logits[:, 1] - math.log(7))
    assert torch.allclose(torch.logsumexp(logits, -1), torch.logsumexp(kept_logits, -1), atol=1e-6)
    assert "vocab_id_map" in table.state_dict() and not head.state_dict().keys() - {"weight"}
