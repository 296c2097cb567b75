import pytest

from autocompress.errors import UserError
from autocompress.loading import load_model
from autocompress.plan import LayerPlan
from autocompress.selection import Rule, build_plan, select_layers, uniform_plan


@pytest.fixture(scope="module")
def info():
    return load_model("random:bert").info


def test_default_targets_are_block_linears(info):
    names = select_layers(info)
    assert names and all(n.startswith("encoder.layer.") for n in names)
    assert "pooler.dense" in info.layers and "pooler.dense" not in names


def test_exact_class_regex_group_and_ignore(info):
    assert select_layers(info, ["encoder.layer.0.attention.self.query"]) == ["encoder.layer.0.attention.self.query"]
    assert len(select_layers(info, ["Linear"])) == len(info.layers)
    assert select_layers(info, [r"re:layer\.1\.output\.dense$"]) == ["encoder.layer.1.output.dense"]
    qkv = select_layers(info, ["encoder.layer.0.attention.self.qkv"])
    assert [n.rsplit(".", 1)[1] for n in qkv] == ["query", "key", "value"]
    rest = select_layers(info, ["Linear"], ignore=["re:attention", "pooler.dense"])
    assert rest and not any("attention" in n or "pooler" in n for n in rest)


def test_structures_selected_for_structured_rules(info):
    plan = build_plan(info, [Rule(LayerPlan(sparsity=0.25, pattern="structured"), targets=("re:intermediate$",))])
    assert set(plan.layers) == {"encoder.layer.0.intermediate", "encoder.layer.1.intermediate"}


def test_later_rules_override(info):
    plan = build_plan(info, [Rule(LayerPlan(bits=8)), Rule(LayerPlan(bits=4), targets=("re:query",))])
    assert plan.layers["encoder.layer.0.attention.self.query"].bits == 4
    assert plan.layers["encoder.layer.0.attention.self.key"].bits == 8


def test_nothing_selected_and_bad_regex_are_user_errors(info):
    with pytest.raises(UserError, match="found no layers"):
        uniform_plan(info, LayerPlan(bits=4), targets=["re:nothing_here"])
    with pytest.raises(UserError, match="not a valid regular expression"):
        select_layers(info, ["re:("])


def test_select_embeddings_includes_tied_tables(info):
    from autocompress.selection import select_embeddings

    assert select_embeddings(info) == list(info.embeddings)  # BERT: three untied tables, model order
    assert select_embeddings(info, ["re:word|position"], ["re:position"]) == ["embeddings.word_embeddings"]
    tied = load_model("random:llama-tied").info
    assert select_embeddings(tied) == ["model.embed_tokens"]  # tied to lm_head, selected by the table's name
    assert select_embeddings(tied, ["Embedding"]) == ["model.embed_tokens"]
    gpt2 = load_model("random:gpt2").info
    assert select_embeddings(gpt2, ["transformer.wte"]) == ["transformer.wte"]
    assert select_embeddings(gpt2, ignore=["transformer.wte"]) == ["transformer.wpe"]
    with pytest.raises(UserError, match=r"space.embeddings: found no embedding tables.*"
                                        r"the model's tables: model.embed_tokens"):
        select_embeddings(tied, ignore=["model.embed_tokens"])
    with pytest.raises(UserError, match="not a valid regular expression"):
        select_embeddings(tied, ["re:("])
