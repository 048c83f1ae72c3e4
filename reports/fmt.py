"""How the reports write things, defined once: the Table every builder returns (display text beside
machine values), number and p-value formatting, metric labels, and the column readers for run frames (``col_or_nan`` for
numbers, ``col_or_none`` for text: they differ in what a missing value is).
reports/render.py turns a Table into Markdown, CSV, LaTeX or HTML."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from experiments.schema import M

DASH = "–"


@dataclass
class Table:
    name: str  # file stem: summary, ablation, ...
    title: str
    columns: list[str]
    rows: list[list[str]]  # display text
    raw: list[list[Any]]  # values for CSV (numbers unrounded)
    bold: set[tuple[int, int]] = field(default_factory=set)  # (row, column) cells in bold
    notes: list[str] = field(default_factory=list)
    numeric: set[int] = field(default_factory=set)  # right-aligned columns
    raw_columns: list[str] = field(default_factory=list)  # CSV header
    runs: dict[tuple[int, int], str] = field(default_factory=dict)  # (row, column) cells naming a run: its run id


def fnum(x: Any, digits: int = 3, sign: bool = False) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return DASH
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def fmean(m, digits: int = 3) -> str:
    """A MeanStd (reports.stats) as 'mean ± std' (the mean alone for one value, a dash for none)."""
    if m.n == 0:
        return DASH
    return fnum(m.mean, digits) if m.n < 2 else f"{fnum(m.mean, digits)} ± {fnum(m.std, digits)}"


def fp(p: float) -> str:
    if not math.isfinite(p):
        return DASH
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def fparam(v: Any) -> str:
    """A parameter value: floats to 4 significant digits, everything else as text."""
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def fduration(s: float) -> str:
    s = int(round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


def metric_label(metric: str) -> str:
    """val/mAP50 -> 'val mAP@0.5'; test/mAP50 -> 'test mAP@0.5'."""
    split = metric.split("/", 1)[0] if "/" in metric else ""
    return f"{split} {M.label(metric)}".strip() if split in (M.VAL, M.TEST) else M.label(metric)


def param_value(text: Any) -> Any:
    """An MLflow param (text) back to a number/bool where it is one."""
    if not isinstance(text, str):
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        low = text.lower()
        return {"true": True, "false": False, "none": None}.get(low, text)


def num(s: pd.Series) -> pd.Series:
    """A column as numbers (anything else: NaN)."""
    return pd.to_numeric(s, errors="coerce")


def col_or_nan(runs: pd.DataFrame, name: str) -> pd.Series:
    """A column of a run frame as it is, all NaN where the frame has none (metrics: numbers)."""
    return runs[name] if name in runs else pd.Series(math.nan, index=runs.index)


def col_or_none(runs: pd.DataFrame, name: str) -> pd.Series:
    """A column of a run frame as Python objects, None where missing: where the frame has none, and in
    place of its NaN cells (tags and params: text)."""
    if name in runs:
        return runs[name].astype(object).where(runs[name].notna(), None)
    return pd.Series([None] * len(runs), index=runs.index, dtype=object)
