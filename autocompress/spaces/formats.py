"""What a search aimed at a serving format may propose (`target.format`), and the check that a space fits it.

`target.format: gguf` (llama.cpp's files, written by `autocompress.export.gguf_writer`): every quantized
weight is one of ggml's block types, evaluated on exactly ggml's grid (`LayerPlan.gguf_type`,
policies/ggml.py), so the GGUF file exported from any trial is the model that trial scored:
  bits        the space's 4, 5, 8 and null choices (others are dropped; none of 4/5/8 is an error);
  symmetric   the space's choices: true gives Q4_0 / Q5_0, false Q4_1 / Q5_1; 8 bits is always Q8_0
              (GGUF has no asymmetric 8-bit weight type), so symmetric is not drawn there;
  group_size  32 (ggml's block), whatever the space says;
  act_bits, smooth   null: GGUF stores weights, not activation formats;
  method      rtn or gptq as the space says (both round onto the ggml grid; kmeans is refused);
  layers      only those whose inputs are a multiple of 32 (ggml's rows are whole blocks); others stay dense.
The same holds for `space.embeddings` (bits, symmetric; group_size 32). `space.prune`, `space.structured`,
`space.lowrank` and a `space.distill` with steps are refused: a GGUF of the model's architecture holds
none of them (sparsity would be stored dense and save nothing, factor pairs and per-layer head counts have no
tensor names, distillation moves weights off ggml's grid).
"""

from __future__ import annotations

from typing import Any, Sequence

from autocompress.plan import GGUF_BLOCK, GGUF_TYPES, gguf_type_of as gguf_type

FORMATS = ("gguf",)
GGUF_BITS = tuple(sorted({bits for bits, _ in GGUF_TYPES.values()}))


def check_space(space: Any, fmt: str | None) -> None:
    """Raise ValueError (one line, naming the section and the fix) when `space` (a `SpaceSection`) proposes
    plans `fmt` cannot hold; see the module docstring."""
    if fmt != "gguf":
        return
    for section in ("prune", "structured", "lowrank"):
        if getattr(space, section) is not None:
            raise ValueError(f"target.format gguf: space.{section} proposes plans a GGUF file cannot hold; remove "
                             f"space.{section}, or target.format to search the other formats")
    if space.quantize is not None and "kmeans" in space.quantize.method:
        raise ValueError("target.format gguf: space.quantize.method kmeans proposes codebooks, which ggml's block "
                         "types cannot hold; use rtn or gptq, or drop target.format")
    if space.distill is not None and any(s > 0 for s in space.distill.choices("steps")):
        raise ValueError("target.format gguf: space.distill moves weights off ggml's block grid; remove "
                         "space.distill (or set its steps to 0)")
    for section in ("quantize", "embeddings"):
        sec = getattr(space, section)
        if sec is not None and not any(b in GGUF_BITS for b in sec.bits):
            raise ValueError(f"target.format gguf: space.{section}.bits {sec.bits} has none of the GGUF "
                             f"widths {', '.join(map(str, GGUF_BITS))}; add 4, 5 or 8")


class FormatChoices:
    """The choices each field of a space section offers under a target format (None: the space's own)."""

    def __init__(self, fmt: str | None) -> None:
        self.fmt = fmt

    @property
    def gguf(self) -> bool:
        return self.fmt == "gguf"

    def of(self, field: str, configured: Sequence[Any], bits: int | None = None) -> list[Any]:
        """The choices of `field` (bits, group_size, symmetric, act_bits, smooth); `bits` the unit's drawn
        width, for `symmetric`."""
        choices = list(configured)
        if not self.gguf:
            return choices
        if field == "bits":
            return [b for b in choices if b is None or b in GGUF_BITS]
        if field == "group_size":
            return [GGUF_BLOCK]
        if field in ("act_bits", "smooth"):
            return [None]
        if field == "symmetric" and bits is not None:
            return [s for s in choices if gguf_type(bits, s) is not None] or [True]
        return choices

    def fields(self, bits: int, symmetric: bool) -> dict[str, Any]:
        """Plan fields a quantized unit gets beyond the drawn ones: its `gguf_type` under gguf."""
        return {"gguf_type": gguf_type(bits, symmetric)} if self.gguf else {}

    def fits(self, inputs: int) -> bool:
        """Whether a weight with `inputs` columns can be quantized in this format."""
        return not self.gguf or inputs % GGUF_BLOCK == 0

