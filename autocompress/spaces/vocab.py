"""`space.vocab`: the vocabulary decision of a search (`VocabChoices`), drawn after the KV cache.

One unit `vocab`, param `vocab.keep` (the share of the vocabulary kept); a single choice is a constant and draws
nothing, like every other section. The shares are offered largest first (1.0 first when it is a choice), so
"the first choice", which the uniform baselines give the techniques they do not test, keeps the whole
vocabulary. The drawn share is the plan's `vocab.keep` (MLflow logs it as the parameter `vocab.keep`); the ids
are resolved when the plan is applied (vocab/frequency.py).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from autocompress.config import VocabSpace
from autocompress.errors import UserError
from autocompress.models import ModelInfo
from autocompress.vocab.plan import VocabPlan, check_vocab

UNIT = "vocab"
FIELDS = {"keep"}
Pick = Callable[[str, str, Sequence[Any]], Any]


class VocabChoices:
    """The decision of one `space.vocab` section on one model. `UserError` (one line) for a model without a
    token table."""

    def __init__(self, section: VocabSpace, info: ModelInfo) -> None:
        self.section = section
        self.keep = sorted({float(k) for k in section.keep}, reverse=True)
        self.units = [UNIT]
        try:
            check_vocab(VocabPlan(keep=self.keep[-1]), info)
        except UserError as exc:
            raise UserError(f"space.{exc}") from None

    def draw(self, pick: Pick) -> VocabPlan | None:
        """The vocabulary's plan from `pick(unit, field, choices)`, or None when the whole vocabulary is kept."""
        keep = pick(UNIT, "keep", self.keep)
        return None if keep >= 1.0 else VocabPlan(keep=keep)

    def baselines(self) -> list[tuple[str, dict[str, Any]]]:
        """("vocab", {"keep": k}) for each share below 1: a uniform baseline each."""
        return [(UNIT, {"keep": k}) for k in self.keep if k < 1.0]
