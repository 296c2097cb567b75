"""`write_report(run_dir)`: a finished (or running) search as files a person reads.

Writes into `out_dir` (default RUN_DIR/report/):
  pareto.md        the feasible front and the uniform baselines (does a front trial dominate each?)
  pareto.png       the objectives pairwise: all trials, infeasible ones, the front, baselines, the pick
  plan.png         the picked trial's plan per layer as a heat map (absent when no trial is picked)
  sensitivity.png  only when RUN_DIR/sensitivity.json exists
  report.html      all of it interactive (plotly, embedded once: opens offline)
Reading never changes the study. No model weights are loaded (the layer inventory comes from the model's
config on the meta device). `UserError` when the run directory has no COMPLETE trial.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

from autocompress.report.figures import pareto_figure, plan_figure, save
from autocompress.report.inventory import model_inventory
from autocompress.report.labels import fmt
from autocompress.report.plan_grid import plan_grid
from autocompress.report.sensitivity import load_sensitivity, sensitivity_figure
from autocompress.report.study_view import StudyView, study_view
from autocompress.report.tables import pareto_markdown


@dataclass
class ReportFiles:
    """The files one `write_report` call wrote (None: not written, and why is in `notes`)."""

    out_dir: Path
    pareto_md: Path
    pareto_png: Path
    html: Path
    plan_png: Path | None = None
    sensitivity_png: Path | None = None
    picked: int | None = None  # the trial whose plan plan.png shows

    def paths(self) -> list[Path]:
        """Every file written, for logging as artifacts (e.g. `MlflowClient.log_artifact` each)."""
        return [getattr(self, f.name) for f in fields(self)
                if isinstance(getattr(self, f.name), Path) and f.name != "out_dir"]


def write_report(run_dir: str | Path, out_dir: str | Path | None = None, pick: str | None = None,
                 trial: int | None = None) -> ReportFiles:
    """Write the report of the search in `run_dir`; see the module docstring.

    `pick` (a pick rule such as "minimize size_mb where fidelity >= 0.99") or `trial` (a COMPLETE trial's
    number) chooses the plan to draw; by default the config's own pick rule, else its first objective.
    `UserError` when the run directory is not one, has no COMPLETE trial, or an explicit pick/trial
    matches nothing."""
    from autocompress.search.rundir.reader import RunDir

    run = RunDir.open(run_dir)
    view = study_view(run, pick=pick, trial=trial)
    sens_file = run.path / "sensitivity.json"
    sensitivity = load_sensitivity(sens_file) if sens_file.is_file() else None
    plan = run.plan(view.picked.number) if view.picked is not None else None  # all input read before writing
    out = Path(out_dir) if out_dir is not None else run.path / "report"
    out.mkdir(parents=True, exist_ok=True)
    files = ReportFiles(out_dir=out, pareto_md=out / "pareto.md", pareto_png=out / "pareto.png",
                        html=out / "report.html")
    for stale in ("plan.png", "sensitivity.png"):  # from an earlier report into the same folder
        (out / stale).unlink(missing_ok=True)
    save(pareto_figure(view), files.pareto_png)
    grid, plan_title = None, ""
    if plan is not None:
        files.picked = view.picked.number
        grid = plan_grid(plan, model_inventory(run.config.model), run.config.space)
        plan_title = _plan_title(view)
        files.plan_png = save(plan_figure(grid, plan_title), out / "plan.png")
    if sensitivity is not None:
        files.sensitivity_png = save(sensitivity_figure(sensitivity), out / "sensitivity.png")
    figures = [p.name for p in (files.pareto_png, files.plan_png, files.sensitivity_png) if p is not None]
    files.pareto_md.write_text(pareto_markdown(view, figures), encoding="utf-8")
    from autocompress.report.interactive import report_html

    files.html.write_text(report_html(view, run.study, grid, plan_title, sensitivity), encoding="utf-8")
    return files


def _plan_title(view: StudyView) -> str:
    p = view.picked
    values = ", ".join(f"{m} {fmt(m, p.values[m])}" for m in view.metrics)
    return (f"Plan of trial {p.number} ({values}), picked by '{view.pick_rule}'\n"
            "'-' = left as it is; darker = compressed harder")
