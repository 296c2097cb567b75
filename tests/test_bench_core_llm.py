"""benchmarks/core_llm.py: merging rows across `--only` runs, and the literature's claims checked on the rows."""

from __future__ import annotations

import pytest

from benchmarks.core_llm import compatible_rows, comparisons

ORDER = ["original", "W3 g128 RTN", "W3 g128 GPTQ", "50% magnitude", "50% Wanda"]
SETTINGS = {"model": "m", "n_eval": 40, "max_length": 256}


def row(case, perplexity, kl):
    return {"case": case, "perplexity": perplexity, "kl": kl}


def test_rows_of_the_same_settings_are_kept_and_rerun_cases_replaced_in_case_order():
    saved = {"settings": dict(SETTINGS), "rows": [row("50% Wanda", 30.0, 0.3), row("original", 20.0, 0.0)]}
    merged = compatible_rows(saved, SETTINGS, [row("W3 g128 RTN", 300.0, 2.0), row("original", 19.0, 0.0)], ORDER)
    assert [r["case"] for r in merged] == ["original", "W3 g128 RTN", "50% Wanda"]
    assert merged[0]["perplexity"] == 19.0  # the rerun replaced the saved row


def test_rows_measured_with_other_settings_are_dropped():
    saved = {"settings": {**SETTINGS, "n_eval": 8}, "rows": [row("50% Wanda", 30.0, 0.3)]}
    assert compatible_rows(saved, SETTINGS, [row("original", 20.0, 0.0)], ORDER) == [row("original", 20.0, 0.0)]
    assert compatible_rows(None, SETTINGS, [row("original", 20.0, 0.0)], ORDER) == [row("original", 20.0, 0.0)]


def test_a_claim_holds_only_at_its_factor_and_with_a_lower_kl():
    rows = [row("original", 20.0, 0.0), row("W3 g128 RTN", 400.0, 3.0), row("W3 g128 GPTQ", 50.0, 1.0),
            row("50% magnitude", 60.0, 0.9), row("50% Wanda", 40.0, 0.5)]
    by = {c["method"]: c for c in comparisons(rows)}
    assert set(by) == {"W3 g128 GPTQ", "50% Wanda"}  # only pairs whose two rows are present
    gptq = by["W3 g128 GPTQ"]
    assert gptq["ppl_cut"] == pytest.approx(8.0) and gptq["kl_cut"] == pytest.approx(3.0)
    assert gptq["excess_cut"] == pytest.approx(380.0 / 30.0)
    assert not gptq["holds"]  # 8x, the paper's claim is more than 10x
    assert by["50% Wanda"]["holds"]
    rows[-1] = row("50% Wanda", 40.0, 1.2)  # lower perplexity but a higher KL
    assert not {c["method"]: c for c in comparisons(rows)}["50% Wanda"]["holds"]


def test_without_the_original_there_is_no_excess_cut():
    (c,) = comparisons([row("50% magnitude", 60.0, 0.9), row("50% Wanda", 40.0, 0.5)])
    assert c["excess_cut"] is None and c["holds"]
