"""Reading a user's YAML: safe loading, a repeated key refused with both lines, merge keys still allowed."""

from __future__ import annotations

import pytest

from autocompress.errors import UserError
from autocompress.yaml_io import DuplicateKeyError, read_yaml, safe_load


@pytest.mark.parametrize("text, message", [
    ("a: 1\nb: 2\na: 3\n", "duplicate key 'a' (lines 1 and 3)"),
    ("a:\n  x: 1\n  x: 2\n", "duplicate key 'x' (lines 2 and 3)"),
    ("a: {x: 1, x: 2}\n", "duplicate key 'x' (both on line 1)"),
    ("- {1: a}\n- {1: b, 1: c}\n", "duplicate key 1 (both on line 2)"),
])
def test_a_repeated_key_is_refused_naming_it_and_its_lines(text, message):
    with pytest.raises(DuplicateKeyError) as info:
        safe_load(text)
    assert str(info.value) == f"{message}; keep one of them"


def test_merge_keys_and_plain_data_load_as_safe_load_does():
    text = "base: &b {x: 1, y: 2}\nderived:\n  <<: *b\n  y: 3\nlist: [1, 2]\n"
    assert safe_load(text) == {"base": {"x": 1, "y": 2}, "derived": {"x": 1, "y": 3}, "list": [1, 2]}
    assert safe_load("") is None


def test_python_tags_are_still_refused():
    import yaml

    with pytest.raises(yaml.YAMLError):
        safe_load("a: !!python/object/apply:os.system ['true']\n")


def test_read_yaml_names_the_file_in_one_line(tmp_path):
    (tmp_path / "dup.yaml").write_text("a: 1\na: 2\n")
    with pytest.raises(UserError, match=r"^profile '.*dup.yaml': duplicate key 'a' \(lines 1 and 2\)"):
        read_yaml(tmp_path / "dup.yaml", "profile")
    with pytest.raises(UserError, match="is a directory; give the path of a YAML file in it"):
        read_yaml(tmp_path)
    with pytest.raises(UserError, match="does not exist"):
        read_yaml(tmp_path / "nope.yaml")
