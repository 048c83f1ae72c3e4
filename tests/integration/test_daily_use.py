"""Daily use: the places where the lab meets MLflow, Optuna and the terminal, each as a user meets it
through the real CLI: one line where a user erred, the column a list is sorted by, the sweeps a report can
be about, MLflow's model-training view, and a study dashboard that starts and stops."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from ssdlab.cli import main
from tests.support.fake_fit import REPO
from tests.support.fake_store import Run, write_sweep


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    uri = f"sqlite:///{tmp_path_factory.mktemp('daily') / 'mlflow.db'}"
    runs = [Run("base", s, {"val/mAP50": {1: 0.30 + s / 100, 2: 0.50 + s / 100, 3: 0.40},
                            "test/mAP50": {3: 0.45}, "train/loss": {1: 3.0 - s, 2: 2.0, 3: 1.5 - s / 10}})
            for s in range(3)]
    write_sweep(uri, "one", ["base"], runs)
    write_sweep(uri, "two", ["base"], runs[:1])
    return uri


def test_config_show_of_a_sweep_file_says_what_to_run_in_one_line(capsys):
    assert main(["config", "show", str(REPO / "sweeps" / "demo_ablation.yaml")]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln]
    assert len(err) == 1 and "this is a sweep file" in err[0] and "ssdlab sweep" in err[0] and "--dry-run" in err[0]


def test_an_unknown_top_level_sweep_key_gets_a_did_you_mean(tmp_path, capsys):
    import yaml
    sweep = yaml.safe_load((REPO / "sweeps" / "demo_ablation.yaml").read_text())
    sweep["experiment"] = str((REPO / "sweeps" / sweep["experiment"]).resolve())
    sweep["max_concurent"] = sweep.pop("max_concurrent", 2)
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(sweep))
    assert main(["sweep", str(path), "--dry-run"]) == 2
    assert "max_concurent" in (err := capsys.readouterr().err) and "did you mean 'max_concurrent'" in err


def test_runs_sorted_by_a_metric_shows_that_metric_as_a_column(store, capsys):
    assert main(["runs", "--sweep", "one", "--tracking-uri", store, "--sort", "train/loss"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "train/loss (latest)" in lines[0]
    losses = [float(ln.split()[-3]) for ln in lines[2:]]
    assert losses == sorted(losses) == [1.3, 1.4, 1.5]  # a loss sorts ascending, and is shown


def test_report_without_a_sweep_lists_the_sweeps_in_the_store(store, capsys):
    assert main(["report", "--tracking-uri", store]) == 2
    err = capsys.readouterr().err
    assert "which sweep?" in err and "one, two" in err


def test_a_dry_run_warns_when_the_sweep_state_exists(tmp_path, capsys):
    storage = tmp_path / "ray"
    (storage / "demo" / "trials").mkdir(parents=True)  # the demo ablation's name is `demo`
    (storage / "demo" / "trials" / "experiment_state-2026-12-02.json").write_text("{}")
    assert main(["sweep", str(REPO / "sweeps" / "demo_ablation.yaml"), "--dry-run", "--storage", str(storage)]) == 0
    err = capsys.readouterr().err
    assert "already holds a launch of this sweep" in err and "--resume" in err and "--restart" in err


def test_experiments_open_on_mlflow_s_model_training_view(tmp_path):
    from experiments.tracking.store import EXPERIMENT_KIND, ensure_store, experiment_id, mlflow_client
    from tests.support.stores import empty_store
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ensure_store(empty_store(uri))
    client = mlflow_client(uri)
    exp = client.get_experiment(experiment_id(client, "fresh", uri))
    assert exp.tags["mlflow.experimentKind"] == EXPERIMENT_KIND["mlflow.experimentKind"] == "custom_model_development"
    old = client.create_experiment("made-by-hand")  # an experiment the lab did not create gets it when used
    assert "mlflow.experimentKind" not in client.get_experiment(old).tags
    experiment_id(client, "made-by-hand", uri)
    assert client.get_experiment(old).tags["mlflow.experimentKind"] == "custom_model_development"


def test_closing_lines_name_the_best_trial_its_model_and_the_commands_to_look():
    from types import SimpleNamespace

    from ssdlab.commands.sweep import closing_lines
    spec = SimpleNamespace(name="demo-search", metric="val/mAP50", path=Path("sweeps/demo.yaml"),
                           file=SimpleNamespace(tracking=SimpleNamespace(uri="sqlite:///mlflow.db")))
    from experiments.schema import BestTrial
    result = SimpleNamespace(best=BestTrial("ab_00003", "r1", arm=None, seed=0, score=0.6123, reported=0.5871,
                                            model="demo-search/2"), stops={}, study="sqlite:////w/optuna.db")
    best, look = closing_lines(spec, result)
    assert best == ("best trial ab_00003 (seed 0): val/mAP50 0.6123, test/mAP50 0.5871; registered as demo-search/2 "
                    "(models:/demo-search@best)")
    assert look.startswith("look: ssdlab report --sweep demo-search   |   ssdlab ui") and \
        "ssdlab dashboard --study-storage sqlite:////w/optuna.db" in look


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dashboard_serves_a_study_and_sigterm_stops_it(tmp_path):
    """`ssdlab dashboard --study-storage URL` starts optuna-dashboard on 127.0.0.1, prints the URL once it
    answers, shows the study over its API, and stops with the server on SIGTERM."""
    import optuna

    from ssdlab.serve import listening

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="demo/search/abcdef12", storage=url, direction="maximize")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "ssdlab.cli", "dashboard", "--study-storage", url,
                             "--port", str(port)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert f"http://127.0.0.1:{port}" in line and listening(port), proc.stderr.read() if proc.poll() else line
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=10) as r:
            studies = json.load(r)["study_summaries"]
        assert [s["study_name"] for s in studies] == ["demo/search/abcdef12"]
        time.sleep(1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        deadline = time.time() + 10
        while listening(port) and time.time() < deadline:
            time.sleep(0.2)
        assert not listening(port)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_dashboard_of_a_sweep_without_a_study_says_why(tmp_path, capsys):
    assert main(["dashboard", str(REPO / "sweeps" / "demo_ablation.yaml")]) == 2
    assert "no search: section" in capsys.readouterr().err
    assert main(["dashboard", "--study-storage", f"sqlite:///{tmp_path / 'none.db'}"]) == 2
    assert "no Optuna study there yet" in capsys.readouterr().err


def test_a_search_storage_that_is_mlflow_s_database_is_refused(tmp_path):
    import yaml

    from experiments.sweep.study import study_url
    from experiments.sweep.validate import load_sweep
    from ssd_core.errors import ConfigError
    sweep = yaml.safe_load((REPO / "sweeps" / "demo.yaml").read_text())
    sweep["experiment"] = str((REPO / "sweeps" / sweep["experiment"]).resolve())
    sweep["tracking"] = {"uri": f"sqlite:///{tmp_path}/mlflow.db"}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(sweep))
    assert study_url(load_sweep(path), tmp_path / "ray") == f"sqlite:///{tmp_path}/optuna.db"  # beside it
    sweep["search"]["storage"] = f"sqlite:///{tmp_path}/./mlflow.db?timeout=5"
    path.write_text(yaml.safe_dump(sweep))
    with pytest.raises(ConfigError, match=r"search\.storage: .* is the MLflow store's database"):
        study_url(load_sweep(path), tmp_path / "ray")


def test_override_file_from_a_search_is_read_by_dash_o(tmp_path):
    from experiments.sweep.study import best_hyperparameters
    from ssd_core.config import parse_overrides
    text = best_hyperparameters({"train.lr": 0.0031234567891, "augment.photometric": False}, sweep="s",
                                phase="search", trial="t1", score=0.61, metric="val/mAP50")
    (tmp_path / "best.yaml").write_text(text)
    assert "-o augment.photometric=False -o train.lr=0.0031234567891" in text
    assert parse_overrides([f"@{tmp_path / 'best.yaml'}", "train.epochs=3"]) == \
        {"train.lr": 0.0031234567891, "augment.photometric": False, "train.epochs": 3}
    (tmp_path / "nested.yaml").write_text("train: {lr: 0.01}\n")
    assert parse_overrides([f"@{tmp_path / 'nested.yaml'}"]) == {"train.lr": 0.01}
    from ssd_core.errors import ConfigError
    with pytest.raises(ConfigError, match="override file .*missing.yaml"):
        parse_overrides([f"@{tmp_path / 'missing.yaml'}"])
