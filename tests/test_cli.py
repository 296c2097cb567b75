import json
import subprocess
import sys

import pytest

from autocompress.cli import main
from autocompress.plan import CompressionPlan, LayerPlan

Q = "encoder.layer.0.attention.self.query"


def write_plan(tmp_path, layers):
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({"autocompress_plan": 1, "layers": layers}))
    return str(path)


def test_inspect_prints_inventory(capsys):
    assert main(["inspect", "random:bert"]) == 0
    out = capsys.readouterr().out
    assert Q in out and "encoder.layer.1.intermediate" in out and "heads" in out
    assert "embedding tables" in out and "embeddings.word_embeddings" in out


def test_inspect_json(capsys):
    assert main(["inspect", "random:llama", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["task"] == "causal-lm" and "model.layers.0.mlp" in data["structures"]
    assert data["layers"]["model.layers.0.self_attn.q_proj"]["in"] == 64
    assert data["embeddings"]["model.embed_tokens"] == {"rows": 30522, "dim": 64, "params": 30522 * 64,
                                                       "tied_to": None}


def test_inspect_shows_where_a_tied_tables_bits_go(capsys):
    assert main(["inspect", "random:llama-tied"]) == 0
    assert "lm_head (one weight: the table's bits go on lm_head)" in capsys.readouterr().out
    assert main(["inspect", "random:llama-tied", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["embeddings"]["model.embed_tokens"]["tied_to"] == "lm_head"


def api_metrics(spec, plan_path, evaluator, n_eval):
    """What the Python API gives for the plan of `plan_path` on `spec`: the size metrics of `plan_size`
    and `evaluator(reference, tokenizer, texts).evaluate(compressed)` on the CLI's default texts (builtin,
    seed 0)."""
    import copy

    from autocompress.data import load_texts
    from autocompress.evaluators.size import plan_size
    from autocompress.loading import load_model
    from autocompress.policies import apply_plan

    loaded = load_model(spec)
    plan = CompressionPlan.load(plan_path)
    reference = copy.deepcopy(loaded.model)
    model = apply_plan(loaded.model, plan, info=loaded.info)
    size = plan_size(plan, loaded.info)
    texts = load_texts("builtin", n=n_eval, seed=0)
    return {"size_mb": size.size_mb, "size_ratio": size.ratio,
            **evaluator(reference, loaded.tokenizer, texts).evaluate(model)}


def test_apply_prints_the_metrics_of_the_applied_plan(tmp_path, capsys):
    from autocompress.evaluators.fidelity import FidelityEvaluator

    plan = write_plan(tmp_path, {Q: {"bits": 4, "group_size": 16},
                                 "encoder.layer.0.intermediate": {"sparsity": 0.5, "pattern": "structured"}})
    assert main(["apply", "random:bert", plan, "--eval", "fidelity,size", "--n-eval", "16", "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)["metrics"]
    expected = api_metrics("random:bert", plan, FidelityEvaluator, 16)
    assert metrics == pytest.approx(expected, rel=1e-6)
    assert 0.0 < metrics["fidelity"] < 1.0 and metrics["size_ratio"] < 1.0  # the plan did change the model


def test_apply_next_token_metrics_for_causal_lm(tmp_path, capsys):
    from autocompress.evaluators.next_token import NextTokenEvaluator

    plan = write_plan(tmp_path, {"model.layers.0.mlp.up_proj": {"bits": 3}})
    assert main(["apply", "random:llama", plan, "--n-eval", "8", "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)["metrics"]
    expected = api_metrics("random:llama", plan, NextTokenEvaluator, 8)
    assert set(metrics) == {"kl", "kl_p99", "top1_agreement", "perplexity", "nll", "perplexity_ratio", "size_mb",
                            "size_ratio"} == set(expected)
    assert metrics == pytest.approx(expected, rel=1e-6)
    assert metrics["kl"] > 0.0 and metrics["size_ratio"] < 1.0  # the plan did change the model
    assert main(["apply", "random:llama", plan, "--n-eval", "8", "--eval", "perplexity", "--json"]) == 0
    alone = json.loads(capsys.readouterr().out)["metrics"]  # PerplexityEvaluator: the same perplexity
    assert set(alone) == {"perplexity", "nll", "perplexity_ratio"}
    assert alone["perplexity"] == pytest.approx(metrics["perplexity"], rel=1e-6)


@pytest.mark.parametrize("layers, message", [
    ({"encoder.layer.0.attention.self.qeury": {"bits": 4}}, "did you mean"),
    ({Q: {"bits": 12}}, "bits=12 is out of range"),
    ({Q: {"sparsity": 0.99}}, "sparsity=0.99 is out of range"),
    ({Q: {"rank": 100}}, "rank 100 is larger than the layer allows"),
    ({Q: {"bitz": 4}}, "unknown field 'bitz'"),
])
def test_bad_plans_exit_2(tmp_path, capsys, layers, message):
    assert main(["apply", "random:bert", write_plan(tmp_path, layers), "--eval", "size"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1


def test_missing_model_exits_2_without_traceback(tmp_path):
    plan = tmp_path / "p.json"
    CompressionPlan({Q: LayerPlan(bits=4)}).save(str(plan))
    proc = subprocess.run([sys.executable, "-m", "autocompress", "apply", str(tmp_path / "nope"), str(plan)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "does not exist" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_apply_never_calibrates_on_its_evaluation_texts(tmp_path, capsys):
    source = tmp_path / "texts.txt"
    source.write_text("".join(f"text number {i} of one source\n" for i in range(6)))
    gptq = write_plan(tmp_path, {Q: {"bits": 8, "quant_method": "gptq"}})
    args = ["apply", "random:bert", gptq, "--eval", "fidelity", "--texts", str(source), "--calibration", str(source)]
    assert main(args + ["--n-eval", "4", "--json"]) == 2  # the two texts left hold too few tokens for GPTQ
    err = capsys.readouterr().err
    assert "error: --n-calibration: " in err and "all 2 texts of" in err and "outside the 4 evaluation texts" in err
    (tmp_path / "rtn").mkdir()
    rtn = write_plan(tmp_path / "rtn", {Q: {"bits": 8}})  # reads no calibration data: none is drawn
    assert main(["apply", "random:bert", rtn] + args[3:] + ["--n-eval", "6", "--json"]) == 0
    capsys.readouterr()
    assert main(args + ["--n-eval", "6"]) == 2  # every text is scored: none is left to calibrate on
    err = capsys.readouterr().err
    assert err.startswith("error: --n-calibration: all 6 texts of") and "are evaluation texts" in err
    assert len(err.strip().splitlines()) == 1


def test_apply_help_states_the_calibration_rule(capsys):
    from autocompress.calibration import TOKENS_PER_INPUT

    with pytest.raises(SystemExit) as exit_:
        main(["apply", "--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert f"fewer than {TOKENS_PER_INPUT} tokens per input of the widest layer" in text and "twice" not in text
