"""benchmarks/gpu_ablation.py, the device command, run on the CPU at tiny sizes: it trains the arms of
sweeps/bccd_converged.yaml (or a design's cumulative path) x seeds in packed processes with fit, bundles the
run dirs without checkpoints, and the bundle comes back through `ssdlab import` as a sweep whose report has
every arm and the deltas along the budget."""
from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from ssdlab.cli import main

pytest.importorskip("mlflow")
REPO = Path(__file__).resolve().parents[2]
ARMS = ["initial", "+photometric", "+sample_patch", "+zoom_out"]
FACTORIAL = ["baseline", "+photometric", "+photometric+sample_patch", "+photometric+sample_patch+zoom_out"]


def test_the_arms_are_the_converged_sweeps_on_its_base_recipe():
    from benchmarks.gpu_ablation import arms

    got = dict(arms())
    assert list(got) == ARMS
    assert all(o["train.epochs"] == 144 and o["eval.every_epochs"] == 4 and len(o["eval.test_at"]) == 6
               for o in got.values())
    assert not got["initial"]["augment.photometric"] and not got["initial"]["augment.sample_patch.enabled"]
    assert got["+sample_patch"]["augment.sample_patch.enabled"] and got["+sample_patch"]["augment.zoom_out.p"] == 0
    assert got["+zoom_out"]["augment.zoom_out.p"] == 0.5 and got["+zoom_out"]["augment.zoom_out.max"] == 4.0


def test_the_arms_of_a_design_are_its_cumulative_path_on_its_base_recipe():
    from benchmarks.gpu_ablation import arms

    got = arms(REPO / "sweeps" / "bccd_factorial.yaml")
    assert [a for a, _ in got] == FACTORIAL
    last = got[-1][1]
    assert last["augment.photometric"] and last["augment.sample_patch.enabled"] and last["augment.zoom_out.p"] == 0.5
    assert not got[0][1]["augment.photometric"] and got[0][1]["augment.zoom_out.p"] == 0.0
    assert all(o["model.output_stride"] == 16 for _, o in got)   # the sweep's own base recipe


def test_the_experiment_config_is_the_sweeps_own(tmp_path):
    from benchmarks.gpu_ablation import BCCD_CONFIG, experiment_config

    assert experiment_config(REPO / "sweeps" / "bccd_converged.yaml") == BCCD_CONFIG.resolve()
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "mine.yaml").write_text(BCCD_CONFIG.read_text())
    sweep = tmp_path / "s.yaml"
    sweep.write_text("name: s\nexperiment: configs/mine.yaml\narms: {a: {}}\n")
    assert experiment_config(sweep) == (tmp_path / "configs" / "mine.yaml").resolve()


def test_a_sweep_without_arms_or_design_is_refused_naming_the_file(tmp_path):
    from benchmarks.gpu_ablation import arms

    search = tmp_path / "search.yaml"   # a valid search sweep: nothing to train as arms
    search.write_text(f"name: s\nexperiment: {REPO / 'experiments' / 'configs' / 'bccd_mobilenet_v2.yaml'}\n"
                      "search: {num_samples: 2, space: {train.lr: {loguniform: [1.0e-4, 1.0e-2]}}}\n")
    with pytest.raises(SystemExit, match=r"search\.yaml: no `arms` or `design`"):
        arms(search)


def test_the_plan_packs_runs_and_projects_their_time():
    from types import SimpleNamespace

    from benchmarks.gpu_ablation import AGGREGATE_IT_S, per_run_it_s, plan

    assert per_run_it_s(1) == per_run_it_s(4) == AGGREGATE_IT_S / 4 and per_run_it_s(8) == AGGREGATE_IT_S / 8
    args = SimpleNamespace(arms_list=[("a", {}), ("b", {})], seeds=[0, 1, 2, 3, 4, 5], concurrency=4, epochs=None,
                           iterations=1500, every=4, deadline_s=540.0, test_at=[0.5, 1.0])
    p = plan(args, iters_per_epoch=25)
    assert (p["runs"], p["concurrent"], p["rounds"], p["epochs"], p["iterations"]) == (12, 4, 3, 60, 1500)
    assert p["memory_fraction"] == 0.25 and p["test_at"] == [0.5, 1.0]
    assert p["assumed_it_s_per_run"] == pytest.approx(AGGREGATE_IT_S / 4, abs=0.01)
    assert p["projected_s"] > 3 * 1500 / (AGGREGATE_IT_S / 4)


@pytest.mark.slow  # ~2 CPU-minutes: pytest -m slow tests/integration/test_gpu_ablation.py
def test_the_device_script_bundles_runs_that_import_and_report_as_a_sweep(tmp_path, capsys):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu_ablation", "--device", "cpu", "--quick",
                           "--out", str(out), "--seeds", "0", "1", "--epochs", "2", "--every", "1",
                           "--concurrency", "4"], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "8 runs, 4 at once (2 round(s))" in proc.stdout and "8/8 runs finished" in proc.stdout
    summary = json.loads((out / "gpu_ablation.json").read_text())
    assert len(summary["runs_done"]) == 8 and all(d["rc"] == 0 for d in summary["runs_done"].values())

    back = tmp_path / "back"
    with tarfile.open(out / "bccd_ablation_gpu.tar.gz") as tar:
        names = tar.getnames()
        assert not [n for n in names if n.endswith(".pt")]   # checkpoints stay on the device
        tar.extractall(back, filter="data")
    runs = sorted((back / "gpu_ablation" / "runs").iterdir())
    assert len(runs) == 8
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main(["import", *map(str, runs), "--sweep", "ablation-gpu", "--baseline", "initial",
                 "--tracking-uri", uri]) == 0
    assert "8 run(s) imported" in capsys.readouterr().out
    assert main(["report", "--sweep", "ablation-gpu", "--tracking-uri", uri, "--out", str(tmp_path / "rep"),
                 "--format", "md"]) == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    for arm in ARMS:
        assert f"| {arm} " in md or f"| `{arm}` " in md, arm
    budget = md[md.index("## Δ along the budget"):]
    for arm in ARMS:   # 2 epochs: the points 1/16 .. 1 fall on epochs 1 and 2, i.e. budget 0.5 and 1
        for fraction in ("0.5", "1"):
            assert f"| {arm} | {fraction} | 2 |" in budget, (arm, fraction)
