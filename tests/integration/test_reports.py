"""Reports read back from a real (sqlite) MLflow store filled with known runs.

Every number in the tables is checked against a value computed by hand here; regenerating gives
byte-identical files; failed, running and early-stopped runs are listed but never averaged.
"""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest

mlflow = pytest.importorskip("mlflow")
from mlflow.entities import Metric  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from experiments.schema import Tag  # noqa: E402
from ssd_core.errors import UserError  # noqa: E402
from tests.support.report_store import ABL, ARMS, CONFIRM, HPO, HPO_SPACE, NOTES, T0, TEST_GAP, new_run  # noqa: E402


@pytest.fixture(scope="module")
def store(report_store) -> str:
    return report_store  # conftest's: filled once for the tests that read it (tests/support/report_store.py)


@pytest.fixture(scope="module")
def abl(store):
    from reports.load import read_sweep
    return read_sweep("abl", store)


def _best(arm):
    """Per seed: the reported test value (at the best val epoch)."""
    return {seed: max(c) - TEST_GAP for a, seed, s, c in ABL if a == arm and s == "finished"}


# --------------------------------------------------------------------------- loading


def test_read_sweep_reads_arms_status_and_best_over_epochs(abl):
    assert abl.arms == ARMS and abl.baseline == "base" and abl.metric == "val/mAP50"
    assert len(abl.runs) == len(ABL)
    assert list(abl.runs["arm"]) == [a for arm in ARMS for a, *_ in ABL if a == arm]
    got = {(r.arm, int(r.seed)): (r.status, r.score, r.final) for r in abl.runs.itertuples()}
    for arm, seed, status, curve in ABL:
        assert got[(arm, seed)] == (status, pytest.approx(max(curve)), pytest.approx(curve[-1]))
    fin = abl.runs[abl.runs["status"] == "finished"]
    assert fin["duration_s"].tolist() == [60.0 * 3 + 5] * len(fin)
    assert abl.runs.loc[abl.runs["status"] == "running", "duration_s"].isna().all()


def test_sql_fast_path_equals_the_mlflow_api(store, abl, monkeypatch):
    import pandas as pd

    from reports import load
    hpo_fast, runs_fast = load.read_sweep("hpo", store), load.load_runs(store)
    monkeypatch.setattr(load, "FAST_SQL", False)
    api = load.read_sweep("abl", store)
    pd.testing.assert_frame_equal(abl.runs, api.runs)
    pd.testing.assert_frame_equal(abl.history, api.history)
    hpo_api = load.read_sweep("hpo", store)
    pd.testing.assert_frame_equal(hpo_fast.runs, hpo_api.runs)
    pd.testing.assert_frame_equal(hpo_fast.history, hpo_api.history)
    before = mlflow.get_tracking_uri()
    pd.testing.assert_frame_equal(runs_fast, load.load_runs(store))
    assert mlflow.get_tracking_uri() == before  # the caller's tracking URI is left alone
    assert len(runs_fast) == len(ABL) + len(HPO) + len(CONFIRM)


def test_unknown_sweep_names_sweep_store_and_lists_found(store):
    from reports.load import read_sweep
    with pytest.raises(UserError) as e:
        read_sweep("nope", store)
    msg = str(e.value)
    assert "'nope'" in msg and store in msg and "abl, hpo" in msg


# --------------------------------------------------------------------------- tables


def test_summary_table_means_stds_and_bold_best(abl):
    from reports.tables import summary_table
    t = summary_table(abl)
    assert t.columns == ["No", "Arm", "test mAP@0.5", "Note"]
    # base: best val per seed 0.48, 0.50, 0.49 -> test 0.44, 0.46, 0.45 -> mean 0.45, std 0.01 (by hand)
    assert t.rows[0] == ["1", "base", "0.450 ± 0.010", "initial implementation"]
    # aug finished: 0.58, 0.61, 0.57 - 0.04 -> mean 0.54667, sd sqrt(((-.00667)^2+.02333^2+.01667^2)/2)
    aug = np.array([0.58, 0.61, 0.57]) - TEST_GAP
    assert t.rows[1] == ["2", "aug", f"{aug.mean():.3f} ± {aug.std(ddof=1):.3f}", NOTES["aug"]]
    assert t.rows[1][2] == "0.547 ± 0.021"
    assert t.rows[2] == ["3", "lite", "0.360", "lite heads"]  # one finished seed: no ±
    assert t.rows[3] == ["4", "wd", "0.490 ± 0.014", NOTES["wd"]]
    assert t.bold == {(1, 2)}
    assert t.raw[0][2] == pytest.approx(0.45) and t.raw[0][3] == pytest.approx(0.01)
    assert "Selection: each run's checkpoint is its best `val/mAP50` epoch" in t.notes[0]
    assert "Reported: `test/mAP50`" in t.notes[0]


def test_ablation_paired_delta_ci_and_p_by_hand(abl):
    from scipy import stats as sps

    from reports.selection import arm_stats
    from reports.tables import ablation_table
    a = arm_stats(abl).set_index("arm")
    base, aug = _best("base"), _best("aug")
    d = np.array([aug[s] - base[s] for s in (0, 1, 2)])  # 0.10, 0.11, 0.08
    mean, sd = d.mean(), d.std(ddof=1)
    half = 4.302652729749464 * sd / math.sqrt(3)  # t_{0.975, 2}
    assert mean == pytest.approx(0.29 / 3)
    r = a.loc["aug"]
    assert r["method"] == "paired" and r["pairs"] == 3
    assert r["delta"] == pytest.approx(mean)
    assert (r["low"], r["high"]) == (pytest.approx(mean - half), pytest.approx(mean + half))
    assert r["p"] == pytest.approx(sps.ttest_rel([aug[s] for s in (0, 1, 2)], [base[s] for s in (0, 1, 2)]).pvalue)
    assert (r["finished"], r["failed"], r["early_stopped"], r["running"]) == (3, 1, 0, 0)
    # device-hours: every run's last cumulative value (0.03 per 3-epoch run, 0.01 for the failed one)
    assert r["device_hours"] == pytest.approx(0.03 * 3 + 0.01)
    # img/s: mean of the finished runs' last perf/train_img_s = 100 + 10*i + 2 (i = run index 3,4,5)
    assert r["img_s"] == pytest.approx(np.mean([100 + 10 * i + 2 for i in (3, 4, 5)]))
    t = ablation_table(abl)
    row = t.rows[1]
    assert row[:3] == ["aug", "3", "0.547 ± 0.021"]
    assert row[3] == f"{mean:+.3f} [{mean - half:+.3f}, {mean + half:+.3f}]" == "+0.097 [+0.059, +0.135]"
    assert row[4] == f"{r['p']:.3f}" and row[5] == "1 failed" and row[6] == "3"
    assert t.rows[0][3] == "baseline" and t.rows[0][5] == "–"
    assert any("t(0.975, n-1)" in n for n in t.notes)


def test_ablation_single_seed_and_unpaired_fallbacks(abl):
    from scipy import stats as sps

    from reports.selection import arm_stats
    from reports.tables import ablation_table
    a = arm_stats(abl).set_index("arm")
    base = np.array(list(_best("base").values()))
    lite = a.loc["lite"]  # one finished seed: difference of means only
    assert lite["method"] == "single" and lite["delta"] == pytest.approx(0.36 - base.mean())
    assert math.isnan(lite["low"]) and math.isnan(lite["p"])
    assert (lite["early_stopped"], lite["running"], lite["n"]) == (1, 1, 1)
    wd = np.array([0.52, 0.54]) - TEST_GAP  # seeds 10, 11: none shared with the baseline -> Welch
    va, vb = wd.var(ddof=1) / 2, base.var(ddof=1) / 3
    dof = (va + vb) ** 2 / (va**2 / 1 + vb**2 / 2)
    half = sps.t.ppf(0.975, dof) * math.sqrt(va + vb)
    w = a.loc["wd"]
    assert w["method"] == "welch" and w["delta"] == pytest.approx(wd.mean() - base.mean())
    assert (w["low"], w["high"]) == (pytest.approx(0.04 - half), pytest.approx(0.04 + half))
    assert w["p"] == pytest.approx(sps.ttest_ind(wd, base, equal_var=False).pvalue)
    t = ablation_table(abl)
    assert t.rows[2][3] == "-0.090 (1)" and t.rows[2][4] == "–"
    assert t.rows[2][5] == "1 early-stopped, 1 running"
    assert t.rows[3][3].endswith("(w)")
    assert any("Welch" in n for n in t.notes) and any("single run" in n for n in t.notes)


def test_other_runs_and_per_class_at_best_epoch(abl):
    from reports.run_tables import other_runs_table
    from reports.tables import per_class_table
    o = other_runs_table(abl)
    assert [(r[0], r[1], r[3]) for r in o.rows] == [("aug", "3", "failed"), ("lite", "1", "early_stopped"),
                                                    ("lite", "2", "running")]
    assert o.rows[0][6] == "NonFiniteLossError: loss is nan at epoch 1"
    assert o.rows[2][4:6] == ["1", "0.150"]
    assert "9 finished, 1 early-stopped, 1 failed, 0 lost, 1 running (total 12)" in o.notes[0]
    p = per_class_table(abl)
    assert p.columns == ["Arm", "Seed", "test mAP@0.5", "Platelets", "RBC", "WBC"]
    # base's best run by val: seed 1 (0.50 at epoch 1; test 0.46); aug's: seed 1 (0.61 at epoch 2; test 0.57)
    assert p.rows[0] == ["base", "1", "0.460", f"{0.46 - 0.15:.3f}", f"{0.46 + 0.10:.3f}", f"{0.46 + 0.05:.3f}"]
    assert p.rows[1][:3] == ["aug", "1", "0.570"] and p.raw[1][4] == 2
    assert p.raw[1][6:] == [pytest.approx(0.57 + o) for o in (-0.15, 0.10, 0.05)]
    assert p.rows[2] == ["lite", "0", "0.360", "–", "–", "–"]  # no per-class AP logged
    assert p.bold == {(1, 2), (1, 3), (1, 4), (1, 5)}


# --------------------------------------------------------------------------- search (HPO)


@pytest.fixture(scope="module")
def hpo(store):
    from reports.load import read_sweep
    return read_sweep("hpo", store)


def test_search_table_top_k_counts_and_best_override(hpo):
    import yaml

    from reports.search import best_override, search_table
    t = search_table(hpo, top_k=3)
    fin = sorted((t_ for t_ in HPO if t_[1] == "finished"), key=lambda t_: -max(t_[5]))
    assert [r[1] for r in t.rows] == [t_[0] for t_ in fin[:3]] == ["t04", "t07", "t00"]
    assert t.columns == ["Rank", "Trial", "Seed", "model.backbone", "train.lr", "train.weight_decay", "val mAP@0.5"]
    assert t.rows[0] == ["1", "t04", "0", "vgg16", "0.002", "0.0003", "0.620"] and t.bold == {(0, 6)}
    assert t.raw[0][5:8] == ["vgg16", 0.002, 0.0003]
    assert "7 finished, 2 stopped early by ASHA, 1 failed, 0 running" in t.notes[0]
    text = best_override(hpo)
    assert "# best trial t04" in text  # confirm runs are not search trials and "-o train.lr=0.002" in text
    assert yaml.safe_load(text) == {"model": {"backbone": "vgg16"}, "train": {"lr": 0.002, "weight_decay": 0.0003}}


def test_search_sweep_arm_is_the_best_trial_plus_its_confirm_seeds(hpo):
    from reports.selection import arm_members
    from reports.tables import summary_table
    assert hpo.arms == ["(none)"] and hpo.baseline == "(none)"
    m = arm_members(hpo)
    assert sorted(m["trial_id"]) == ["c1", "c2", "t04"] and list(m["selected"]) .count(True) == 1
    t = summary_table(hpo)
    scores = np.array([0.62, 0.58, 0.60])  # t04 (seed 0), confirm seeds 1 and 2
    assert t.rows == [["1", "(none)", f"{scores.mean():.3f} ± {scores.std(ddof=1):.3f}", "TPE over lr, wd and backbone"]]
    assert t.rows[0][2] == "0.600 ± 0.020"


def test_importances_equal_optuna_on_the_same_trials_and_are_deterministic(hpo):
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    from reports.search import distributions, param_importances
    dists = {"model.backbone": CategoricalDistribution(["vgg16", "mobilenet_v2"]),
             "train.lr": FloatDistribution(1e-4, 1e-1, log=True),
             "train.weight_decay": FloatDistribution(0.0, 1e-3)}
    assert distributions(HPO_SPACE) == dists
    # Finished and early-stopped trials, each scored by its best value up to the last epoch all of
    # them reached (ASHA's first rung), so longer trials are not favoured for training longer.
    used = [t for t in sorted(HPO) if t[1] in ("finished", "early_stopped")]
    assert {t[1] for t in used} == {"finished", "early_stopped"}
    common = min(len(t[5]) for t in used)
    study = optuna.create_study(direction="maximize")
    for _tid, _status, lr, wd, bb, curve in used:
        study.add_trial(optuna.trial.create_trial(
            params={"model.backbone": bb, "train.lr": lr, "train.weight_decay": wd},
            distributions=dists, value=max(curve[:common])))
    want = optuna.importance.get_param_importances(
        study, evaluator=optuna.importance.PedAnovaImportanceEvaluator())
    imp = param_importances(hpo)
    got = imp.values
    assert got == pytest.approx(want) and list(got) == sorted(want, key=lambda k: (-want[k], k))
    assert sum(got.values()) == pytest.approx(1.0) and (imp.n, imp.epoch) == (9, 0)
    assert param_importances(hpo) == imp
    # fewer trials at a common budget than the minimum: omitted, with the reason
    few = param_importances(hpo, min_trials=10)
    assert few.values == {} and "only 9 trial(s) share a common budget (epoch 0)" in few.reason


# --------------------------------------------------------------------------- files and commands


def _files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def test_report_regenerates_byte_identical_in_every_format(store, tmp_path):
    from reports.report import build_report, write_report
    for sweep, with_plots in (("abl", False), ("hpo", True)):  # hpo draws all four plots
        fmts = ("md", "csv", "tex", "html")
        a = write_report(build_report(sweep, store, with_plots=with_plots), tmp_path / sweep / "a", fmts)
        b = write_report(build_report(sweep, store, with_plots=with_plots), tmp_path / sweep / "b", fmts)
        fa, fb = _files(tmp_path / sweep / "a"), _files(tmp_path / sweep / "b")
        assert fa == fb and len(a) == len(b) == len(fa)
    copy = tmp_path / "copy" / "mlflow.db"  # a teammate's copy of the store, at another path
    copy.parent.mkdir()
    copy.write_bytes(Path(store[len("sqlite:///"):]).read_bytes())
    write_report(build_report("abl", f"sqlite:///{copy}", with_plots=False), tmp_path / "abl" / "c", fmts)
    assert _files(tmp_path / "abl" / "c") == _files(tmp_path / "abl" / "a")
    names = set(_files(tmp_path / "hpo" / "a"))
    assert {"report.md", "report.tex", "report.html", "summary.csv", "search.csv", "importance.csv",
            "learning_curves.png", "params.png", "importance.png", "search_history.png", "parallel.png"} <= names
    html = (tmp_path / "hpo" / "a" / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 5 and 'src="http' not in html
    md = (tmp_path / "abl" / "a" / "report.md").read_text()
    assert "| 2 | aug | **0.547 ± 0.021** | stronger augmentation (sample patch, zoom out) |" in md
    assert "| aug | 3 | **0.547 ± 0.021** | +0.097 [+0.059, +0.135] | 0.008 | 1 failed |" in md
    rows = list(csv.DictReader(io.StringIO((tmp_path / "abl" / "a" / "ablation.csv").read_text())))
    assert [r["arm"] for r in rows] == ARMS and float(rows[1]["delta"]) == pytest.approx(0.29 / 3)
    tex = (tmp_path / "abl" / "a" / "report.tex").read_text()
    assert r"\textbf{0.547 $\pm$ 0.021}" in tex and r"95\% CI" in tex
    png = (tmp_path / "hpo" / "a" / "learning_curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and b"Software" not in png


def test_cli_report_runs_and_unknown_sweep(store, tmp_path, capsys):
    from ssdlab.cli import main
    out = tmp_path / "out"
    assert main(["report", "--sweep", "abl", "--tracking-uri", store, "--format", "md,csv",
                 "--out", str(out), "--no-plots"]) == 0
    assert "## Experiment summary: abl" in capsys.readouterr().out
    assert (out / "report.md").is_file() and (out / "ablation.csv").is_file()
    assert main(["report", "--sweep", "zzz", "--tracking-uri", store]) == 2
    err = capsys.readouterr().err
    assert "'zzz'" in err and "abl, hpo" in err and store in err
    assert main(["report", "--sweep", "abl", "--tracking-uri", store, "--format", "pdf"]) == 2
    assert "pdf" in capsys.readouterr().err
    assert main(["runs", "--sweep", "hpo", "--tracking-uri", store]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:6] == ["Best", "Sweep", "Arm", "Seed", "Trial", "Status"]
    # sorted by score: t04 first and marked best (the report's best trial too), the failed run (no metric) last
    assert lines[2].split()[:9] == ["*", "hpo", "(none)", "0", "t04", "finished", "vgg16", "0.002", "0.0003"]
    assert "0.620" in lines[2] and sum(line.startswith("*") for line in lines) == 1
    assert lines[-1].split()[4] == "failed" and len(lines) == 2 + len(HPO) + len(CONFIRM)
    assert main(["runs", "--sweep", "hpo", "--tracking-uri", store, "--sort", "bogus"]) == 2
    assert "--sort 'bogus': not one of score, test, duration, start" in capsys.readouterr().err
    assert main(["runs", "--tracking-uri", store, "--limit", "5"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2 + 5


def test_cli_runs_as_json_and_csv(store, capsys):
    import io

    import pandas as pd

    from ssdlab.cli import main
    assert main(["runs", "--sweep", "hpo", "--tracking-uri", store, "--csv"]) == 0
    frame = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert len(frame) == len(HPO) + len(CONFIRM) and frame["score"].dtype == float
    assert frame.loc[frame["best"], "trial_id"].tolist() == ["t04"]
    assert "train.weight_decay" in frame.columns  # every searched parameter, not the first four
    assert main(["runs", "--sweep", "hpo", "--tracking-uri", store, "--json", "--limit", "2"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert [r["trial_id"] for r in records] == ["t04", "c2"] and records[0]["score"] == 0.62  # by score: 0.62, 0.60


def test_runs_and_report_name_the_same_best_trial(tmp_path, capsys):
    """An early-stopped trial that scored above every finished one, and a tie between two finished
    trials: before, `ssdlab runs` put the early-stopped trial first while the report's best was a
    finished one. Both now use experiments.schema.best_index: finished only, ties to the lowest seed."""
    from reports.load import read_sweep
    from reports.run_tables import other_runs_table
    from reports.search import best_override, search_table
    from ssdlab.cli import main

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    from experiments.tracking.store import ensure_store
    from tests.support.stores import empty_store
    ensure_store(empty_store(uri))
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("ssdlab")
    space = {"train.lr": {"loguniform": [1e-4, 1e-1]}}
    parent = new_run(client, exp, T0, {Tag.KIND: "sweep", Tag.SWEEP: "tie", Tag.ARMS: "[]",
                                        Tag.SEARCH_SPACE: json.dumps(space), Tag.METRIC: "val/mAP50"})
    trials = [("a", 1, "finished", 1e-3, [0.3, 0.6]), ("b", 0, "early_stopped", 5e-3, [0.7]),
              ("c", 0, "finished", 2e-3, [0.6, 0.5]), ("d", 2, "finished", 3e-3, [0.2, 0.4])]
    for i, (tid, seed, status, lr, curve) in enumerate(trials):
        start = T0 + 1000 * (i + 1)
        ms = [Metric("val/mAP50", v, start + 1000 * (s + 1), s) for s, v in enumerate(curve)]
        new_run(client, exp, start, {Tag.PARENT: parent, Tag.KIND: "trial", Tag.SWEEP: "tie",
                                      Tag.TRIAL_ID: tid, Tag.SEED: str(seed), Tag.PHASE: "search",
                                      Tag.STATUS: status, Tag.SEARCHED: '["train.lr"]'},
                 {"train.lr": lr}, ms, status, end=start + 5000)
    data = read_sweep("tie", uri)
    assert [r[1] for r in search_table(data).rows] == ["c", "a", "d"]  # a and c tie at 0.6: seed 0 first
    assert "# best trial c" in best_override(data)
    assert any("b" in n and "scored above" in n for n in other_runs_table(data).notes)
    assert main(["runs", "--sweep", "tie", "--tracking-uri", uri]) == 0
    lines = capsys.readouterr().out.splitlines()[2:]
    assert lines[0].split()[:5] == ["tie", "(none)", "0", "b", "early_stopped"]  # highest score listed first...
    (best,) = [line for line in lines if line.startswith("*")]  # ...but the best trial is the report's
    assert best.split()[4] == "c"


def test_html_links_trials_to_their_mlflow_run_pages(store, tmp_path):
    from reports.report import build_report, write_report
    report = build_report("hpo", store, with_plots=False)
    write_report(report, tmp_path, ("html",), ui_url="http://127.0.0.1:5000/")
    html = (tmp_path / "report.html").read_text()
    best = report.data.runs.set_index("trial_id").loc["t04"]
    assert f'<a href="http://127.0.0.1:5000/#/experiments/{best["experiment_id"]}/runs/{best["run_id"]}">t04</a>' in html
    for _, r in report.data.runs.iterrows():  # every run row links: the trials table or the not-averaged one
        assert f'#/experiments/{r["experiment_id"]}/runs/{r["run_id"]}">{r["trial_id"]}</a>' in html, r["trial_id"]
    write_report(report, tmp_path / "plain", ("html",))
    assert "<a href=" not in (tmp_path / "plain" / "report.html").read_text()
