"""Hostile input to the `ssdlab` CLI: each case exits with its documented code (ssdlab/cli.py) and
one line naming the file and the key or object, no traceback, and nothing new on disk.

The table runs `ssdlab.cli.main` in-process (fast); a closed output pipe needs a real process.
Also here: the sweep's exit status when trials failed, and the trial counts of a stopped phase.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import yaml

from ssdlab.cli import EXIT_BROKEN_PIPE, EXIT_FAILED, main

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "experiments" / "configs" / "demo_shapes.yaml"
BASE = {"name": "tiny", "train": {"epochs": 2, "lr": 0.01}, "output": {"dir": "out"},
        "data": {"train_sets": ["S/train"], "val_sets": ["S/val"]}}


class Files:
    """Writes the inputs of one case into its own folder (the test's cwd) and names them."""

    def __init__(self, root: Path):
        self.root = root

    def raw(self, name: str, data: bytes) -> str:
        (self.root / name).write_bytes(data)
        return name

    def yaml(self, name: str, data) -> str:
        (self.root / name).write_text(yaml.safe_dump(data, sort_keys=False))
        return name

    def json(self, name: str, data) -> str:
        (self.root / name).write_text(json.dumps(data))
        return name

    def config(self, **sections) -> str:
        data = json.loads(json.dumps(BASE))
        for key, value in sections.items():
            data.setdefault(key, {}).update(value)
        return self.yaml("base.yaml", data)

    def sweep(self, name: str = "s.yaml", drop: tuple = (), **keys) -> str:
        self.config()
        data = {"name": "hostile", "experiment": "base.yaml", "arms": {"a": {}}, "seeds": [0],
                "tracking": {"uri": f"sqlite:///{self.root / 'mlflow.db'}"}, **keys}
        for key in drop:
            data.pop(key)
        return self.yaml(name, data)

    def image(self, name: str = "img.jpg") -> str:
        from PIL import Image

        Image.new("RGB", (32, 24), (200, 30, 30)).save(self.root / name)
        return name

    def pickled_object(self, name: str = "evil.pt") -> str:
        import torch

        class Payload:  # harmless if ever run, but no weights-only loader may run it
            def __reduce__(self):
                return (os.getcwd, ())

        torch.save({"model": Payload(), "config": {}, "class_names": []}, self.root / name)
        return name


@dataclass
class Case:
    name: str
    argv: Callable[[Files], list]
    code: int
    expect: str          # a substring of the one error line ("" for none)
    where: str = ""      # what the line must name besides: the file, the key or the object


def bomb(levels: int = 9) -> str:
    """A YAML value that expands to 9^levels items through aliases (defined inline, in document order)."""
    parts = ["&a0 [" + ", ".join(["lol"] * 9) + "]"]
    parts += [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "[" + ", ".join(parts) + "]"


def sweep_text(f: Files, body: str) -> str:
    f.config()
    return f.raw("s.yaml", (f"name: hostile\nexperiment: base.yaml\nseeds: [0]\n"
                            f"tracking: {{uri: 'sqlite:///{f.root / 'mlflow.db'}'}}\n" + body).encode())


def fifo(f: Files) -> str:
    os.mkfifo(f.root / "pipe.yaml")
    return "pipe.yaml"


STORE = "sqlite:////proc/nope/x.db"
CASES = [
    # files that are not text, stores that cannot open, non-finite numbers, outputs that exist
    Case("binary sweep file", lambda f: ["sweep", f.raw("b.yaml", b"\xff\xfe\x00"), "--dry-run"], 2,
         "not a text (UTF-8) YAML file", "b.yaml"),
    Case("binary config file", lambda f: ["config", "show", f.raw("b.yaml", b"\xff\xfe\x00")], 2,
         "not a text (UTF-8) YAML file", "b.yaml"),
    Case("store that cannot be created, dry run", lambda f: ["sweep", f.sweep(tracking={"uri": STORE}), "--dry-run"], 2,
         f"tracking.uri: MLflow store {STORE}: cannot create /proc/nope", "s.yaml"),
    Case("store that cannot be created, launch", lambda f: ["sweep", f.sweep(tracking={"uri": STORE}), "--storage", "ray"],
         2, f"tracking.uri: MLflow store {STORE}: cannot create /proc/nope", "s.yaml"),
    Case("tracking server that does not answer", lambda f: ["sweep", f.sweep(tracking={"uri": "http://127.0.0.1:1"}),
                                                              "--storage", "ray"], 2,
         "tracking.uri: MLflow store http://127.0.0.1:1 did not answer", "s.yaml"),
    Case("-o train.lr=.inf", lambda f: ["config", "show", str(DEMO), "-o", "train.lr=.inf"], 2,
         "train.lr: Input should be a finite number", "demo_shapes.yaml"),
    Case("lr: .inf in the file", lambda f: ["config", "show", f.raw("c.yaml", b"train: {lr: .inf}\n")], 2,
         "train.lr: Input should be a finite number", "c.yaml"),
    Case("weight_decay and zoom_out.max .inf",
         lambda f: ["config", "show", str(DEMO), "-o", "train.weight_decay=.inf", "-o", "augment.zoom_out.max=.inf"], 2,
         "augment.zoom_out.max: Input should be a finite number", "train.weight_decay"),
    Case(".inf bound in a search space",
         lambda f: ["sweep", f.sweep(drop=("arms",), search={"num_samples": 2, "space": {
             "train.lr": {"loguniform": [1.0e-3, float("inf")]}}}), "--dry-run"], 2,
         "search.space.train.lr.loguniform: bounds must be finite", "s.yaml"),
    Case("non-finite loss in ssdlab train", lambda f: ["train", f.config(), "--no-tracking"], 1,
         "non-finite loss at iteration 3", "last good checkpoint"),
    Case("detect --out an existing file", lambda f: ["detect", "--checkpoint", "none.pt", f.image(),
                                                     "--out", f.raw("out.txt", b"x")], 2,
         "--out out.txt: exists and is not a folder"),
    Case("COCO ground truth {}", lambda f: ["score", "--coco-gt", f.json("gt.json", {}), "--results",
                                            f.json("dets.json", [])], 2, "not a COCO instances file", "gt.json"),
    Case("COCO ground truth without categories",
         lambda f: ["score", "--coco-gt", f.json("gt.json", {"images": [{"id": 1}], "annotations": []}),
                    "--results", f.json("dets.json", [])], 2, "`categories` is missing", "gt.json"),
    Case("runs on a garbage store", lambda f: ["runs", "--tracking-uri", f"sqlite:///{f.raw('garbage.db', b'garbage')}"],
         2, "MLflow store sqlite:///garbage.db: not an SQLite database"),
    Case("YAML syntax error", lambda f: ["config", "show", f.raw("y.yaml", b"train:\n  lr: [1, 2\n  epochs: 3\n")], 2,
         "y.yaml: not valid YAML: line 3, column 9", "expected ',' or ']'"),
    Case("-o train.lr=[unclosed", lambda f: ["config", "show", str(DEMO), "-o", "train.lr=[unclosed"], 2,
         "override train.lr: value '[unclosed' is not valid YAML: line 1, column 10", "demo_shapes.yaml"),
    Case("checkpoint with a pickled object", lambda f: ["detect", "--checkpoint", f.pickled_object(), f.image(),
                                                        "--out", "det"], 2,
         "evil.pt: not a checkpoint this tool will load: it holds a pickled Python object (posix.getcwd)"),
    Case("sweep with neither arms nor search", lambda f: ["sweep", f.sweep(drop=("arms",)), "--dry-run"], 2,
         "arms: neither `arms`, `design` nor `search`", "s.yaml"),
    # the ones tested before (tests/integration/test_cli_train.py, test_sweep_spec.py, test_score.py, test_reports.py)
    Case("-o train.lr=-1", lambda f: ["config", "show", str(DEMO), "-o", "train.lr=-1"], 2,
         "train.lr: Input should be greater than 0", "demo_shapes.yaml"),
    Case("eval with a corrupt checkpoint", lambda f: ["eval", f.config(), "--checkpoint", f.raw("bad.pt", b"garbage")],
         2, "bad.pt: cannot read checkpoint"),
    Case("detect with a corrupt checkpoint", lambda f: ["detect", "--checkpoint", f.raw("bad.pt", b"garbage"),
                                                        f.image(), "--out", "det"], 2, "bad.pt: cannot read checkpoint"),
    Case("sweep override of an unknown key", lambda f: ["sweep", f.sweep(overrides={"nope.key": 1}), "--dry-run"], 2,
         "overrides.nope.key: not a config key", "s.yaml"),
    Case("score with neither --voc-root nor --coco-gt", lambda f: ["score", "--results", "."], 2,
         "give exactly one of --voc-root (with --image-set) or --coco-gt"),
    Case("score --voc-root without --image-set", lambda f: ["score", "--results", ".", "--voc-root", "."], 2,
         "--voc-root needs --image-set"),
    Case("ui on a missing store", lambda f: ["ui", "--tracking-uri", "sqlite:////nonexistent/x.db"], 2,
         "/nonexistent/x.db not found"),
    Case("report --format pdf", lambda f: ["report", "--sweep", "x", "--format", "pdf"], 2, "--format 'pdf': unknown pdf"),
    # more of the same kind
    Case("config file not found", lambda f: ["config", "show", "missing.yaml"], 2, "missing.yaml: config file not found"),
    Case("config path is a folder", lambda f: ["config", "show", "."], 2, ".: not a file"),
    Case("config is a list", lambda f: ["config", "show", f.raw("l.yaml", b"- 1\n- 2\n")], 2,
         "l.yaml: expected a mapping of sections, got list"),
    Case("unknown config key", lambda f: ["config", "show", f.raw("k.yaml", b"train: {lrr: 0.1}\n")], 2,
         "k.yaml: train.lrr: unknown key (did you mean 'train.lr'?)"),
    Case("override without =", lambda f: ["config", "show", str(DEMO), "-o", "train.lr"], 2,
         "override 'train.lr': expected key=value"),
    Case("override of an unknown key", lambda f: ["config", "show", str(DEMO), "-o", "train.lrr=1"], 2,
         "override train.lrr: unknown key (did you mean 'train.lr'?)"),
    Case("sweep file not found", lambda f: ["sweep", "nope.yaml", "--dry-run"], 2, "nope.yaml: sweep file not found"),
    Case("sweep with empty arms", lambda f: ["sweep", f.sweep(arms={}), "--dry-run"], 2, "s.yaml: arms: empty"),
    Case("sweep with a malformed sqlite URI", lambda f: ["sweep", f.sweep(tracking={"uri": "sqlite://x.db"}), "--dry-run"],
         2, "tracking.uri: MLflow store sqlite://x.db: a sqlite URI is sqlite:///", "s.yaml"),
    Case("sweep store that is not a database",
         lambda f: ["sweep", f.sweep(tracking={"uri": f"sqlite:///{f.root / f.raw('g.db', b'garbage')}"}), "--dry-run"],
         2, "g.db: not an SQLite database", "tracking.uri"),
    Case("fractional GPUs above one", lambda f: ["sweep", f.sweep(resources={"gpu": 1.5}), "--dry-run"], 2,
         "resources.gpu: 1.5: fractions are for one GPU"),
    Case("sweep resources cpu .inf", lambda f: ["sweep", f.sweep(resources={"cpu": float("inf")}), "--dry-run"], 2,
         "resources.cpu: Input should be a finite number", "s.yaml"),
    Case("train with a tracking server that does not answer",
         lambda f: ["train", f.config(), "--tracking-uri", "http://127.0.0.1:1"], 2,
         "--tracking-uri: MLflow store http://127.0.0.1:1 did not answer: Connection refused"),
    Case("eval with a missing checkpoint", lambda f: ["eval", f.config(), "--checkpoint", "none.pt"], 2,
         "none.pt: checkpoint not found"),
    Case("detect with a missing image", lambda f: ["detect", "--checkpoint", "none.pt", "nope.jpg", "--out", "det"], 2,
         "nope.jpg: image not found"),
    Case("detect --score 1.5", lambda f: ["detect", "--checkpoint", "none.pt", "x.jpg", "--out", "det", "--score", "1.5"],
         2, "--score 1.5: expected a number in [0, 1)"),
    Case("score with a missing COCO file", lambda f: ["score", "--coco-gt", "gt.json", "--results", "dets.json"], 2,
         "gt.json: file not found"),
    Case("score with binary COCO ground truth",
         lambda f: ["score", "--coco-gt", f.raw("gt.json", b"\xff\xfe"), "--results", f.json("dets.json", [])], 2,
         "gt.json: cannot read COCO instances json"),
    Case("runs on an empty database", lambda f: ["runs", "--tracking-uri", f"sqlite:///{f.raw('e.db', b'')}"], 2,
         "not an MLflow store (no experiments, runs table)"),
    Case("data check on a missing folder", lambda f: ["data", "check", "nope"], 2, "nope"),
    Case("data synth --images 0", lambda f: ["data", "synth", "--out", "syn", "--images", "0"], 2,
         "syn: --images must be >= 1"),
    # YAML alias bombs inside values, refused in well under a second in one short line
    Case("alias bomb in an arm override", lambda f: ["sweep", sweep_text(f, f"arms:\n  a:\n    overrides:\n"
                                                                            f"      data.class_names: {bomb()}\n"),
                                                     "--dry-run"], 2, "expand (YAML aliases) to more than 100,000", "s.yaml"),
    Case("alias bomb in a choice list", lambda f: ["sweep", sweep_text(f, "search:\n  num_samples: 2\n  space:\n"
                                                                         f"    train.lr: {{choice: {bomb()}}}\n"),
                                                   "--dry-run"], 2, "expand (YAML aliases) to more than 100,000", "s.yaml"),
    Case("alias bomb in a description", lambda f: ["sweep", sweep_text(f, f"arms: {{a: {{}}}}\ndescription: {bomb()}\n"),
                                                   "--dry-run"], 2, "expand (YAML aliases)", "s.yaml"),
    Case("alias bomb in a config", lambda f: ["config", "show", f.raw("c.yaml", f"data: {{class_names: {bomb()}}}\n".encode())],
         2, "c.yaml: its values expand (YAML aliases)"),
    # odd values a sweep file can hold
    Case("duplicate key in a sweep file", lambda f: ["sweep", sweep_text(f, "arms: {a: {}}\nseeds: [1]\n"), "--dry-run"],
         2, "duplicate key 'seeds' (first on line 3)", "s.yaml"),
    Case("duplicate key in a config", lambda f: ["config", "show", f.raw("c.yaml", b"train:\n  lr: 0.1\n  lr: 0.2\n")],
         2, "c.yaml: not valid YAML: line 3, column 3: duplicate key 'lr' (first on line 2)"),
    Case("lr: 1e308", lambda f: ["config", "show", f.raw("c.yaml", b"train: {lr: 1.0e+308}\n")], 2,
         "train.lr: lr 1e+308: larger than a float32 holds", "c.yaml"),
    Case("experiment: /dev/zero", lambda f: ["sweep", f.sweep(experiment="/dev/zero"), "--dry-run"], 2,
         "experiment: base config /dev/zero is a character device, not a YAML file", "s.yaml"),
    Case("experiment is a folder", lambda f: ["sweep", f.sweep(experiment="."), "--dry-run"], 2,
         "is a folder, not a YAML file", "s.yaml"),
    Case("experiment is a FIFO", lambda f: ["sweep", f.sweep(experiment=fifo(f)), "--dry-run"], 2,
         "pipe.yaml is a FIFO (named pipe), not a YAML file", "s.yaml"),
    Case("config is a FIFO", lambda f: ["config", "show", fifo(f)], 2, "pipe.yaml: not a file but a FIFO (named pipe)"),
    # plans too large, refused before they are built
    Case("a grid of 10^8 points", lambda f: ["sweep", f.sweep(drop=("arms",), search={"sampler": "grid", "space": {
        "model.prior_max_boxes" if i == 0 else k: {"int": [2, 11]} for i, k in enumerate(
            ["a", "train.batch_size", "train.warmup_iters", "train.log_every", "train.seed", "eval.top_k",
             "eval.max_detections", "data.holdout_seed"])}}), "--dry-run"], 2,
         "max_trials: the plan has 100,000,000 trials, more than max_trials 10,000", "s.yaml"),
    Case("100,000 seeds", lambda f: ["sweep", f.sweep(seeds=list(range(100_000))), "--storage", "ray"], 2,
         "max_trials: the plan has 100,000 trials", "s.yaml"),
    Case("a design of 2^20 points", lambda f: ["sweep", f.sweep(drop=("arms",), design={"type": "full", "factors": {
        f"f{i}": {"off": {"train.seed": 0}, "on": {"train.seed": i + 1}} for i in range(20)}}), "--dry-run"], 2,
         "the plan has 1,048,576 trials", "s.yaml"),
    Case("a design factor that is not a config key", lambda f: ["sweep", f.sweep(drop=("arms",), design={"factors": {
        "z": {"off": {"augment.zoom.p": 0.0}, "on": {"augment.zoom.p": 0.5}}}}), "--dry-run"], 2,
         "design.factors.z.off.augment.zoom.p: not a config key", "s.yaml"),
    # a data root that is a file, caught by --dry-run and by a launch before anything is made
    Case("data.root is a file, dry run", lambda f: ["sweep", f.sweep(overrides={"data.root": f.raw("d.txt", b"x")}),
                                                    "--dry-run"], 2, "data.root: ", "is a file, not a dataset folder"),
    Case("data.root is a file, launch", lambda f: ["sweep", f.sweep(overrides={"data.root": f.raw("d.txt", b"x")}),
                                                   "--storage", "ray"], 2, "data.root: ", "is a file, not a dataset folder"),
    Case("synthetic data.root is a file", lambda f: ["train", str(DEMO), "-o", f"data.root={f.raw('d.txt', b'x')}",
                                                     "--no-tracking"], 2, "d.txt: data.root is a file"),
]


def _tree(root: Path) -> set:
    return {(str(p.relative_to(root)), p.is_dir()) for p in root.rglob("*")}


def _diverge(monkeypatch):
    from ssd_core.errors import NonFiniteLossError

    def fit(cfg, callbacks=(), run_dir=None, resume=False):
        raise NonFiniteLossError("non-finite loss at iteration 3 (epoch 1, lr 0.01): total=nan loc=nan conf=nan; "
                                 "last good checkpoint kept: runs/x/last.pt")

    monkeypatch.setattr("ssd_core.train.fit", fit)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_input_gets_one_clear_line(case, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    if case.name == "non-finite loss in ssdlab train":
        _diverge(monkeypatch)
    argv = [str(a) for a in case.argv(Files(tmp_path))]
    before = _tree(tmp_path)
    start = time.perf_counter()
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse usage errors
        code = exc.code
    took = time.perf_counter() - start
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    lines = [ln for ln in err.splitlines() if ln.startswith("ssdlab") or "error:" in ln]
    assert len(lines) == 1, err
    assert code == case.code, err
    assert case.expect in lines[0] and case.where in lines[0], lines[0]
    assert _tree(tmp_path) == before, "the command changed files before failing"
    assert took < 30, f"{took:.0f} s to fail"


def test_closed_output_pipe_is_quiet(tmp_path):
    """`ssdlab config show CFG | head -1`: the reader is gone before the first write (its end of the pipe
    is closed at once), so every write fails with EPIPE; the command stops quietly with 141."""
    proc = subprocess.Popen([sys.executable, "-m", "ssdlab.cli", "config", "show", str(DEMO)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(60) == EXIT_BROKEN_PIPE
    assert "Traceback" not in err and "Exception ignored" not in err and err.strip() == "", err


# --------------------------------------------------------------------------- exit statuses


def test_sweep_exit_status_names_each_failed_trial(tmp_path, monkeypatch, capsys):
    from experiments.sweep import driver as sweep_mod

    monkeypatch.chdir(tmp_path)
    path = Files(tmp_path).sweep()

    def fake_run_sweep(spec, **kwargs):
        return sweep_mod.SweepResult(
            spec.name, tmp_path / "ray", "parent0", 6, 140.0, [],
            counts={"early_stopped": 1, "failed": 2, "finished": 3},
            failures=[("t1", "a-s0-t1", "NonFiniteLossError: non-finite loss at iteration 7"),
                      ("t4", "a-s1-t4", "RuntimeError: CUDA out of memory")])

    monkeypatch.setattr(sweep_mod, "run_sweep", fake_run_sweep)
    assert main(["sweep", path]) == EXIT_FAILED
    out, err = capsys.readouterr()
    assert "6 trials in 140 s (1 early-stopped, 2 failed, 3 finished)" in out
    assert err.splitlines() == ["ssdlab sweep: 2 of 6 trials failed:",
                                "  a-s0-t1: NonFiniteLossError: non-finite loss at iteration 7",
                                "  a-s1-t4: RuntimeError: CUDA out of memory"]
    monkeypatch.setattr(sweep_mod, "run_sweep", lambda spec, **kw: sweep_mod.SweepResult(
        spec.name, tmp_path, "p", 2, 1.0, [], counts={"finished": 2}))
    assert main(["sweep", path]) == 0
    assert "--resume" in subprocess.run([sys.executable, "-m", "ssdlab.cli", "sweep", "--help"], cwd=REPO,
                                        capture_output=True, text=True).stdout.split("exit status:")[1]


class _Result:
    def __init__(self, metrics=None, error=None):
        self.metrics, self.error, self.config = metrics or {}, error, {"ssdlab": {"arm": None, "seed": 0}}


def test_stopped_phase_counts_trials_from_their_own_records():
    """After Ctrl-C Tune marks the trials it cut short TERMINATED, like the finished ones; the count
    comes from each trial's record: done (finished / early-stopped), an error, or neither (running)."""
    from experiments.sweep.status import format_counts, phase_states

    results = [_Result({"epoch": 4, "final": 1.0, "done": True}), _Result({"epoch": 4, "final": 1.0, "done": True}),
               _Result({"epoch": 2, "final": 0.0, "done": True}), _Result({"epoch": 1, "done": False}),
               _Result({"epoch": 3, "final": 0.0}), _Result({"epoch": 1}, error=RuntimeError("boom")), _Result()]
    states = phase_states(results, expected=8, planned_epochs=lambda config: 4)
    assert states == {"finished": 2, "early_stopped": 1, "failed": 1, "running": 2, "not started": 2}
    assert format_counts(states) == "2 finished, 1 early-stopped, 1 failed, 2 running, 2 not started"
