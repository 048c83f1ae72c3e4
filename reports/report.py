"""One sweep's report: tables + plots read back from MLflow, written as md/csv/tex/html.

    report = build_report("demo", tracking_uri="sqlite:///mlflow.db")
    write_report(report, "reports/out/demo", formats=("md", "csv", "tex", "html"))

Files: ``report.md`` (+ the plots as PNG next to it), ``<table>.csv`` per table, ``report.tex``,
``report.html`` (self-contained: plots embedded as base64 PNG).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from experiments.schema import Artifact, M, Status
from reports import budget, deploy, factorial, fmt, plots, render, run_tables, search, selection, tables
from reports.artifacts import load_artifact
from reports.load import SweepData, read_sweep
from ssd_core import rundir as RD
from ssd_core.errors import UserError

FORMATS = ("md", "csv", "tex", "html")


@dataclass
class Report:
    title: str
    sections: list[Any]  # Tables and ("yaml"|"text", title, text) blocks, in reading order
    plots: dict[str, bytes] = field(default_factory=dict)
    data: SweepData | None = None

    @property
    def tables(self) -> list[fmt.Table]:
        return [s for s in self.sections if isinstance(s, fmt.Table)]

    def markdown(self) -> str:
        return render.markdown(self.title, self.sections, self.plots)


def build_report(sweep: str, tracking_uri: str | None = None, top_k: int = 10,
                 with_plots: bool = True, evaluator: str = "ped-anova", arms: list[str] | None = None) -> Report:
    """The report of `sweep`; `arms` restricts it to those arms, in that order (the first is the baseline):
    e.g. the cumulative path of a designed sweep as an ablation of its own."""
    data = read_sweep(sweep, tracking_uri)
    if arms:
        data = restrict(data, arms)
    arms = selection.arm_stats(data)
    sections: list[Any] = [tables.summary_table(data, arms)]
    figs: dict[str, bytes] = {}
    if len(data.arms) > 1:
        forest = plots.deltas_forest(data, arms) if with_plots else None
        if forest is not None:  # the ablation at a glance, above its table
            figs["deltas"] = forest
            sections.append(("figure", "deltas", render.PLOT_TITLES["deltas"]))
        sections.append(tables.ablation_table(data, arms))
        points = budget.point_deltas(data, budget.budget_values(data, selection.arm_members(data)))
        if points:  # eval.test_at: the deltas along the budget, plotted above their table
            along = plots.budget_deltas(data, points) if with_plots else None
            if along is not None:
                figs["budget"] = along
                sections.append(("figure", "budget", render.PLOT_TITLES["budget"]))
            sections.append(budget.budget_table(data, points))
    designed, design_figs = factorial.sections(data, with_plots)  # a designed sweep: effects, shares, the path
    sections += designed
    figs.update(design_figs)
    seq = tables.sequential_table(data)
    if seq is not None:
        sections.append(seq)
    if data.runs["status"].ne(Status.FINISHED.value).any() or (data.finished[data.value].isna().any() if len(data.runs) else False):
        sections.append(run_tables.other_runs_table(data))
    if deploy.has_deploy(data):  # the deployment arms: accuracy against speed, the front plotted above its table
        rows = deploy.deploy_rows(data)
        speed = plots.accuracy_speed(data, rows) if with_plots else None
        if speed is not None:
            figs["accuracy_speed"] = speed
            sections.append(("figure", "accuracy_speed", render.PLOT_TITLES["accuracy_speed"]))
        sections.append(deploy.accuracy_speed_table(data, rows))
    split = M.TEST if data.has_test else M.VAL
    if any(c.startswith("metrics." + M.class_ap50_prefix(split)) for c in data.runs.columns):
        sections.append(tables.per_class_table(data))
    imp = search.Importances({}, 0, None)
    if data.searched:
        sections.append(search.search_table(data, top_k))
        override = search.best_override(data)
        if override:
            sections.append(("yaml", "Best configuration (override block)", override))
        imp = search.param_importances(data, evaluator)
        if imp.values:
            sections.append(search.importance_table(imp, evaluator))
        else:
            sections.append(("text", "Parameter importances", f"Omitted: {imp.reason}."))
    fin = data.finished
    if len(fin):  # every averaged trial, linked to its MLflow run with --ui-url
        sections.append(run_tables.trials_table(data))
    if with_plots and len(fin):  # the best run's detections (experiments/evidence.py), what one looks at first
        best = selection.best_trial(data, fin)
        png = load_artifact(data.tracking_uri, best.run_id, f"{Artifact.EVIDENCE}/{RD.DETECTIONS_PNG}")
        if png:
            figs["best_detections"] = png
            sections.append(("figure", "best_detections", f"Detections of the best trial ({best.trial_id}, "
                                                           f"arm {best.arm}, seed {best.seed}) at its selected "
                                                           f"checkpoint: ground truth in white (difficult objects dashed), detections in their class colour"))
    if with_plots:
        for name, png in (("learning_curves", plots.learning_curves(data)),
                          ("pareto", plots.pareto(data)),
                          ("parallel", plots.parallel_coordinates(data) if data.searched else None),
                          ("params", plots.param_scatter(data)),
                          ("importance", plots.importance_bar(imp.values, f"Parameter importance ({evaluator}, "
                                                             f"{imp.n} trials at epoch {imp.epoch})")),
                          ("search_history", plots.search_history(data) if data.searched else None)):
            if png is not None:
                figs[name] = png
    # The store's path is left out on purpose: a copy of the store regenerates identical files.
    meta = ("text", "Source", f"Sweep `{sweep}` read back from MLflow (parent run "
            f"{data.parent_id or '(none)'}; {len(data.runs)} trial runs; metric `{data.metric}`, "
            f"maximised; baseline arm `{data.baseline}`).")
    return Report(f"ssdlab report: {sweep}", [meta] + sections, figs, data)


def restrict(data, arms: list[str]):
    """`data` with only `arms` (ordered; the first is the baseline) and their runs; UserError for an arm the
    sweep does not have."""
    import dataclasses

    missing = [a for a in arms if a not in data.arms]
    if missing:
        raise UserError(f"--arms: {', '.join(missing)} not in sweep {data.sweep!r} (arms: {', '.join(data.arms)})")
    runs = data.runs[data.runs["arm"].isin(arms)].reset_index(drop=True)
    return dataclasses.replace(data, arms=list(arms), baseline=arms[0], runs=runs,
                               history=data.history[data.history["run_id"].isin(runs["run_id"])])


def run_links(report: Report, ui_url: str | None):
    """run_id -> its page in the MLflow UI at `ui_url` (None without a URL)."""
    if not ui_url or report.data is None:
        return None
    experiments = dict(zip(report.data.runs["run_id"], report.data.runs["experiment_id"]))
    base = ui_url.rstrip("/")
    return lambda run_id: f"{base}/#/experiments/{experiments.get(run_id, '0')}/runs/{run_id}"


def write_report(report: Report, out_dir: str | Path, formats: tuple[str, ...] | list[str] = ("md",),
                 ui_url: str | None = None) -> list[Path]:
    """Write the report in ``formats`` under ``out_dir``; returns the files written (sorted)."""
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise UserError(f"report format(s) {', '.join(bad)} unknown; choose from {', '.join(FORMATS)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def put(name: str, content: str | bytes) -> None:
        path = out / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8", newline="\n")
        written.append(path)

    if "md" in formats:
        put("report.md", report.markdown())
        for name, png in report.plots.items():
            put(f"{name}.png", png)
    if "csv" in formats:
        for t in report.tables:
            put(f"{t.name}.csv", render.table_csv(t))
    if "tex" in formats:
        put("report.tex", render.latex(report.title, report.tables))
    if "html" in formats:
        put("report.html", render.html_page(report.title, report.sections, report.plots, run_links(report, ui_url)))
    return sorted(written)
