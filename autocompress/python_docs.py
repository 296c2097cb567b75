"""The `python-docs` text source: prose passages from the Python Language Reference that ships with CPython.

CPython keeps the text of the reference's main topics (statements, expressions, the data model, the
built-in types) in `pydoc_data.topics.topics` for `help()`: 79 topics, about 65,000 words, under the
Python Software Foundation License. Only prose paragraphs are kept: grammar productions, code blocks,
interactive examples, tables, headings with their underlines, footnotes and version notes are dropped, and
each paragraph is unwrapped to one line (bold and emphasis markers removed). The paragraphs of one topic, in
order, are joined (blank line between) into passages of MIN_WORDS..MAX_WORDS words: a passage closes once it
holds MIN_WORDS; a paragraph that would take it past MAX_WORDS starts the next one instead, and what
is left too short at the end of a topic joins the topic's previous passage when that fits, else is dropped.
With Python 3.11 that gives 183 passages (43,800 words), 242..567 tokens each for SmolLM2's tokenizer
(median 318): long enough for 256-512 tokens of context.

The topics are a plain dict literal in a module nothing imports or patches, so every process of a given
Python sees the same passages (tests/test_data.py checks this against a clean interpreter); they change
with the Python version. `passages()` returns them in topic order.
"""

from __future__ import annotations

import re
from typing import Iterable

MIN_WORDS, MAX_WORDS = 200, 400
_MIN_PARAGRAPH_WORDS = 8
_UNDERLINE = re.compile(r"^\s*([*=\-~^])\1{2,}\s*$")
_BULLET = re.compile(r"^(\s*)(\* |\d+\. )")
_EMPHASIS = re.compile(r"(?<![\w\"'*])\*{1,2}(\w[^*\n]*?)\*{1,2}(?![\w*])")
_NOT_PROSE = ("::=", ">>>", "+--", "+==", "|", "-[ ")
_VERSION_NOTE = ("Changed in version", "New in version", "Added in version", "Deprecated since version")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _flowed(lines: list[str]) -> bool:
    """One block of wrapped text: every line at the first line's indent, or a list item whose continuation
    lines hang under its text."""
    first = _indent(lines[0])
    bullet = _BULLET.match(lines[0])
    hang = first + len(bullet.group(2)) if bullet else first
    return all(_indent(ln) == hang for ln in lines[1:] if ln.strip())


def _is_prose(text: str) -> bool:
    body = _BULLET.sub("", text, count=1)
    words = body.split()
    return (len(words) >= _MIN_PARAGRAPH_WORDS and not any(m in text for m in _NOT_PROSE)
            and (body[0].isupper() or body[0] == '"') and body.rstrip(")").endswith((".", ":", "?"))
            and not body.startswith(_VERSION_NOTE)
            and sum(w.strip('.,;:()"').isalpha() for w in words) >= 0.6 * len(words))


def prose_paragraphs(topic: str) -> list[str]:
    """The prose paragraphs of one topic's text, each unwrapped to a single line, in order."""
    out = []
    for block in topic.split("\n\n"):
        lines = [ln for ln in block.split("\n") if ln.strip()]
        if not lines or any(_UNDERLINE.match(ln) for ln in lines) or not _flowed(lines):
            continue
        text = _EMPHASIS.sub(r"\1", " ".join(ln.strip() for ln in lines))
        if _is_prose(text):
            out.append(text)
    return out


def join_passages(paragraphs: Iterable[str], min_words: int = MIN_WORDS, max_words: int = MAX_WORDS) -> list[str]:
    """Consecutive paragraphs joined into passages of min_words..max_words words (module docstring). A single
    paragraph longer than max_words is dropped."""
    passages: list[list[str]] = []
    current: list[str] = []
    count = 0
    for para in paragraphs:
        n = len(para.split())
        if n > max_words:
            continue
        if count + n > max_words:
            current, count = [], 0  # too short to close, too long to extend: dropped
        current.append(para)
        count += n
        if count >= min_words:
            passages.append(current)
            current, count = [], 0
    if current and passages and sum(len(p.split()) for p in passages[-1]) + count <= max_words:
        passages[-1].extend(current)
    return ["\n\n".join(p) for p in passages]


def passages() -> list[str]:
    """Every passage, topic by topic (in the topics' order), as this Python's `pydoc_data` gives them. Raises
    ImportError when this Python lacks `pydoc_data` (some minimal distributions strip it)."""
    from pydoc_data.topics import topics

    out: list[str] = []
    for name in sorted(topics):
        out.extend(join_passages(prose_paragraphs(topics[name])))
    return out
