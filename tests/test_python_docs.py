"""The python-docs passages: prose only, joined within a topic into MIN_WORDS..MAX_WORDS words, the same as a
clean interpreter reads them."""

from __future__ import annotations

import json
import subprocess
import sys

from autocompress import python_docs
from autocompress.python_docs import MAX_WORDS, MIN_WORDS, join_passages, passages, prose_paragraphs

TOPIC = '''The "if" statement
******************

The "if" statement is used for conditional execution, and it selects one of the suites:

   if_stmt ::= "if" assignment_expression ":" suite
               ("elif" assignment_expression ":" suite)*

It selects exactly one of the suites by evaluating the expressions one
by one until one is found to be true; then that suite is executed.

* If the target list is a single target with no trailing comma,
  optionally in parentheses, the object is assigned to that target.

   >>> x = [1, 2]
   >>> x
   [1, 2]

   class C:
       pass

Changed in version 3.8: Something about the **new** behaviour was
added to the statement here.

+-----------+----------+
| Option    | Meaning  |
+-----------+----------+

   Called when the default attribute access fails with an *error* of
   some kind, as the data model describes for every class.
'''


def test_prose_paragraphs_keep_prose_only():
    got = prose_paragraphs(TOPIC)
    assert got == [
        'The "if" statement is used for conditional execution, and it selects one of the suites:',
        "It selects exactly one of the suites by evaluating the expressions one by one until one is found to be "
        "true; then that suite is executed.",
        "* If the target list is a single target with no trailing comma, optionally in parentheses, the object is "
        "assigned to that target.",
        "Called when the default attribute access fails with an error of some kind, as the data model describes "
        "for every class.",
    ]


def words(n: int, tag: str) -> str:
    return " ".join(f"{tag}{i}" for i in range(n)) + "."


def test_join_passages_bounds():
    paras = [words(120, "a"), words(100, "b"), words(150, "c"), words(300, "d"), words(30, "e"), words(500, "f")]
    got = join_passages(paras, min_words=200, max_words=400)
    # a+b close at 220; c is short and c+d would pass 400: c is dropped; d closes at 300, the short e at the end
    # joins it (330); f alone is longer than 400: dropped
    assert got == [paras[0] + "\n\n" + paras[1], paras[3] + "\n\n" + paras[4]]
    tail = join_passages([words(250, "a"), words(40, "b")], min_words=200, max_words=400)
    assert tail == [words(250, "a") + "\n\n" + words(40, "b")]  # a short rest joins the last passage
    assert join_passages([words(50, "a")], min_words=200, max_words=400) == []


def test_passages_are_long_prose_and_deterministic():
    got = passages()
    assert 150 <= len(got) <= 250  # 183 with Python 3.11
    for p in got:
        n = len(p.split())
        assert MIN_WORDS <= n <= MAX_WORDS and ">>>" not in p and "::=" not in p and "****" not in p
    assert got == passages()


def test_passages_match_a_clean_interpreter():
    """The topics are a plain dict literal: what this process (torch, transformers imported) reads is what a
    clean interpreter reads."""
    code = "import json, runpy, sys; json.dump(runpy.run_path(sys.argv[1])['passages'](), sys.stdout)"
    done = subprocess.run([sys.executable, "-I", "-S", "-c", code, python_docs.__file__], capture_output=True,
                          text=True, check=True, timeout=120)
    assert json.loads(done.stdout) == passages()
