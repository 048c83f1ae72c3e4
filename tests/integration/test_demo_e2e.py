"""End to end: a sweep of the real demo config (real fit, local Ray, MLflow sqlite) -> `ssdlab report`
produces all four tables and the plots. A shrunken copy of sweeps/demo*.yaml so it takes about a minute:
two arms x two seeds, each arm searched by Optuna (2 trials) and its best retrained with the other seed. The
sweep starts a local Ray of its own (the test session's is stopped first: no_local_ray), whose sockets are
watched."""
from __future__ import annotations

import os
from pathlib import Path

from ssdlab.cli import main
from tests.support.configs import shrunken_demo_sweep

REPO = Path(__file__).resolve().parents[2]


def test_demo_sweep_store_gives_all_tables_and_plots(no_local_ray, tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    path = shrunken_demo_sweep(tmp_path, uri, "e2e", epochs=2, log_checkpoints=False,
                               **{"eval.every_epochs": 1, "eval.test_at": [0.5, 1.0]})

    from tests.support.processes import LoopbackWatch

    with LoopbackWatch(os.getpid()) as local_ray:  # the local Ray this sweep starts: loopback only
        assert main(["sweep", str(path), "--storage", str(tmp_path / "ray"), "--num-cpus", "2"]) == 0
    local_ray.check()
    out = tmp_path / "report"
    assert main(["report", "--sweep", "e2e", "--tracking-uri", uri, "--format", "md,csv,tex,html",
                 "--out", str(out)]) == 0

    md = (out / "report.md").read_text()
    for title in ("Experiment summary", "Ablation", "Search", "Per-class AP", "Parameter importances"):
        assert title in md, f"report.md lacks the {title!r} table"
    # selection on SHAPES/val, reporting on SHAPES/test, with the bootstrap over the logged test detections
    assert "test mAP@0.5" in md and "Reported: `test/mAP50`" in md
    assert "Δ vs initial (95% CI, seeds + test images)" in md and "over 1000 bootstrap resamples of the test images" in md
    # the budget points (eval.test_at: half way and at the end) along the budget, with their intervals
    assert "Δ along the budget: e2e" in md and (out / "budget.csv").is_file() and (out / "budget.png").is_file()
    import pandas as pd
    budget = pd.read_csv(out / "budget.csv")
    assert sorted(set(budget["fraction"])) == [0.5, 1.0] and set(budget["arm"]) == {"initial", "+sample_patch"}
    assert (budget[budget["arm"] == "+sample_patch"]["method"] == "seeds+images").all()
    assert "![Detections of the best trial" in md and (out / "best_detections.png").stat().st_size > 1000
    # one summary row per arm, in sweep-file order, with the arm notes
    assert md.index("no sample patch") < md.index("sample patch (paper sec. 2.2)")
    assert "Omitted: only 4 trial(s) share a common budget" in md  # importances need >= 8 trials
    assert not (out / "importance.png").exists()
    for png in ("learning_curves.png", "params.png", "search_history.png"):
        assert (out / png).stat().st_size > 1000, png
        assert "data:image/png;base64," in (out / "report.html").read_text()
    assert any(p.suffix == ".csv" for p in out.iterdir()) and (out / "report.tex").is_file()
    # exactly one child run per trial: 2 arms x (2 search trials + 1 confirm seed)
    capsys.readouterr()
    assert main(["runs", "--sweep", "e2e", "--tracking-uri", uri]) == 0
    runs = capsys.readouterr().out
    assert sum(1 for line in runs.splitlines() if "e2e" in line.split()[:2]) == 6, runs
    assert sum(1 for line in runs.splitlines() if line.startswith("*")) == 1, runs  # the best trial
    assert "finished" in runs
    from tests.support.fake_fit import runs_of  # every trial run records the precision it trained at on its node
    _, _, children = runs_of(uri, "e2e")
    assert all(r.data.tags["ssdlab.precision"].startswith(("bf16 autocast + channels_last", "fp32")) for r in children)
