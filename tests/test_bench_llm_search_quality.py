"""benchmarks/llm_search_quality.py: dominance, fronts, the knapsack comparison and the targets on hand-made points."""

from __future__ import annotations

import pytest

from benchmarks.llm_search_quality import (MATCH, add_attainable_targets, dominatable, dominator, front, judge,
                                           least_kl, versus)


def pt(label, kl, size, ms):
    return {"label": label, "key": label, "kl": kl, "size_mb": size, "latency_ms": ms}


UNIFORM = [pt("u8", 0.01, 140.0, 20.0), pt("u4", 0.8, 75.0, 10.0)]
DENSE = pt("float32", 0.0, 540.0, 30.0)


def test_a_point_is_dominated_only_by_another_plan_at_least_as_good_in_both_and_better_in_one():
    u8 = UNIFORM[0]
    assert dominator(u8, [u8, pt("same values", 0.01, 140.0, 20.0)], "size_mb") is None
    assert dominator(u8, [pt("smaller", 0.01, 139.0, 25.0)], "size_mb")["label"] == "smaller"
    assert dominator(u8, [pt("smaller", 0.01, 139.0, 25.0)], "latency_ms") is None  # slower
    assert dominator(u8, [pt("closer, bigger", 0.005, 150.0, 20.0)], "size_mb") is None


def test_front_keeps_the_undominated_points_by_the_axis():
    found = [pt("a", 0.5, 80.0, 12.0), pt("b", 0.02, 120.0, 18.0), pt("c", 0.6, 90.0, 9.0),
             pt("a again", 0.5, 80.0, 12.0)]
    assert [p["label"] for p in front(found, "size_mb")] == ["a", "b"]
    assert [p["label"] for p in front(found, "latency_ms")] == ["c", "a", "b"]


def test_least_kl_within_a_budget_and_the_verdicts():
    found = [pt("a", 0.5, 80.0, 12.0), pt("b", 0.02, 120.0, 18.0)]
    assert least_kl(found, "size_mb", 120.0)["label"] == "b"
    assert least_kl(found, "size_mb", 100.0)["label"] == "a"
    assert least_kl(found, "size_mb", 70.0) is None
    knapsack = [{**pt("k size", 0.4, 75.0, 11.0), "pair": "size", "baseline": "u4", "budget": 75.0},
                {**pt("k size 8", 0.02 / (1 + MATCH / 2), 139.0, 19.0), "pair": "size", "baseline": "u8",
                 "budget": 140.0},
                {**pt("k decode", 0.6, 100.0, 12.0), "pair": "decode", "baseline": "u4", "budget": 12.0},
                {**pt("k decode 8", 0.01, 100.0, 18.0), "pair": "decode", "baseline": "u8", "budget": 18.0}]
    verdicts = [(v["kl"], v["verdict"]) for v in versus(knapsack, found)]
    assert verdicts == [(None, "behind"), (0.02, "matches"), (0.5, "beats"), (0.02, "behind")]


def test_judge_names_the_undominated_uniform_plans_and_the_targets():
    found = [*UNIFORM, pt("s", 0.005, 130.0, 25.0), pt("t", 0.7, 70.0, 10.0)]
    knapsack = [{**pt("k", 0.75, 74.0, 10.5), "pair": "size", "baseline": "u4", "budget": 75.0}]
    out = judge(found, UNIFORM, knapsack, DENSE)
    assert out["undominated"] == {"size": [], "decode": ["u8"]}  # s is smaller than u8 but slower
    assert out["targets"] == {"dominates every judged uniform plan on (KL, size)": True,
                              "dominates every judged uniform plan on (KL, decode)": False,
                              "matches or beats the knapsack at every budget": True}
    assert 0 < out["hv"]["size"] < 1 and 0 < out["hv"]["decode"] < 1
    # t alone: a box of (1 - 0.7) x (540 - 70), normalized by 1 x 540
    assert judge([pt("t", 0.7, 70.0, 10.0)], [], [], DENSE)["hv"]["size"] == pytest.approx(0.3 * 470 / 540)


def test_a_uniform_plan_nothing_evaluated_dominates_is_not_asked_of_an_arm():
    """u8 is the fastest plan of the pool: Pareto-optimal on decode, so the attainable target holds without it;
    u4 is dominated on size by a pooled plan the arm did not find, so the arm misses that target."""
    pool = [*UNIFORM, pt("s", 0.005, 130.0, 25.0), pt("r", 0.7, 74.0, 11.0)]
    beaten = dominatable(UNIFORM, pool)
    assert beaten == {"size": ["u8", "u4"], "decode": []}
    found = [*UNIFORM, pt("s", 0.005, 130.0, 25.0)]
    run = {"arms": {"search": judge(found, UNIFORM, [], DENSE)}}
    add_attainable_targets(run, beaten)
    targets = run["arms"]["search"]["targets"]
    assert targets["dominates every uniform plan some evaluated plan dominates (KL, size)"] is False  # u4
    assert targets["dominates every uniform plan some evaluated plan dominates (KL, decode)"] is True
    assert targets["dominates every judged uniform plan on (KL, decode)"] is False  # u8 and u4 undominated
