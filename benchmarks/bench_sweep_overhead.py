"""Orchestration overhead per trial: sweep wall time minus the trials' own compute, per trial.

Ours: `experiments.sweep.driver.run_sweep` (validated spec, per-trial config resolution, Tune checkpoint
every epoch, the driver's single MLflow writer with idempotent run identity: parent + children,
params, tags, metrics per epoch, config artifact). Reference: a bare `ray.tune.Tuner` with Ray's
stock `MLflowLoggerCallback` and the same fake trials (same epochs, same sleep, a checkpoint each
epoch). Both run in one Ray session, one trial at a time (so wall - compute is pure overhead), and
repetitions alternate ours / reference so load from other processes hits both.

    python -m benchmarks.bench_sweep_overhead [--trials 6] [--epochs 3] [--epoch-s 0.2] [--reps 3] [--warmup 1]

Prints `RESULT sweep_overhead_per_trial_s <ours> reference <ref> ratio <ours/ref>`.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")


def fake_fit(cfg, callbacks=(), run_dir=None, resume=False):
    """fit's signature: `train.time_budget_s` seconds of 'compute' per epoch, last.pt each epoch."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    for cb in callbacks:
        getattr(cb, "on_fit_start", lambda *a: None)(cfg, run_dir)
    for epoch in range(1, cfg.train.epochs + 1):
        time.sleep(cfg.train.time_budget_s)
        (run_dir / "last.pt").write_text(json.dumps({"epoch": epoch}))
        metrics = {"train/loss": 1.0 / epoch, "val/mAP50": 0.1 * epoch, "score": 0.1 * epoch}
        for cb in callbacks:
            cb.on_epoch_end(epoch, metrics, run_dir)


def reference_trainable(config):
    from ray import tune

    for epoch in range(1, config["epochs"] + 1):
        time.sleep(config["epoch_s"])
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "last.pt").write_text(json.dumps({"epoch": epoch}))
            tune.report({"train/loss": 1.0 / epoch, "val/mAP50": 0.1 * epoch, "epoch": epoch},
                        checkpoint=tune.Checkpoint.from_directory(tmp))


def run_ours(work: Path, rep: int, trials: int, epochs: int, epoch_s: float) -> float:
    from experiments.sweep.driver import run_sweep
    from experiments.sweep.validate import load_sweep

    (work / "base.yaml").write_text(yaml.safe_dump({"name": "bench", "train": {"epochs": epochs, "time_budget_s": epoch_s}}))
    sweep = {"name": f"ours{rep}", "experiment": "base.yaml", "arms": {"a": {}}, "seeds": list(range(trials)),
             "max_concurrent": 1, "tracking": {"uri": f"sqlite:///{work / 'ours.db'}", "log_checkpoints": False}}
    (work / f"ours{rep}.yaml").write_text(yaml.safe_dump(sweep))
    spec = load_sweep(work / f"ours{rep}.yaml")
    t = time.perf_counter()
    run_sweep(spec, fake_fit, storage=work / "ray")
    return time.perf_counter() - t


def run_reference(work: Path, rep: int, trials: int, epochs: int, epoch_s: float) -> float:
    from ray import tune
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    from experiments.tracking.store import ensure_store

    uri = ensure_store(f"sqlite:///{work / 'ref.db'}")
    tuner = tune.Tuner(
        tune.with_resources(reference_trainable, {"cpu": 1}),
        param_space={"seed": tune.grid_search(list(range(trials))), "epochs": epochs, "epoch_s": epoch_s},
        tune_config=tune.TuneConfig(max_concurrent_trials=1, reuse_actors=True),
        run_config=tune.RunConfig(name=f"ref{rep}", storage_path=str(work / "ray"), verbose=0,
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                                  callbacks=[MLflowLoggerCallback(tracking_uri=uri, experiment_name=f"ref{rep}",
                                                                  save_artifact=False)]))
    t = time.perf_counter()
    tuner.fit()
    return time.perf_counter() - t


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=6)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--epoch-s", type=float, default=0.2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1, help="uncounted first repetitions (imports, worker start)")
    args = ap.parse_args(argv)
    import ray
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    t = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    print(f"ray.init (once, not counted): {time.perf_counter() - t:.1f} s")
    compute = args.trials * args.epochs * args.epoch_s
    ours, ref = [], []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for rep in range(args.warmup + args.reps):
            o = (run_ours(work, rep, args.trials, args.epochs, args.epoch_s) - compute) / args.trials
            r = (run_reference(work, rep, args.trials, args.epochs, args.epoch_s) - compute) / args.trials
            warm = rep < args.warmup
            if not warm:
                ours.append(o)
                ref.append(r)
            print(f"rep {rep}{' (warm-up)' if warm else ''}: ours {o:.2f} s/trial, reference {r:.2f} s/trial", flush=True)
    ray.shutdown()
    o, r = statistics.median(ours), statistics.median(ref)
    print(f"{args.trials} trials x {args.epochs} epochs x {args.epoch_s} s compute, one at a time, {args.reps} reps")
    print(f"RESULT sweep_overhead_per_trial_s {o:.2f} reference {r:.2f} ratio {o / r:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
