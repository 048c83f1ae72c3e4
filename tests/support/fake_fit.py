"""A trainable of fit's signature for sweep tests (fast fake epochs that write last.pt and resume from it)
and the helpers that write sweep files and read their runs back. Ray ships this module by value."""
from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

import yaml

from experiments.tracking.store import client_for, experiment_id
from ssd_core.errors import NonFiniteLossError

SEED_NOISE = 0.005
REPO = Path(__file__).resolve().parents[2]

try:  # Ray workers cannot import the tests package: ship this module's functions by value
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
except ImportError:
    pass


def tiny_fit(cfg, callbacks=(), run_dir=None, resume=False):
    """fit's signature, checkpoints and report keys (`score`, `final`), no network. val/mAP50 = lr * epoch.

    lr >= 0.5 -> NonFiniteLossError at epoch 2. name 'crash' -> the worker dies (os._exit) once at
    epoch 2, flagged by a file in output.dir. `test/start_epoch` records where it resumed from and
    `test/attempt` which call trained the epoch (a random id per call). With data.test_sets the final
    epoch reports test/mAP50 = the score + SEED_NOISE sin(2.3 seed + 1 + 100 lr). Like fit, each epoch goes to
    last.pt, then metrics.jsonl, then the callbacks, and a start rewrites metrics.jsonl from last.pt's history
    (a worker killed between the two writes left the line out)."""
    from ssd_core.checkpoint import load_checkpoint, save_checkpoint

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    last = run_dir / "last.pt"
    state = load_checkpoint(last) if resume and last.exists() else {"epoch": 0, "history": []}
    start, history = state["epoch"], list(state["history"])
    attempt = float(int.from_bytes(os.urandom(4), "big"))
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in history))
    for cb in callbacks:
        getattr(cb, "on_fit_start", lambda *a: None)(cfg, run_dir)
    for epoch in range(start + 1, cfg.train.epochs + 1):
        time.sleep(cfg.train.time_budget_s or 0.02)  # seconds per fake epoch
        if cfg.train.lr >= 0.5 and epoch == 2:
            raise NonFiniteLossError(f"non-finite loss at epoch {epoch} (lr {cfg.train.lr})")
        flag = Path(cfg.output.dir) / f"crashed-{cfg.train.seed}"
        if cfg.name == "crash" and epoch == 2 and not flag.exists():
            flag.parent.mkdir(parents=True, exist_ok=True)
            flag.write_text("died once")
            os._exit(1)
        metrics = {"train/loss": 1.0 / epoch, "val/mAP50": cfg.train.lr * epoch, "test/start_epoch": start,
                   "test/attempt": attempt, "epoch": epoch, "score": cfg.train.lr * epoch,
                   "final": float(epoch == cfg.train.epochs)}
        if cfg.data.test_sets and epoch == cfg.train.epochs:  # the reported split: the score plus a seed's luck
            metrics["test/mAP50"] = cfg.train.lr * epoch + SEED_NOISE * math.sin(2.3 * cfg.train.seed + 1 + 100 * cfg.train.lr)
        history.append(metrics)
        ckpt = {"model": {}, "config": cfg.model_dump(mode="json"), "class_names": [], "epoch": epoch,
                "history": history}
        save_checkpoint(ckpt, last)
        save_checkpoint(ckpt, run_dir / "best.pt")
        with open(run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(metrics) + "\n")
        for cb in callbacks:
            cb.on_epoch_end(epoch, metrics, run_dir)
    for cb in callbacks:
        getattr(cb, "on_fit_end", lambda *a: None)(None)


def write_sweep(tmp_path: Path, sweep: dict, store: bool = False) -> Path:
    """The sweep file (and its base.yaml) in `tmp_path`, logging to tmp_path/mlflow.db; with `store` that store
    is there already, empty (tests/support/stores.py), for a test whose subject is not how a store is made."""
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(
        {"name": "tiny", "train": {"epochs": 4, "lr": 0.01}, "output": {"dir": str(tmp_path / "out")},
         "data": {"train_sets": ["S/train"], "val_sets": ["S/val"]}}))
    sweep = {"experiment": "base.yaml", "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}, **sweep}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    if store:
        from tests.support.stores import empty_store

        empty_store(sweep["tracking"]["uri"])
    return path


def runs_of(uri: str, experiment: str):
    client = client_for(uri)
    runs = client.search_runs([experiment_id(client, experiment, uri)], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("ssdlab.kind") == "sweep"]
    children = [r for r in runs if r.data.tags.get("ssdlab.kind") == "trial"]
    return client, parents, children


def history(client, run, key="val/mAP50"):
    return [(m.step, m.value) for m in sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)]
