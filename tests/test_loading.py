"""Loading models (`autocompress.loading`): bad specs, the task read from the config, the meta-device
inventory that preflight checks a search space against."""

import pytest

from autocompress.errors import UserError
from autocompress.loading import load_model, meta_inventory


@pytest.mark.parametrize("spec, message", [
    ("/no/such/model", "does not exist"),
    ("random:t5", "unknown random model"),
])
def test_bad_specs(spec, message):
    with pytest.raises(UserError, match=message):
        load_model(spec)


def test_directory_without_config(tmp_path):
    with pytest.raises(UserError, match="no config.json"):
        load_model(str(tmp_path))


def test_bad_task():
    with pytest.raises(UserError, match="task 'vision'"):
        load_model("random:bert", task="vision")


def test_model_task_reads_the_config_only():
    from autocompress.loading import model_task

    assert model_task("all-MiniLM-L6-v2") == "embedding"
    assert model_task("random:gpt2") == "causal-lm" and model_task("random:bert", "causal-lm") == "causal-lm"
    with pytest.raises(UserError, match="does not exist"):
        model_task("/no/such/model")
    with pytest.raises(UserError, match="unknown random model"):
        model_task("random:t5")


@pytest.mark.parametrize("spec", ["random:bert", "random:llama", "random:llama-tied", "random:gpt2"])
def test_meta_inventory_is_the_loaded_inventory(spec):
    """Built from the config on the meta device, without weights: the same ModelInfo, ties included."""
    assert meta_inventory(spec) == load_model(spec).info


def test_meta_inventory_of_the_real_minilm_needs_no_weights(minilm, tmp_path):
    """A directory holding only MiniLM's config.json gives the inventory of the loaded real model."""
    import shutil

    from autocompress.loading import minilm_path

    shutil.copy(f"{minilm_path()}/config.json", tmp_path / "config.json")
    assert meta_inventory(str(tmp_path)) == minilm.info


def test_meta_inventory_refuses_what_load_model_refuses(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        meta_inventory("/no/such/model")
    with pytest.raises(UserError, match="no config.json"):
        meta_inventory(str(tmp_path))
    with pytest.raises(UserError, match="task 'vision'"):
        meta_inventory("random:bert", task="vision")
