"""Report plots (matplotlib Agg, PNG bytes), deterministic: fixed dpi and size, no Software/date
metadata, so the same store gives byte-identical PNGs. Margins are fixed (no constrained layout:
it draws every figure twice, and a 1,000-run report must stay fast).

* ``learning_curves``  mean over seeds with a ±1 std band, per arm: train loss and the sweep metric
* ``param_scatter``    the metric against each searched parameter (log axis for log distributions)
* ``importance_bar``   Optuna parameter importances
* ``search_history``   the metric against trial order with the running best
* ``deltas_forest``    each arm's delta vs the baseline with its intervals (seeds; seeds x test images)
* ``parallel_coordinates`` the searched parameters of every trial, coloured by score
* ``pareto``           reported mAP against training cost, the Pareto front and the best trial marked
* ``accuracy_speed``   each (arm, model)'s mAP against its CPU latency (reports/deploy.py), the front marked
"""
from __future__ import annotations

import io
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator, NullFormatter  # noqa: E402

from experiments.schema import M, Status  # noqa: E402
from reports import deploy, fmt, search, selection  # noqa: E402
from reports.load import SweepData  # noqa: E402

M_TEST_MAP = M.map50(M.TEST)

DPI = 100
_STYLE = {"font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10, "legend.fontsize": 8,
          "axes.grid": True, "grid.alpha": 0.3, "svg.hashsalt": "ssdlab"}
STATUS_STYLE = {Status.FINISHED.value: ("C0", "o"), Status.EARLY_STOPPED.value: ("C1", "v"), Status.FAILED.value: ("C3", "x")}


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def learning_curves(data: SweepData, max_arms: int = 12) -> bytes | None:
    keys = [k for k in (M.TRAIN_LOSS, data.metric) if (data.history["key"] == k).any()]
    if not keys:
        return None
    with plt.rc_context(_STYLE):
        fig, axes = plt.subplots(1, len(keys), figsize=(5.5 * len(keys), 4), squeeze=False)
        fig.subplots_adjust(left=0.08, right=0.98, bottom=0.12, top=0.92, wspace=0.22)
        colour = {arm: f"C{i % 10}" for i, arm in enumerate(data.arms[:max_arms])}
        for ax, key in zip(axes[0], keys):
            c = selection.curves(data, key)
            h = data.history[data.history["key"] == key].merge(data.runs[["run_id", "arm", "status"]], on="run_id")
            for (_, arm, status), g in h.groupby(["run_id", "arm", "status"], sort=True):  # every trial, thin
                if arm in colour:
                    ax.plot(g["step"], g["value"], color=colour[arm], lw=0.6, alpha=0.35,
                            ls="--" if status == Status.EARLY_STOPPED.value else "-")
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
            ax.set_ylabel(key if key != data.metric else f"{fmt.metric_label(key)} ({key})")
            ax.set_title(f"{key}: mean ± std over seeds; thin: each trial (dashed: early-stopped)", fontsize=9)
        axes[0][-1].legend(loc="best")
        return _png(fig)


def param_scatter(data: SweepData) -> bytes | None:
    keys = data.searched
    runs = selection.search_runs(data)
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
            x_all = runs.get("params." + key, pd.Series(index=runs.index, dtype=object)).map(fmt.param_value)
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
            ax.set_ylabel(fmt.metric_label(data.metric))
        for ax in list(axes.flat)[len(keys):]:
            ax.set_visible(False)
        axes.flat[0].legend(loc="best")
        fig.suptitle(f"{data.sweep}: {fmt.metric_label(data.metric)} against searched parameters")
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
    runs = selection.search_runs(data)
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
        fin = runs["score"].where(runs["status"] == Status.FINISHED.value)
        best = fin.cummax().ffill()
        ax.step(order, best, where="post", color="k", lw=1.4, label="running best (finished)")
        ax.set_xlabel("trial (start order)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(fmt.metric_label(data.metric))
        ax.set_title(f"{data.sweep}: search history")
        ax.legend(loc="best")
        return _png(fig)


def deltas_forest(data: SweepData, arms: pd.DataFrame) -> bytes | None:
    """Each arm's delta against the baseline with its 95% interval over seeds + test images (where the runs
    logged their test detections: reports.stats.ablation_interval) and over seeds alone (paired t), against
    the zero line: the ablation at a glance."""
    a = arms[(arms["method"] != "baseline") & arms["delta"].notna()]
    if a.empty:
        return None
    label = selection.value_label(data)
    combined = a.get("iv_low", pd.Series(dtype=float)).notna().any()
    with plt.rc_context(_STYLE):
        height = 0.55 * len(a) + 1.5
        fig, ax = plt.subplots(figsize=(7, height))
        fig.subplots_adjust(left=0.28, right=0.96, bottom=0.6 / height + 0.08, top=1 - 0.45 / height)
        y = np.arange(len(a))[::-1]
        for yi, (_, r) in zip(y, a.iterrows()):
            if np.isfinite(r.get("iv_low", np.nan)):
                ax.plot([r["iv_low"], r["iv_high"]], [yi + 0.1] * 2, color="C0", lw=2.4, solid_capstyle="butt")
            if np.isfinite(r["low"]):
                ax.plot([r["low"], r["high"]], [yi - 0.12] * 2, color="C1" if combined else "C0", lw=1.6,
                        solid_capstyle="butt")
            ax.plot([r["delta"]], [yi], "ko", ms=5)
        ax.axvline(0, color="0.3", lw=1, ls=":")
        ax.set_yticks(y, [str(arm) for arm in a["arm"]])
        ax.set_xlabel(f"Δ {label} vs {data.baseline}")
        handles = []
        if combined:
            handles.append(plt.Line2D([], [], color="C0", lw=2.4, label="95% CI, seeds + test images"))
        handles.append(plt.Line2D([], [], color="C1" if combined else "C0", lw=1.6,
                                  label="95% CI, seeds only (paired t, this test set)"))
        ax.legend(handles=handles, loc="best", fontsize=7)
        ax.set_title(f"{data.sweep}: which change bought how much")
        return _png(fig)


def budget_deltas(data: SweepData, deltas) -> bytes | None:
    """Each arm's delta against the baseline at each budget point (reports.budget.point_deltas) with its 95%
    band, against the zero line: whether a delta holds, grows or turns along the budget."""
    arms = [a for a in data.arms if a != data.baseline]
    rows = [d for d in deltas if d.arm in arms and np.isfinite(d.delta)]
    if not rows:
        return None
    with plt.rc_context(_STYLE):
        fig, ax = plt.subplots(figsize=(7, 4))
        fig.subplots_adjust(left=0.12, right=0.97, bottom=0.13, top=0.9)
        for i, arm in enumerate(arms):
            r = [d for d in rows if d.arm == arm]
            if not r:
                continue
            x = [d.fraction for d in r]
            colour = f"C{(i + 1) % 10}"
            ax.plot(x, [d.delta for d in r], "o-", color=colour, label=arm, lw=1.6, ms=4)
            lo, hi = np.array([d.low for d in r], float), np.array([d.high for d in r], float)
            if np.isfinite(lo).any():
                ax.fill_between(x, lo, hi, color=colour, alpha=0.15, lw=0)
        ax.axhline(0, color="0.3", lw=1, ls=":")
        ax.set_xlabel("fraction of the training budget")
        ax.set_ylabel(f"Δ {selection.value_label(data)} vs {data.baseline}")
        ax.set_title(f"{data.sweep}: Δ along the budget (95% bands)")
        ax.legend(loc="best")
        return _png(fig)


def effects_forest(data: SweepData, estimates) -> bytes | None:
    """A designed sweep's main effects and interactions (reports/factorial.py) with their 95% intervals."""
    rows = [e for e in estimates if np.isfinite(e.delta)]
    if not rows:
        return None
    with plt.rc_context(_STYLE):
        height = 0.45 * len(rows) + 1.4
        fig, ax = plt.subplots(figsize=(7, height))
        fig.subplots_adjust(left=0.34, right=0.96, bottom=0.6 / height + 0.08, top=1 - 0.45 / height)
        y = np.arange(len(rows))[::-1]
        for yi, e in zip(y, rows):
            colour = "C0" if e.kind == "main" else ("C3" if e.excludes_zero else "C7")
            if np.isfinite(e.low):
                ax.plot([e.low, e.high], [yi, yi], color=colour, lw=2.2, solid_capstyle="butt")
            ax.plot([e.delta], [yi], "o", color=colour, ms=5)
        ax.axvline(0, color="0.3", lw=1, ls=":")
        ax.set_yticks(y, [e.name + (f"  (= {e.alias})" if e.alias else "") for e in rows], fontsize=8)
        ax.set_xlabel(f"effect on {selection.value_label(data)}")
        ax.legend(handles=[plt.Line2D([], [], color="C0", lw=2.2, label="main effect"),
                           plt.Line2D([], [], color="C3", lw=2.2, label="interaction, interval excludes 0"),
                           plt.Line2D([], [], color="C7", lw=2.2, label="interaction")], loc="best", fontsize=7)
        ax.set_title(f"{data.sweep}: effects with 95% intervals")
        return _png(fig)


def shapley_bars(data: SweepData, shares, total) -> bytes | None:
    """Each factor's Shapley share of the gain (bars with 95% intervals) stacked against the total."""
    rows = [e for e in shares if np.isfinite(e.delta)]
    if not rows:
        return None
    with plt.rc_context(_STYLE):
        fig, ax = plt.subplots(figsize=(7, 0.45 * (len(rows) + 1) + 1.4))
        fig.subplots_adjust(left=0.3, right=0.96, bottom=0.18, top=0.88)
        names = [e.name for e in rows] + ["total"]
        vals = [e.delta for e in rows] + [total.delta]
        lows = [e.low for e in rows] + [total.low]
        highs = [e.high for e in rows] + [total.high]
        y = np.arange(len(names))[::-1]
        ax.barh(y, vals, color=[f"C{i % 10}" for i in range(len(rows))] + ["0.5"], height=0.6)
        for yi, lo, hi in zip(y, lows, highs):
            if np.isfinite(lo):
                ax.plot([lo, hi], [yi, yi], color="k", lw=1.2)
        ax.axvline(0, color="0.3", lw=1, ls=":")
        ax.set_yticks(y, names)
        ax.set_xlabel(f"share of the gain in {selection.value_label(data)}")
        model = " (model-based)" if any(e.model_based for e in rows) else ""
        ax.set_title(f"{data.sweep}: Shapley shares{model}, 95% intervals")
        return _png(fig)


def parallel_coordinates(data: SweepData) -> bytes | None:
    """Every search trial's parameters on parallel axes (scaled to the searched range, log where the
    distribution is), coloured by its score; the best finished trial drawn thick."""
    keys = data.searched
    runs = selection.search_runs(data)
    runs = runs[runs["score"].notna()]
    if len(keys) < 2 or len(runs) < 2:
        return None
    space = search.parsed_space(data)
    cols = []
    for k in keys:
        v = runs.get("params." + k, pd.Series(index=runs.index, dtype=object)).map(fmt.param_value)
        p = space.get(k)
        if p is not None and p.kind == "choice":
            x = v.map(lambda c: list(p.choices).index(p.cast(c)) / max(1, len(p.choices) - 1) if c is not None else np.nan)
        elif p is not None:
            f = (np.log if p.kind == "loguniform" else (lambda t: t))
            x = v.map(lambda c: (f(float(c)) - f(p.low)) / (f(p.high) - f(p.low)) if c is not None else np.nan)
        else:
            continue
        cols.append((k, x.astype(float).to_numpy()))
    if len(cols) < 2:
        return None
    score = runs["score"].to_numpy(float)
    norm = plt.Normalize(np.nanmin(score), np.nanmax(score))
    best = selection.best_run(runs)
    with plt.rc_context(_STYLE):
        fig, ax = plt.subplots(figsize=(1.9 * len(cols) + 2, 4.2))
        fig.subplots_adjust(left=0.09, right=0.86, bottom=0.2, top=0.9)
        xs = np.arange(len(cols))
        for i in np.argsort(score):
            ys = [c[1][i] for c in cols]
            is_best = runs.iloc[i]["run_id"] == best["run_id"]
            ax.plot(xs, ys, color=plt.cm.viridis(norm(score[i])), lw=2.8 if is_best else 1.0,
                    alpha=1.0 if is_best else 0.7, ls="--" if runs.iloc[i]["status"] == Status.EARLY_STOPPED.value else "-")
        ax.set_xticks(xs, [k for k, _ in cols], rotation=15)
        ax.set_ylim(-0.05, 1.05)
        ax.set_ylabel("position in the searched range")
        sm = plt.cm.ScalarMappable(norm=norm, cmap="viridis")
        fig.colorbar(sm, ax=ax, fraction=0.04, pad=0.02).set_label(fmt.metric_label(data.metric))
        ax.set_title(f"{data.sweep}: searched parameters (thick: best trial; dashed: early-stopped)")
        return _png(fig)


def cost_unit(hours) -> tuple[str, float]:
    """The axis unit for costs given in device-hours: minutes while every cost is under an hour."""
    return ("device-minutes", 60.0) if np.nanmax(hours) < 1 else ("device-hours", 1.0)


def pareto(data: SweepData) -> bytes | None:
    """Finished trials: the reported mAP against their training cost (device-time); the Pareto front
    (no trial both cheaper and better) marked, and the best trial."""
    runs = data.finished
    cost = pd.to_numeric(runs.get("metrics." + M.DEVICE_HOURS, pd.Series(dtype=float)), errors="coerce")
    value = pd.to_numeric(runs[data.value], errors="coerce")
    ok = cost.notna() & value.notna()
    if ok.sum() < 2:
        return None
    runs, cost, value = runs[ok], cost[ok].to_numpy(), value[ok].to_numpy()
    order = np.lexsort((-value, cost))
    front, top = [], -np.inf
    for i in order:
        if value[i] > top:
            front.append(i)
            top = value[i]
    best = selection.best_run(runs)
    unit, k = cost_unit(cost)
    with plt.rc_context(_STYLE):
        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        fig.subplots_adjust(left=0.12, right=0.97, bottom=0.13, top=0.9)
        for i, arm in enumerate(data.arms):
            m = (runs["arm"] == arm).to_numpy()
            if m.any():
                ax.scatter(cost[m] * k, value[m], color=f"C{i % 10}", s=24, label=str(arm), zorder=3)
        ax.step(cost[front] * k, value[front], where="post", color="k", lw=1, label="Pareto front", zorder=2)
        b = runs.index.get_loc(best.name)
        ax.scatter([cost[b] * k], [value[b]], s=140, facecolors="none", edgecolors="r", lw=1.5,
                   label="best trial (by val)", zorder=4)
        ax.set_xlabel(f"training cost ({unit})")
        ax.set_ylabel(selection.value_label(data))
        ax.legend(loc="lower right", fontsize=7)
        ax.set_title(f"{data.sweep}: accuracy against cost")
        return _png(fig)


def accuracy_speed(data: SweepData, rows: pd.DataFrame | None = None) -> bytes | None:
    """Each (arm, model) of reports/deploy.py: mean mAP (± std over seeds) against mean latency per image,
    one colour per arm and one marker per model, the Pareto front (higher mAP, lower latency) as a step line."""
    d = deploy.deploy_rows(data) if rows is None else rows
    if d.empty or d["map"].notna().sum() < 1:
        return None
    markers = {"torch": "o", "onnx": "s", "int8": "^"}
    with plt.rc_context(_STYLE):
        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        fig.subplots_adjust(left=0.12, right=0.97, bottom=0.13, top=0.9)
        for i, arm in enumerate(data.arms):
            for _, r in d[d["arm"] == arm].iterrows():
                ax.errorbar(r["latency_ms"], r["map"], yerr=None if math.isnan(r["map_std"]) else r["map_std"],
                            xerr=None if math.isnan(r["latency_std"]) else r["latency_std"], fmt=markers[r["backend"]],
                            color=f"C{i % 10}", ms=7, capsize=3, zorder=3, label=f"{arm}: {r['model']}")
        front = d[d["pareto"]].sort_values("latency_ms")
        ax.step(front["latency_ms"], front["map"], where="post", color="k", lw=1, zorder=2)
        ax.scatter(front["latency_ms"], front["map"], s=220, facecolors="none", edgecolors="k", lw=1.2, zorder=4,
                   label="Pareto front")
        ax.set_xlabel("CPU latency per image, batch 1 (ms)")
        ax.set_ylabel(fmt.metric_label(M_TEST_MAP))
        ax.legend(loc="best", fontsize=7)
        ax.set_title(f"{data.sweep}: accuracy against speed")
        return _png(fig)
