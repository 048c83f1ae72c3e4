"""ssdlab import (experiments/tracking/importer.py): run dirs trained outside Ray become a sweep whose report is the
one the same trainings give when a sweep ran them; bad run dirs are named and skipped; importing is idempotent."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from ssd_core.config import to_yaml
from ssdlab.cli import main
from tests.support.configs import tiny_config
from tests.support.stores import empty_store

pytest.importorskip("ray")


def _sweep(tmp_path: Path) -> Path:
    base = tiny_config(tmp_path / "data", tmp_path / "out", epochs=2)
    (tmp_path / "base.yaml").write_text(to_yaml(base))
    sweep = {"name": "ran", "experiment": "base.yaml", "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
             "arms": {"base": {"note": "the tiny recipe"}, "slow": {"note": "lr / 3", "overrides": {"train.lr": 1e-3}}},
             "seeds": [0, 1], "resources": {"cpu": 1}, "max_concurrent": 2}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    empty_store(sweep["tracking"]["uri"])  # the store is there (tests/support/stores.py): the import is the subject
    return path


def test_imported_run_dirs_report_as_the_sweep_that_trained_them(ray_session, tmp_path, capsys):
    from experiments.sweep.driver import run_sweep
    from experiments.sweep.validate import load_sweep
    from reports.report import build_report

    spec = load_sweep(_sweep(tmp_path))
    run_sweep(spec, storage=tmp_path / "ray", progress=False)
    uri = spec.file.tracking.uri
    dirs = sorted(d for d in (tmp_path / "ray" / "ran" / "trials").iterdir() if (d / "metrics.jsonl").is_file())
    assert len(dirs) == 4  # the trials' run dirs (beside Ray's own trial folders)
    # the run dirs under other names (a SLURM array's output folders), arms named by their config's lr
    copies = []
    for i, d in enumerate(dirs):
        copies.append(tmp_path / "slurm" / f"job-{i}")
        shutil.copytree(d, copies[-1], ignore=shutil.ignore_patterns("last.pt", ".*"))
    bad = tmp_path / "bad"
    (bad / "empty").mkdir(parents=True)
    (bad / "a-file").write_text("x")
    cut = bad / "cut"
    shutil.copytree(copies[0], cut)
    text = (cut / "metrics.jsonl").read_text()
    (cut / "metrics.jsonl").write_text(text[: len(text) - 40])   # the last line cut by a kill
    unfinished = bad / "unfinished"
    shutil.copytree(copies[1], unfinished)
    (unfinished / "metrics.jsonl").write_text(text.splitlines()[0] + "\n")  # epoch 1 of 2

    args = ["import", *map(str, copies), *(str(bad / n) for n in ("empty", "a-file", "cut", "unfinished")),
            "--sweep", "imported", "--arm-from", "train.lr", "--baseline", "train.lr=0.003", "--tracking-uri", uri]
    assert main(args) == 1
    out, err = capsys.readouterr()
    assert "4 run(s) imported, 0 already there, 4 skipped" in out
    skipped = [ln for ln in err.splitlines() if ln.startswith("ssdlab import: skipped")]
    assert len(skipped) == 4
    assert any(str(bad / "empty" / "config.yaml") in ln and "missing" in ln for ln in skipped)
    assert any(str(bad / "a-file") in ln and "not a run dir" in ln for ln in skipped)
    assert any(str(cut / "metrics.jsonl") in ln and "not JSON" in ln for ln in skipped)
    assert any(str(unfinished / "metrics.jsonl") in ln and "epoch 1 of 2" in ln for ln in skipped)

    ran, imported = build_report("ran", uri, with_plots=False), build_report("imported", uri, with_plots=False)
    tables = lambda r: {t.name: t for t in r.sections if hasattr(t, "rows")}  # noqa: E731
    a, b = tables(ran), tables(imported)
    assert {"summary", "ablation", "per_class", "trials"} <= set(a) and set(a) == set(b)
    names = {"base": "train.lr=0.003", "slow": "train.lr=0.001"}
    rename = lambda rows: [[names.get(c, c) for c in row] for row in rows]  # noqa: E731
    assert [r[:3] for r in rename(a["summary"].rows)] == [r[:3] for r in b["summary"].rows]  # (imports have no notes)
    for name in ("ablation", "per_class"):
        assert rename(a[name].rows) == b[name].rows, name
    same = [[r[0], r[1], r[3], r[4], r[5], r[6]] for r in a["trials"].rows]  # all but the trial id
    assert rename(same) == [[r[0], r[1], r[3], r[4], r[5], r[6]] for r in b["trials"].rows]

    assert main(args[:5] + ["--sweep", "imported", "--arm-from", "train.lr", "--tracking-uri", uri]) == 0  # again
    assert "0 run(s) imported, 4 already there, 0 skipped" in capsys.readouterr().out
    from tests.support.fake_fit import runs_of
    _, parents, children = runs_of(uri, "imported")
    assert len([p for p in parents if p.data.tags["ssdlab.sweep"] == "imported"]) == 1
    assert len([c for c in children if c.data.tags["ssdlab.sweep"] == "imported"]) == 4
