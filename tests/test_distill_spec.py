"""DistillConfig validation and its place in the plan JSON."""

from __future__ import annotations

import json

import pytest

from autocompress.distill_spec import DistillConfig
from autocompress.errors import UserError
from autocompress.plan import CompressionPlan, LayerPlan


def test_defaults_and_round_trip():
    cfg = DistillConfig(steps=300, lr=3e-4, layers=[0, 2], temperature=1, seed=7)
    assert cfg.layers == (0, 2) and cfg.temperature == 1.0 and type(cfg.temperature) is float
    data = cfg.to_dict()
    assert data["layers"] == [0, 2] and set(data) == {"steps", "lr", "temperature", "alpha", "beta", "layers",
                                                      "batch_size", "max_length", "seed", "eval_every"}
    again = DistillConfig.from_dict(json.loads(json.dumps(data)))
    assert again == cfg and hash(again) == hash(cfg)
    assert DistillConfig(lr=0.1 + 0.2).lr == DistillConfig.from_dict(json.loads(json.dumps(
        DistillConfig(lr=0.1 + 0.2).to_dict()))).lr
    assert DistillConfig().enabled and not DistillConfig(steps=0).enabled


def test_block_indices():
    assert DistillConfig(layers="all").block_indices(3) == [0, 1, 2]
    assert DistillConfig(layers="last").block_indices(3) == [2]
    assert DistillConfig(layers=[1]).block_indices(3) == [1]
    with pytest.raises(UserError, match="distill.layers: block 5 does not exist"):
        DistillConfig(layers=[0, 5]).block_indices(3)


@pytest.mark.parametrize("kwargs, field", [
    (dict(steps=-1), "steps"), (dict(steps=1.5), "steps"), (dict(steps=True), "steps"),
    (dict(lr=0), "lr"), (dict(lr=float("nan")), "lr"), (dict(lr="1e-4"), "lr"),
    (dict(temperature=0.0), "temperature"), (dict(alpha=-1), "alpha"), (dict(beta=float("inf")), "beta"),
    (dict(alpha=0, beta=0), "alpha and beta"), (dict(layers="first"), "layers"), (dict(layers=[]), "layers"),
    (dict(layers=[-1]), "layers"), (dict(layers=[1, 1]), "repeats"), (dict(layers=[0.5]), "layers"),
    (dict(batch_size=0), "batch_size"), (dict(max_length=-3), "max_length"), (dict(eval_every=0), "eval_every"),
    (dict(seed=1.0), "seed"),
])
def test_bad_values_name_the_field(kwargs, field):
    with pytest.raises(UserError, match=field) as info:
        DistillConfig(**kwargs)
    assert "\n" not in str(info.value)


def test_from_dict_errors():
    with pytest.raises(UserError, match="distill: unknown field 'step'"):
        DistillConfig.from_dict({"step": 3})
    with pytest.raises(UserError, match="expected an object"):
        DistillConfig.from_dict([3])
    with pytest.raises(UserError, match="plan: distill: lr="):
        CompressionPlan.from_json('{"layers": {}, "distill": {"lr": -1}}')


def test_plan_with_and_without_distill():
    layers = {"a.q": LayerPlan(bits=4), "a.k": LayerPlan(sparsity=0.5)}
    plain = CompressionPlan(layers)
    assert "distill" not in plain.to_dict() and plain.distill is None
    assert CompressionPlan.from_json(plain.to_json()) == plain
    with_kd = CompressionPlan(layers, distill=DistillConfig(steps=100, layers="last"))
    text = with_kd.to_json()
    again = CompressionPlan.from_json(text)
    assert again == with_kd and hash(again) == hash(with_kd) and again.to_json() == text
    assert again.distill == DistillConfig(steps=100, layers="last")
    assert with_kd != plain and hash(with_kd) != hash(plain)
    assert with_kd.summary() == plain.summary() + "; distill 100 steps lr 0.0001"
    assert "distill 100 steps" in str(with_kd)
    flat = with_kd.flatten()
    assert flat["distill.steps"] == 100 and flat["distill.layers"] == "last" and flat["a.q.bits"] == 4
    listed = CompressionPlan(layers, distill=DistillConfig(layers=[0, 1])).flatten()
    assert listed["distill.layers"] == "0,1"
    # zero steps means no distillation: dropped like a no-op layer
    assert CompressionPlan(layers, distill=DistillConfig(steps=0)) == plain
    assert CompressionPlan.from_json('{"layers": {}, "distill": null}').distill is None
    with pytest.raises(TypeError, match="DistillConfig"):
        CompressionPlan(layers, distill={"steps": 3})  # type: ignore[arg-type]


def test_importing_the_plan_stays_light():
    import subprocess
    import sys

    code = "import sys, autocompress.plan; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_plan_does_not_import_the_distillation_package():
    """The plan type holds a `DistillConfig` without depending on `autocompress.distill` (training, torch)."""
    import subprocess
    import sys

    code = ("import sys, autocompress.plan, autocompress.distill_spec; "
            "print(sorted(m for m in sys.modules if m == 'autocompress.distill' or m.startswith('autocompress.distill.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    from autocompress.distill import DistillConfig as Reexported

    assert Reexported is DistillConfig
