"""Sequential seeding (experiments/sequential.py): its false-decision rate by simulation next to the naive
rule's, the seeds it saves on a clear delta, the waves it plans, and a real sweep (local Ray, MLflow sqlite)
whose driver is killed in its second wave and resumed."""
from __future__ import annotations

import json
import math
import signal
import subprocess
import sys

import numpy as np
import pytest

from experiments.sequential import Waves, look_levels, looks, spent
from experiments.stats import paired_delta

START, MAX, STEP = 2, 8, 2
SD_SEED, SD_DIFF = 0.05, 0.03  # per-seed baseline spread; spread of the paired differences


def simulate(delta: float, sweeps: int, rule: str, seed: int = 0) -> tuple[float, float]:
    """(share of sweeps that declare a non-zero delta, mean seeds per arm) over `sweeps` simulated sequential
    sweeps of one arm against a baseline. rule "ours": Waves (alpha spent over the looks); "naive": an
    ordinary 95% paired t re-tested after every wave, stopping when it excludes 0."""
    rng = np.random.default_rng(seed)
    declared, used = 0, []
    for _ in range(sweeps):
        base = 0.5 + rng.normal(0, SD_SEED, MAX)
        scores = {("base", s): base[s] for s in range(MAX)}
        scores.update({("arm", s): base[s] + delta + rng.normal(0, SD_DIFF) for s in range(MAX)})
        if rule == "ours":
            w = Waves(["base", "arm"], START, MAX, STEP)
            for k in range(len(w.plan)):
                if not w.open_arms():
                    break
                w.look(k, scores)
            d = w.decisions["arm"]
            declared += d.reason == "decided"
            used.append(d.seeds)
        else:
            for n in looks(START, MAX, STEP):
                t = paired_delta({s: scores[("arm", s)] for s in range(n)}, {s: scores[("base", s)] for s in range(n)})
                if t.low > 0 or t.high < 0 or n == MAX:
                    declared += t.low > 0 or t.high < 0
                    used.append(n)
                    break
    return declared / sweeps, float(np.mean(used))


def test_spending_shares_sum_to_alpha_and_grow_with_information():
    plan = looks(START, MAX, STEP)
    assert plan == [2, 4, 6, 8] and looks(2, 7, 2) == [2, 4, 6, 7] and looks(3, 3, 1) == [3]
    for kind in ("pocock", "obrien_fleming"):
        levels = look_levels(plan, 0.05, kind)
        assert sum(levels) == pytest.approx(0.05) and all(a > 0 for a in levels)
    assert spent(0.25, 0.05, "pocock") == pytest.approx(0.05 * math.log(1 + (math.e - 1) * 0.25))
    from scipy import stats as sps
    assert spent(0.25, 0.05, "obrien_fleming") == pytest.approx(2 - 2 * sps.norm.cdf(1.959964 / 0.5), rel=1e-5)
    ob = look_levels(plan, 0.05, "obrien_fleming")
    assert ob[0] < 1e-3 < ob[-1]  # O'Brien-Fleming keeps the early looks strict


def test_false_decisions_stay_at_alpha_where_re_testing_inflates_them():
    sweeps = 4000
    se = math.sqrt(0.05 * 0.95 / sweeps)
    ours, ours_seeds = simulate(0.0, sweeps, "ours", seed=1)
    naive, _ = simulate(0.0, sweeps, "naive", seed=1)
    clear, clear_seeds = simulate(0.06, 1000, "ours", seed=2)
    print(f"\ntrue delta 0, {sweeps} sweeps (looks at {looks(START, MAX, STEP)} seeds): false decisions "
          f"{ours:.4f} (alpha spent over the looks) vs {naive:.4f} (95% t re-tested after each wave); "
          f"true delta 0.06 (2 x the sd of the paired differences): decided in {clear:.3f} of sweeps with "
          f"{clear_seeds:.2f} seeds per arm on average against {MAX} for the fixed design")
    assert ours <= 0.05 + 3 * se
    assert naive > 0.05 + 3 * se  # so the test can fail: peeking without spending inflates the error
    assert ours_seeds > 7.5  # with no effect almost every sweep runs to max
    assert clear > 0.8 and clear_seeds < 0.8 * MAX


def test_waves_train_the_open_arms_with_the_baseline_on_new_seeds_only():
    w = Waves(["base", "big", "same"], start=2, maximum=4, step=1)
    assert w.wave(0) == [(a, s) for a in ("base", "big", "same") for s in (0, 1)]
    # big's paired differences 0.10, 0.12, 0.11, ...: t = 11 at 2 seeds (its look needs 20.5 with 1 degree of
    # freedom at alpha_1 = 0.031), t = 19 at 3 (needs 9.7); same's differences change sign
    diff = {"base": [0, 0, 0, 0], "big": [0.10, 0.12, 0.11, 0.1], "same": [0.01, -0.01, 0.02, -0.02]}
    scores = {(a, s): 0.5 + 0.03 * s + diff[a][s] for a in diff for s in range(4)}
    w.look(0, scores)
    assert w.open_arms() == ["big", "same"]  # 2 seeds: 1 degree of freedom, nothing decided yet
    assert w.wave(1) == [("base", 2), ("big", 2), ("same", 2)]
    w.look(1, scores)
    assert w.decisions["big"].reason == "decided" and w.decisions["big"].seeds == 3
    assert w.wave(2) == [("base", 3), ("same", 3)]
    w.look(2, scores)
    assert w.decisions["same"].reason == "max" and w.wave(3) == [] and w.open_arms() == []
    capped = Waves(["base", "arm"], 2, 8, 2, max_device_hours=1.0)
    capped.look(0, {(a, s): 0.5 + 0.01 * s for a in ("base", "arm") for s in range(2)}, spent_hours=0.6, next_hours=0.6)
    assert capped.decisions["arm"].reason == "cap" and capped.wave(1) == []
    wide = Waves(["base", "arm"], 2, 8, 2, width=10.0)
    wide.look(0, {("base", 0): 0.5, ("base", 1): 0.6, ("arm", 0): 0.52, ("arm", 1): 0.6})
    assert wide.decisions["arm"].reason == "width"


KILL_IN_WAVE_2 = """
import os, signal, sys
sys.path.insert(0, sys.argv[1])
from tests.support.fake_fit import tiny_fit
from experiments.sweep import callback
from experiments.sweep.driver import run_sweep
from experiments.sweep.validate import load_sweep
log = callback.MLflowTuneCallback._log_result
def hooked(self, trial, epoch, metrics, *rest):
    if self.phase.dirname == "wave-01" and epoch >= 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return log(self, trial, epoch, metrics, *rest)
callback.MLflowTuneCallback._log_result = hooked
run_sweep(load_sweep(sys.argv[2]), tiny_fit, address=sys.argv[3], storage=sys.argv[4])
"""


def test_a_sequential_sweep_runs_its_waves_and_resumes_them_after_a_killed_driver(ray_session, tmp_path):
    """3 arms, seeds {start: 2, max: 4, step: 1}: `big` (+0.01 per epoch of lr) is decided at its second look,
    `same` runs to max; the driver dies in wave 2 and `--resume` finishes it: one run per (arm, seed), no seed
    trained twice, the parent records each arm's seeds and reason, the report says them."""
    from experiments.schema import Tag
    from experiments.sweep.driver import run_sweep
    from experiments.sweep.validate import load_sweep
    from tests.support.fake_fit import REPO, runs_of, write_sweep

    path = write_sweep(tmp_path, {
        "name": "seq", "arms": {"base": {}, "big": {"overrides": {"train.lr": 0.02}}, "same": {}},
        "overrides": {"train.epochs": 3, "data.test_sets": ["S/test"]},
        "seeds": {"start": 2, "max": 4, "step": 1}, "resources": {"cpu": 1},
    }, store=True)
    spec = load_sweep(path)
    storage = tmp_path / "ray"
    killed = subprocess.run([sys.executable, "-c", KILL_IN_WAVE_2, str(REPO), str(path), ray_session, str(storage)],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert "look 1 of 3 (2 seeds)" in killed.stdout and "wave 2 trains 3 trials (seeds 2-2)" in killed.stdout
    result = run_sweep(spec, __import__("tests.support.fake_fit", fromlist=["tiny_fit"]).tiny_fit, resume=True,
                       storage=storage)
    client, parents, children = runs_of(spec.file.tracking.uri, "seq")
    trained = sorted((r.data.tags[Tag.ARM], int(r.data.tags[Tag.SEED])) for r in children)
    assert trained == sorted([(a, s) for a in ("base", "big", "same") for s in (0, 1, 2)] + [("base", 3), ("same", 3)])
    assert all(r.data.tags[Tag.STATUS] == "finished" for r in children) and result.counts == {"finished": 11}
    summary = json.loads(parents[0].data.tags[Tag.SEQUENTIAL])
    assert summary["looks"] == [2, 3, 4] and summary["open"] == [] and summary["looked"] == 3
    assert {a: (d["seeds"], d["reason"]) for a, d in summary["arms"].items()} == {"big": (3, "decided"),
                                                                                  "same": (4, "max")}
    assert json.loads((storage / "seq" / "sequential.json").read_text()) == summary
    from reports.report import build_report
    report = build_report("seq", spec.file.tracking.uri, with_plots=False)
    seq = next(t for t in report.tables if t.name == "sequential")
    assert [r[:3] for r in seq.rows] == [["big", "3", "decided (the interval excludes 0)"], ["same", "4", "max seeds"]]


def test_a_wave_with_failed_trials_launches_no_further_wave(ray_session, tmp_path, capsys):
    """An arm whose trials fail (a non-finite loss, after retries) would fail the same way with more seeds:
    the sweep stops after that wave instead of training the next one (which an undecided look asks for)."""
    from experiments.sweep.driver import run_sweep
    from experiments.sweep.validate import load_sweep
    from tests.support.fake_fit import runs_of, tiny_fit, write_sweep

    path = write_sweep(tmp_path, {
        "name": "failing", "arms": {"base": {}, "nan": {"overrides": {"train.lr": 0.6}}},
        "overrides": {"train.epochs": 2, "data.test_sets": ["S/test"]},
        "seeds": {"start": 2, "max": 4, "step": 2}, "resources": {"cpu": 1},
    }, store=True)
    result = run_sweep(load_sweep(path), tiny_fit, storage=tmp_path / "ray")
    assert result.counts == {"failed": 2, "finished": 2} and len(result.failures) == 2
    assert "2 trial(s) of wave 1 failed: no further wave" in capsys.readouterr().out
    assert len(runs_of(load_sweep(path).file.tracking.uri, "failing")[2]) == 4   # wave 1 only
    assert not (tmp_path / "ray" / "failing" / "wave-01").exists()
