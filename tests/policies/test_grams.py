"""GramHooks: X^T X / tokens per module, padded positions left out, one product for modules sharing an input."""

import pytest
import torch
from torch import nn

from autocompress.policies.grams import GramHooks


class SharedInput(nn.Module):
    """q/k/v read one tensor (as in an attention block); `out` reads another."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.v, self.out = (nn.Linear(8, 8) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(x)
        return self.out(self.q(h) + self.k(h) + self.v(h))


def test_grams_equal_the_products_of_each_module_input_with_padding_left_out():
    torch.manual_seed(0)
    model = SharedInput()
    batches = [torch.randn(2, 5, 8), torch.randn(2, 5, 8)]
    masks = [torch.ones(2, 5, dtype=torch.bool), torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)]
    with GramHooks({n: getattr(model, n) for n in ("q", "k", "v", "out")}) as hooks:
        for x, mask in zip(batches, masks):
            hooks.mask = mask
            model(x)
    grams = hooks.result()

    def expected(inputs):
        rows = torch.cat([i[m] for i, m in zip(inputs, masks)])
        return rows.T @ rows / rows.shape[0]

    shared = [torch.tanh(x) for x in batches]
    for name in ("q", "k", "v"):
        torch.testing.assert_close(grams[name], expected(shared))
    with torch.no_grad():
        outs = [model.q(h) + model.k(h) + model.v(h) for h in shared]
    torch.testing.assert_close(grams["out"], expected(outs))
    assert hooks.counts == {"q": 18, "k": 18, "v": 18, "out": 18}  # 10 + 8 unpadded rows


def test_a_module_never_run_is_named():
    model = SharedInput()
    with GramHooks({"q": model.q}) as hooks:
        pass
    with pytest.raises(RuntimeError, match="'q'"):
        hooks.result()
