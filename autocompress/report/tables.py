"""The report's tables: the feasible front and the uniform baselines, as rows of text, markdown and HTML.

Front rows: trial, each objective (unit in the header), the plan in one line; the picked trial is marked.
Baseline rows: name, trial, each objective, feasible or not, and which front trials dominate it (at least
as good on every objective and better on one) - the question a baseline answers: did the search beat it?
"""

from __future__ import annotations

import html

from autocompress.report.labels import fmt
from autocompress.report.study_view import StudyView

Table = tuple[list[str], list[list[str]]]


def front_table(view: StudyView) -> Table:
    header = ["trial", *(view.column(m) for m in view.metrics), "plan"]
    rows = []
    for p in view.front:
        mark = " (picked)" if view.picked is not None and p.number == view.picked.number else ""
        name = f" [{p.baseline}]" if p.baseline else ""
        rows.append([f"{p.number}{mark}", *(fmt(m, p.values[m]) for m in view.metrics), p.plan_summary + name])
    return header, rows


def baseline_table(view: StudyView) -> Table:
    header = ["baseline", "trial", *(view.column(m) for m in view.metrics), "feasible", "dominated by"]
    rows = []
    for p in sorted(view.baselines, key=lambda b: b.number):
        beaten = view.dominated_by(p)
        if p.front:
            verdict = "no: it is on the front"
        elif beaten:
            verdict = "yes: trial " + ", ".join(str(n) for n in sorted(f.number for f in beaten))
        else:
            verdict = "no"
        rows.append([p.baseline or "?", str(p.number), *(fmt(m, p.values[m]) for m in view.metrics),
                     "yes" if p.feasible else "no", verdict])
    return header, rows


def markdown(table: Table) -> str:
    header, rows = table
    cell = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(map(cell, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(cell, r)) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def html_table(table: Table) -> str:
    header, rows = table
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def pareto_markdown(view: StudyView, figures: list[str]) -> str:
    """The whole pareto.md: title, summary, front table, baselines table, links to the figures."""
    parts = [f"# Pareto front of {view.study_name}", "", view.title() + ".", "", *view.summary_lines(), ""]
    if view.front:
        parts += ["## Feasible Pareto front", "", markdown(front_table(view))]
    else:
        parts += ["No trial meets every constraint, so the feasible front is empty.", ""]
    if view.baselines:
        parts += ["## Baselines", "", "The trials the search started from: the same setting on every layer "
                  "(and plans seeded from the per-unit sensitivity, if any); `dominated by` names the front "
                  "trials that are at least as good on every objective and better on one.", "",
                  markdown(baseline_table(view))]
    if figures:
        parts += ["## Figures", ""] + [f"![{name}]({name})" for name in figures] + [""]
    return "\n".join(parts)
