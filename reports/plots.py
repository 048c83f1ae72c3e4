"""Report plots (matplotlib Agg, PNG bytes), deterministic: fixed dpi and size, no Software/date
metadata, so the same store gives byte-identical PNGs. Margins are fixed (no constrained layout:
it draws every figure twice, and a 1,000-run report must stay fast).

* ``learning_curves``  mean over seeds with a ±1 std band, per arm: train loss and the sweep metric
* ``param_scatter``    the metric against each searched parameter (log axis for log distributions)
* ``importance_bar``   Optuna parameter importances
* ``search_history``   the metric against trial order with the running best
"""
from __future__ import annotations

import io
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator, NullFormatter  # noqa: E402
import pandas as pd  # noqa: E402

from reports import search, tables  # noqa: E402
from reports.load import SweepData  # noqa: E402

DPI = 100
_STYLE = {"font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10, "legend.fontsize": 8,
          "axes.grid": True, "grid.alpha": 0.3, "svg.hashsalt": "ssdlab"}
STATUS_STYLE = {"finished": ("C0", "o"), "early_stopped": ("C1", "v"), "failed": ("C3", "x")}


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def learning_curves(data: SweepData, max_arms: int = 12) -> bytes | None:
    keys = [k for k in ("train/loss", data.metric) if (data.history["key"] == k).any()]
    if not keys:
        return None
    with plt.rc_context(_STYLE):
        fig, axes = plt.subplots(1, len(keys), figsize=(5.5 * len(keys), 4), squeeze=False)
        fig.subplots_adjust(left=0.08, right=0.98, bottom=0.12, top=0.92, wspace=0.22)
        for ax, key in zip(axes[0], keys):
            c = tables.curves(data, key)
            for i, arm in enumerate(data.arms[:max_arms]):
                a = c[c["arm"] == arm]
                if a.empty:
                    continue
                n = int(a["n"].max())
                ax.plot(a["step"], a["mean"], color=f"C{i % 10}", label=f"{arm} (n={n})", lw=1.6)
                ax.fill_between(a["step"], a["mean"] - a["std"], a["mean"] + a["std"],
                                color=f"C{i % 10}", alpha=0.2, lw=0)
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylabel(key if key != data.metric else f"{tables.metric_label(key)} ({key})")
            ax.set_title(f"{key}: mean ± std over seeds")
        axes[0][-1].legend(loc="best")
        return _png(fig)


def param_scatter(data: SweepData) -> bytes | None:
    keys = data.searched
    runs = tables.search_runs(data)
    runs = runs[runs["status"].isin(STATUS_STYLE)]
    if not keys or runs.empty:
        return None
    dists = search.distributions(data.search_space)
    ncol = min(3, len(keys))
    nrow = math.ceil(len(keys) / ncol)
    with plt.rc_context(_STYLE):
        fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.4 * nrow), squeeze=False)
        fig.subplots_adjust(left=0.07, right=0.98, bottom=0.55 / (3.4 * nrow),
                            top=1 - 0.4 / (3.4 * nrow), wspace=0.28, hspace=0.45)
        for ax, key in zip(axes.flat, keys):
            x_all = runs.get("params." + key, pd.Series(index=runs.index, dtype=object)).map(tables._param_value)
            numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in x_all.dropna())
            cats = sorted({str(v) for v in x_all.dropna()}) if not numeric else []
            for status, (color, marker) in STATUS_STYLE.items():
                m = (runs["status"] == status) & x_all.notna()
                if not m.any():
                    continue
                if numeric:
                    x = x_all[m].astype(float)
                else:  # categories: index plus a deterministic jitter (golden-ratio sequence)
                    pos = np.flatnonzero(m.to_numpy())
                    x = x_all[m].map(lambda v: cats.index(str(v))).to_numpy() \
                        + ((pos * 0.6180339887) % 1 - 0.5) * 0.3
                ax.scatter(x, runs.loc[m, "score"], c=color, marker=marker, s=22, alpha=0.8,
                           label=status.replace("_", "-"))
            dist = dists.get(key)
            if not numeric:
                ax.set_xticks(range(len(cats)), cats)
                ax.set_xlim(-0.5, len(cats) - 0.5)
            elif getattr(dist, "log", False):
                ax.set_xscale("log")
                ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels overlap
                ax.set_xlim(dist.low / 1.15, dist.high * 1.15)  # the searched range
            elif hasattr(dist, "low"):
                pad = 0.03 * (dist.high - dist.low)
                ax.set_xlim(dist.low - pad, dist.high + pad)
            ax.set_xlabel(key)
            ax.set_ylabel(tables.metric_label(data.metric))
        for ax in list(axes.flat)[len(keys):]:
            ax.set_visible(False)
        axes.flat[0].legend(loc="best")
        fig.suptitle(f"{data.sweep}: {tables.metric_label(data.metric)} against searched parameters")
        return _png(fig)


def importance_bar(importances: dict[str, float], title: str = "Parameter importance") -> bytes | None:
    if not importances:
        return None
    keys = list(importances)[::-1]  # most important on top
    with plt.rc_context(_STYLE):
        height = 0.5 * len(keys) + 1.4
        fig, ax = plt.subplots(figsize=(6, height))
        fig.subplots_adjust(left=min(0.55, 0.04 + 0.0135 * max(map(len, keys))), right=0.95,
                            bottom=0.55 / height, top=1 - 0.35 / height)
        ax.barh(keys, [importances[k] for k in keys], color="C0")
        for y, k in enumerate(keys):
            ax.text(importances[k], y, f" {importances[k]:.2f}", va="center", fontsize=8)
        ax.set_xlim(0, max(1.0, max(importances.values()) * 1.15))
        ax.set_xlabel("importance (normalised)")
        ax.set_title(title)
        return _png(fig)


def search_history(data: SweepData) -> bytes | None:
    runs = tables.search_runs(data)
    runs = runs[runs["status"].isin(STATUS_STYLE) & runs["score"].notna()]
    if runs.empty:
        return None
    runs = runs.sort_values(["start_ms", "trial_id"]).reset_index(drop=True)
    order = np.arange(1, len(runs) + 1)
    with plt.rc_context(_STYLE):
        fig, ax = plt.subplots(figsize=(7, 4))
        fig.subplots_adjust(left=0.1, right=0.97, bottom=0.12, top=0.92)
        for status, (color, marker) in STATUS_STYLE.items():
            m = (runs["status"] == status).to_numpy()
            if m.any():
                ax.scatter(order[m], runs.loc[m, "score"], c=color, marker=marker, s=20, alpha=0.8,
                           label=status.replace("_", "-"))
        fin = runs["score"].where(runs["status"] == "finished")
        best = (fin.cummax() if data.mode == "max" else fin.cummin()).ffill()
        ax.step(order, best, where="post", color="k", lw=1.4, label="running best (finished)")
        ax.set_xlabel("trial (start order)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(tables.metric_label(data.metric))
        ax.set_title(f"{data.sweep}: search history")
        ax.legend(loc="best")
        return _png(fig)
