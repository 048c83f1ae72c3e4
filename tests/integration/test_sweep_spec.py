"""Sweep files: validation before anything starts, the trial plan, the Optuna space. No Ray."""
from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import yaml

from experiments.schema import grid_points, parse_space
from experiments.sweep.plan import describe, parent_tags, plan
from experiments.sweep.tuner import DefineByRun, make_sampler
from experiments.sweep.validate import load_sweep
from ssd_core.config import flatten
from ssd_core.errors import ConfigError
from ssdlab.cli import main

REPO = Path(__file__).resolve().parents[2]

BASE = {"name": "tiny", "train": {"epochs": 6}, "data": {"train_sets": ["S/train"], "val_sets": ["S/val"]}}
GOOD = {
    "name": "s1",
    "experiment": "base.yaml",
    "overrides": {"train.batch_size": 8},
    "search": {"sampler": "tpe", "num_samples": 5, "metric": "val/mAP50", "mode": "max", "seed": 3,
               "space": {"train.lr": {"loguniform": [1.0e-4, 1.0e-2]},
                         "augment.photometric": {"choice": [True, False]},
                         "augment.zoom_out.p": {"uniform": [0.0, 0.8], "when": {"augment.photometric": True}},
                         "train.batch_size": {"int": [4, 16]}}},
    "scheduler": {"asha": {"grace_period": 2, "reduction_factor": 3}},
    "arms": {"initial": {"note": "first", "overrides": {"augment.sample_patch.enabled": False}},
             "+augment": {"note": "sample patch", "overrides": {}}},
    "seeds": [0, 1, 2],
    "resources": {"cpu": 4, "gpu": 0.5},
    "max_concurrent": 8,
    "failure": {"max_failures": 2},
    "tracking": {"uri": "sqlite:///mlflow.db", "experiment": "e1", "log_checkpoints": True},
}


def write(tmp_path: Path, sweep: dict, name: str = "sweep.yaml") -> Path:
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(BASE))
    path = tmp_path / name
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    return path


def with_(changes: dict) -> dict:
    """GOOD with dotted-path changes; a value of ... deletes the key."""
    out = json.loads(json.dumps(GOOD))
    for dotted, value in changes.items():
        *parents, last = dotted.split("/")
        node = out
        for p in parents:
            node = node[p]
        if value is ...:
            del node[last]
        else:
            node[last] = value
    return out


def test_good_sweep_and_its_plan(tmp_path):
    spec = load_sweep(write(tmp_path, GOOD))
    assert spec.name == "s1" and spec.metric == "val/mAP50" and not hasattr(spec, "mode")
    assert spec.base.train.batch_size == 8 and spec.arm_names == ["initial", "+augment"]
    phases = plan(spec)
    # arms + search: a search per arm (seed 0), then its best config with seeds 1, 2
    assert [(p.kind, p.arm, p.num_samples) for p in phases] == [
        ("search", "initial", 5), ("confirm", "initial", 1), ("search", "+augment", 5), ("confirm", "+augment", 1)]
    assert [p.dirname for p in phases] == ["00-initial-search", "00-initial-confirm", "01-_augment-search",
                                           "01-_augment-confirm"]
    assert phases[0].trials == [{"arm": "initial", "seed": 0}]
    assert phases[1].trials == [{"arm": "initial", "seed": 1}, {"arm": "initial", "seed": 2}]
    cfg = spec.trial_config("initial", 2, {"train.lr": 0.005})
    assert (cfg.train.seed, cfg.train.lr, cfg.augment.sample_patch.enabled, cfg.train.batch_size) == (2, 0.005, False, 8)
    tags = parent_tags(spec)
    assert json.loads(tags["ssdlab.arms"]) == ["initial", "+augment"] and tags["ssdlab.baseline_arm"] == "initial"
    assert json.loads(tags["ssdlab.search_space"]) == GOOD["search"]["space"] and "ssdlab.mode" not in tags
    text = describe(spec)
    assert "trials: 14;" in text and "cpu=4 gpu=0.5" in text and "ASHA" in text


def test_arms_only_plan_is_arms_times_seeds(tmp_path):
    spec = load_sweep(write(tmp_path, with_({"search": ..., "scheduler": "none"})))
    (phase,) = plan(spec)
    assert phase.kind == "grid" and phase.dirname == "trials"
    assert phase.trials == [{"arm": a, "seed": s} for a in ("initial", "+augment") for s in (0, 1, 2)]
    assert spec.asha is None and "early stopping: none" in describe(spec)


def test_search_only_with_one_seed_has_no_confirm_phase(tmp_path):
    spec = load_sweep(write(tmp_path, with_({"arms": ..., "seeds": [7]})))
    (phase,) = plan(spec)
    assert (phase.kind, phase.arm, phase.trials, phase.dirname) == ("search", None, [{"arm": None, "seed": 7}], "search")


@pytest.mark.parametrize("changes, key", [
    ({"bogus": 1}, "bogus: unknown key"),
    ({"search/bogus": 1}, "search.bogus: unknown key"),
    ({"search/sampler": "cmaes"}, "search.sampler"),
    ({"overrides": {"train.lrr": 0.1}}, "overrides.train.lrr: not a config key (did you mean 'train.lr'?)"),
    ({"overrides": {"train.lr": -1}}, "overrides: the resulting config is invalid"),
    ({"search/space/train.lrr": {"uniform": [0, 1]}}, "search.space.train.lrr: not a config key"),
    ({"search/space/train.lr": {"loguniform": [0.0, 0.1]}}, "search.space.train.lr.loguniform: low 0.0 must be > 0"),
    ({"search/space/train.lr": {"uniform": [0.1, 0.01]}}, "search.space.train.lr.uniform: low 0.1 must be below high"),
    ({"search/space/train.lr": {"uniform": [0.1]}}, "search.space.train.lr.uniform: expected [low, high]"),
    ({"search/space/augment.zoom_out.p": {"uniform": [0.0, 1.5]}}, "search.space.augment.zoom_out.p.uniform"),
    ({"search/space/train.lr": {"normal": [0, 1]}}, "search.space.train.lr: expected exactly one of"),
    ({"search/space/train.batch_size": {"int": [4.5, 16]}}, "search.space.train.batch_size.int: expected integer"),
    ({"search/space/augment.photometric": {"choice": []}}, "search.space.augment.photometric.choice: expected a non-empty"),
    ({"search/space/augment.zoom_out.p": {"uniform": [0, 0.5], "when": {"train.batch_size": 8}}},
     "search.space.augment.zoom_out.p.when.train.batch_size: refers to a parameter sampled later"),
    ({"search/space/augment.zoom_out.p": {"uniform": [0, 0.5], "when": {"train.nope": 8}}},
     "search.space.augment.zoom_out.p.when.train.nope: not a config key"),
    ({"search/sampler": "grid"}, "search.space.train.lr: the grid sampler takes choice and int parameters only"),
    ({"search/sampler": "grid", "search/space": {"augment.flip": {"choice": [True]}, "train.batch_size": {"int": [4, 8], "when": {"augment.flip": True}}}},
     "search.space.train.batch_size.when: the grid sampler takes no conditional"),
    ({"arms/initial/overrides": {"augment.zoom_out.q": 1}}, "arms.initial.overrides.augment.zoom_out.q: not a config key"),
    ({"arms/initial/overrides": {"train.epochs": 0}}, "arms.initial.overrides: the resulting config is invalid"),
    ({"arms/initial/colour": "red"}, "arms.initial.colour: unknown key"),
    ({"arms": {}}, "arms: empty"),
    ({"arms/bad name": {}}, "arms.bad name: arm names use"),
    ({"seeds": []}, "seeds: empty"),
    ({"seeds": [1, 1]}, "seeds: [1, 1] repeats a seed"),
    ({"resources/gpu": 1.5}, "resources.gpu: 1.5: fractions are for one GPU"),
    ({"resources/cpu": 0}, "resources.cpu"),
    ({"scheduler/asha/grace_period": 7}, "scheduler.asha.grace_period: 7 exceeds max_t 6"),
    ({"scheduler/asha/reduction_factor": 1}, "scheduler.asha.reduction_factor"),
    ({"failure/max_failures": -1}, "failure.max_failures"),
    ({"experiment": "missing.yaml"}, "experiment: base config"),
    ({"name": "a b"}, "name: 'a b'"),
    ({"metric": "val/loss"}, "search.metric: 'val/mAP50' disagrees with the top-level metric 'val/loss'"),
    ({"name": ...}, "name: Field required"),
    ({"search/metric": "val/mAP50_area"}, "search.metric: 'val/mAP50_area': sweeps select on the config's "
                                          "selection metric 'val/mAP50'"),
    ({"search/metric": "test/mAP50"}, "search.metric: 'test/mAP50'"),
    ({"search/mode": "min"}, "search.mode: 'min'"),
    ({"overrides": {"data.val_sets": []}}, "search: a search or early stopping chooses on the validation split, "
                                           "and the config of arm initial has none"),
])
def test_bad_sweeps_name_the_file_and_the_key(tmp_path, changes, key):
    path = write(tmp_path, with_(changes))
    with pytest.raises(ConfigError) as err:
        load_sweep(path)
    assert str(path) in str(err.value) and key in str(err.value)


def test_grid_sampler_takes_choice_and_int_only(tmp_path):
    space = {"train.batch_size": {"int": [4, 5]}, "augment.flip": {"choice": [True, False]}}
    spec = load_sweep(write(tmp_path, with_({"search/sampler": "grid", "search/space": space, "search/num_samples": ...})))
    assert plan(spec)[0].num_samples == 4 == len(grid_points(parse_space(space)))
    sampler = make_sampler(spec.file.search)
    assert isinstance(sampler, optuna.samplers.GridSampler)
    bad = with_({"search/sampler": "grid", "search/space": {"train.lr": {"uniform": [0.1, 0.2]}}})
    with pytest.raises(ConfigError, match="search.space.train.lr: the grid sampler takes choice and int"):
        load_sweep(write(tmp_path, bad))
    too_many = with_({"search/sampler": "grid", "search/space": space, "search/num_samples": 5})
    with pytest.raises(ConfigError, match="search.num_samples: 5 exceeds the grid size 4"):
        load_sweep(write(tmp_path, too_many))


def test_define_by_run_space_is_conditional_and_seeded(tmp_path):
    spec = load_sweep(write(tmp_path, GOOD))
    space = spec.file.search.space

    def sample(seed):
        study = optuna.create_study(direction="maximize", sampler=make_sampler(spec.file.search))
        fn = DefineByRun(parse_space(space), flatten(spec.base))
        out = []
        for _ in range(12):
            trial = study.ask()
            fn(trial)
            out.append(dict(trial.params))
            study.tell(trial, 0.0)
        return out

    first = sample(3)
    assert first == sample(3)  # seeded sampler: the same trials again
    for params in first:
        assert 1e-4 <= params["train.lr"] <= 1e-2 and 4 <= params["train.batch_size"] <= 16
        assert ("augment.zoom_out.p" in params) == params["augment.photometric"]
    assert {p["augment.photometric"] for p in first} == {True, False}
    # a `when` key that is not sampled reads the arm's config value
    fn = DefineByRun(parse_space({"train.lr": {"uniform": [0.1, 0.2], "when": {"augment.flip": False}}}),
                     {"augment.flip": True})
    trial = optuna.create_study().ask()
    fn(trial)
    assert trial.params == {}


def test_cli_dry_run_and_exit_code_2(tmp_path, capsys):
    good = write(tmp_path, GOOD)
    assert main(["sweep", str(good), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "phase 00-initial-search: Optuna tpe search (seed 3), 5 trials in arm initial" in out
    bad = write(tmp_path, with_({"overrides": {"nope.key": 1}}), "bad.yaml")
    assert main(["sweep", str(bad), "--dry-run"]) == 2
    assert f"{bad}: overrides.nope.key: not a config key" in capsys.readouterr().err


@pytest.mark.parametrize("path", sorted((REPO / "sweeps").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_sweep_files_validate(path):
    spec = load_sweep(path)
    assert plan(spec) and spec.file.tracking.uri.startswith("sqlite:///")
    if spec.file.name == "demo-search":
        assert spec.file.search.num_samples >= 8 and spec.asha is not None
    if spec.file.name == "demo":  # `make demo`: an ablation of 3 cumulative arms, seeds until decided, equal budget
        assert len(spec.arm_names) >= 3 and spec.sequential.max >= 4 and spec.asha is None
        assert spec.base.eval.test_at[-1] == 1.0 and len(spec.base.eval.test_at) >= 3


def test_resume_refuses_a_changed_base_config(tmp_path):
    from experiments.sweep.guards import SNAPSHOT, check_snapshot

    storage = tmp_path / "ray" / "s1"
    check_snapshot(load_sweep(write(tmp_path, GOOD)), storage, resume=False)  # the launch records it
    assert (storage / SNAPSHOT).is_file()
    check_snapshot(load_sweep(write(tmp_path, GOOD)), storage, resume=True)  # unchanged: fine
    path = write(tmp_path, GOOD)
    (tmp_path / "base.yaml").write_text(yaml.safe_dump({**BASE, "train": {"epochs": 8}}))
    with pytest.raises(ConfigError, match=r"experiment: changed since this sweep started .* train.epochs"):
        check_snapshot(load_sweep(path), storage, resume=True)
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(BASE))
    with pytest.raises(ConfigError, match=r"<sweep>: changed since .* differing keys: max_concurrent"):
        check_snapshot(load_sweep(write(tmp_path, with_({"max_concurrent": 2}))), storage, resume=True)


def test_resume_refuses_the_state_of_an_older_version_in_one_line(tmp_path, capsys):
    """A sweep launched before the sweep and tracking packages existed: Tune's pickled state names modules
    (experiments.trial, experiments.callback) this version does not have. `--resume` says so in one line and
    points at --restart, before Ray starts; no shim unpickles the old layout."""
    import json

    from experiments.sweep.guards import SNAPSHOT, STATE_VERSION, check_snapshot
    from ssdlab.cli import main

    path = write(tmp_path, GOOD)
    storage = tmp_path / "ray"
    check_snapshot(load_sweep(path), storage / "s1", resume=False)
    snap = json.loads((storage / "s1" / SNAPSHOT).read_text())
    assert snap["state_version"] == STATE_VERSION
    del snap["state_version"]  # what every launch before the packages wrote
    (storage / "s1" / SNAPSHOT).write_text(json.dumps(snap))
    with pytest.raises(ConfigError, match=r"launched by an older ssdlab \(state version 1, this one reads 2\).*--restart"):
        check_snapshot(load_sweep(path), storage / "s1", resume=True)
    assert main(["sweep", str(path), "--resume", "--storage", str(storage)]) == 2
    err = capsys.readouterr().err
    said = [line for line in err.splitlines() if "older ssdlab" in line]  # (MLflow may log the new store first)
    assert len(said) == 1 and "--restart" in said[0] and "Traceback" not in err, err


def test_restart_archives_the_old_launch_and_keeps_its_runs(tmp_path):
    """`ssdlab sweep --restart` (make demo runs it twice in a row): the old Ray state moves aside, the old
    parent run stays in MLflow but points at the moved folder, so the next launch gets a parent of its own."""
    from experiments.sweep.guards import archive_sweep
    from experiments.tracking.store import client_for, ensure_store, experiment_id
    from experiments.tracking.writer import find_run

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = load_sweep(write(tmp_path, with_({"tracking/uri": uri})))
    storage = tmp_path / "ray" / spec.name
    assert archive_sweep(spec, storage) is None  # nothing launched yet: nothing to move
    (storage / "search").mkdir(parents=True)
    (storage / "search" / "state.json").write_text("{}")
    from tests.support.stores import empty_store

    ensure_store(empty_store(uri))
    client = client_for(uri)
    exp = experiment_id(client, spec.experiment_name, uri)
    ident = {"ssdlab.kind": "sweep", "ssdlab.sweep": spec.name, "ssdlab.storage": str(storage)}
    old = client.create_run(exp, tags=ident)

    moved = archive_sweep(spec, storage)

    assert not storage.exists() and (moved / "search" / "state.json").is_file()
    assert moved.name.startswith(f"{spec.name}.")
    assert find_run(client, exp, ident) is None  # a new launch will not reuse the old parent
    assert client.get_run(old.info.run_id).data.tags["ssdlab.storage"] == str(moved)


SEQ = {"start": 2, "max": 6, "step": 2}


@pytest.mark.parametrize("changes, key, message", [
    ({"seeds": {**SEQ, "max": 1}}, "seeds.max", "greater than or equal to 2"),
    ({"seeds": {**SEQ, "start": 4, "max": 3}}, "seeds.max", "below seeds.start 4"),
    ({"seeds": SEQ}, "seeds", "takes arms and no search"),
    ({"seeds": SEQ, "search": ..., "scheduler": ..., "arms": {"only": {}}}, "seeds", "a baseline arm and at least one"),
    ({"seeds": {**SEQ, "until": "width"}}, "seeds.until", "'decided'"),
    ({"seeds": {**SEQ, "spending": "bonferroni"}}, "seeds.spending", "pocock"),
])
def test_sequential_seeds_are_validated_naming_the_key(tmp_path, changes, key, message):
    with pytest.raises(ConfigError) as err:
        load_sweep(write(tmp_path, with_(changes)))
    assert f"{key}: " in str(err.value) and message in str(err.value)


def test_sequential_plan_is_the_first_wave_and_the_dry_run_says_the_looks(tmp_path):
    spec = load_sweep(write(tmp_path, with_({"seeds": SEQ, "search": ..., "scheduler": ...})))
    assert spec.sequential.start == 2 and spec.seeds == [0, 1, 2, 3, 4, 5]
    (phase,) = plan(spec)
    assert phase.dirname == "wave-00" and phase.trials == [{"arm": a, "seed": s} for a in ("initial", "+augment")
                                                          for s in (0, 1)]
    text = describe(spec)
    assert "sequential seeding: looks at [2, 4, 6] seeds; alpha 0.05 spent pocock-type" in text
    assert "later waves: up to 8 more trials" in text
    assert json.loads(parent_tags(spec)["ssdlab.seeds"]) == [0, 1, 2, 3, 4, 5]
