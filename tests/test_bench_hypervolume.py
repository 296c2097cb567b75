"""benchmarks/hypervolume.py: fixed-reference hypervolume of a study's feasible front, after every trial."""

from __future__ import annotations

import optuna
import pytest

from benchmarks.hypervolume import hypervolume, hypervolume_curve, is_feasible, trials_to_reach

OBJ = ["maximize fidelity", "minimize size_mb"]
REF = {"fidelity": 0.9, "size_mb": 100.0}
IDEAL = {"fidelity": 1.0, "size_mb": 0.0}


def test_one_point_is_its_box_and_normalizes_to_the_ideal_box():
    assert hypervolume([(0.95, 50.0)], OBJ, REF) == pytest.approx(0.05 * 50.0)
    assert hypervolume([(0.95, 50.0)], OBJ, REF, IDEAL) == pytest.approx(0.25)
    assert hypervolume([(1.0, 0.0)], OBJ, REF, IDEAL) == pytest.approx(1.0)


def test_union_of_boxes_dominated_points_and_points_beyond_the_reference():
    # (0.99, 80): box 0.09 x 20 = 1.8; (0.95, 40): box 0.05 x 60 = 3.0; overlap 0.05 x 20 = 1.0 -> 3.8
    two = hypervolume([(0.99, 80.0), (0.95, 40.0)], OBJ, REF)
    assert two == pytest.approx(3.8)
    assert hypervolume([(0.99, 80.0), (0.95, 40.0), (0.94, 90.0)], OBJ, REF) == pytest.approx(two)  # dominated
    assert hypervolume([(0.99, 80.0), (0.95, 40.0), (0.85, 1.0), (0.999, 120.0)], OBJ, REF) == pytest.approx(two)
    assert hypervolume([], OBJ, REF) == 0.0
    assert hypervolume([(0.5, 1.0)], OBJ, REF) == 0.0


def test_objective_order_follows_the_objectives():
    swapped = ["minimize size_mb", "maximize fidelity"]
    expected = hypervolume([(0.95, 40.0)], OBJ, REF, IDEAL)
    assert hypervolume([(40.0, 0.95)], swapped, REF, IDEAL) == pytest.approx(expected)
    with pytest.raises(ValueError):
        hypervolume([(0.95, 40.0)], ["largest fidelity", "minimize size_mb"], REF)


def _study(rows):
    """A real Optuna study with one finished trial per row: (fidelity, size_mb, state name)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=["maximize", "minimize"])
    for fidelity, size, state in rows:
        trial = study.ask()
        trial.set_constraint("fidelity >= 0.9", 0.9 - fidelity)
        if state == "COMPLETE":
            study.tell(trial, [fidelity, size])
        else:
            study.tell(trial, state=getattr(optuna.trial.TrialState, state))
    return study


def test_curve_counts_every_trial_but_only_feasible_complete_ones_add_volume():
    study = _study([(0.80, 10.0, "COMPLETE"),   # infeasible: nothing
                    (0.95, 50.0, "COMPLETE"),   # 0.25
                    (0.99, 99.0, "PRUNED"),     # spent, adds nothing
                    (0.94, 60.0, "COMPLETE"),   # dominated
                    (1.00, 50.0, "COMPLETE")])  # dominates the 2nd: 0.1 x 50 / 10 = 0.5
    trials = study.get_trials(deepcopy=False)
    assert [is_feasible(t) for t in trials] == [False, True, False, True, True]
    curve = hypervolume_curve(list(reversed(trials)), OBJ, REF, IDEAL)  # sorted by number inside
    assert curve == pytest.approx([0.0, 0.25, 0.25, 0.25, 0.5])
    assert trials_to_reach(curve, 0.25) == 2 and trials_to_reach(curve, 0.3) == 5
    assert trials_to_reach(curve, 0.6) is None
