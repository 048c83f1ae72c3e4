"""A full sweep report (md, csv, tex, html + plots) over 1,000 MLflow runs: seconds per report.

    python -m benchmarks.bench_report [--runs 1000] [--epochs 20] [--reps 3] [--rebuild]

The store (sqlite, one sweep: 4 arms x 250 trials, 62 params, 20 epochs of 9 metrics each, with
finished / early-stopped / failed / running trials) is filled once with `MlflowClient.log_batch` and
cached under runs/bench/. Ours: `reports.build_report` + `write_report` (the SQL fast path of
reports/load.py). Reference: the same report read through the plain MLflow API,
`mlflow.search_runs` + one `MlflowClient.get_metric_history` call per run and key; also shown:
`search_runs` + `get_metric_history_bulk`. All three write identical files (checked). Repetitions
are interleaved so load from other processes hits all. Prints `RESULT report_1000_runs_s <ours>`
and `RESULT report_1000_runs_ref_s <ref> ratio <ref/ours>`.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from mlflow.entities import Metric, Param  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from reports import load  # noqa: E402
from reports.report import build_report, write_report  # noqa: E402

ROOT = Path(__file__).resolve().parents[1] / "runs" / "bench"
ARMS = ["base", "aug", "lite", "wd"]
SPACE = {"train.lr": {"loguniform": [1e-4, 1e-1]},  # as a sweep file writes it (experiments.schema.parse_space)
         "train.weight_decay": {"uniform": [0.0, 1e-3]},
         "augment.zoom_out.p": {"uniform": [0.0, 1.0]},
         "model.backbone": {"choice": ["vgg16", "mobilenet_v2"]}}
CLASSES = ("RBC", "WBC", "Platelets")


def _base_params() -> dict[str, str]:
    try:
        from ssd_core.config import ExperimentConfig, flatten
        return {k: str(v) for k, v in flatten(ExperimentConfig()).items()}
    except Exception:  # config module not importable: 62 stand-in params
        return {f"section{i // 10}.key{i}": str(i) for i in range(62)}


def fill(uri: str, runs: int, epochs: int) -> None:
    from experiments.tracking.store import ensure_store
    ensure_store(uri)
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("bench")
    t0 = 1_700_000_000_000
    parent = client.create_run(exp, start_time=t0, tags={
        "ssdlab.kind": "sweep", "ssdlab.sweep": "bench", "ssdlab.arms": json.dumps(ARMS),
        "ssdlab.baseline_arm": "base", "ssdlab.search_space": json.dumps(SPACE),
        "ssdlab.metric": "val/mAP50"}).info.run_id
    rng = np.random.default_rng(0)
    base = _base_params()
    for i in range(runs):
        arm, seed = ARMS[i % len(ARMS)], i // len(ARMS)
        u = rng.random()
        status = ("finished" if u < 0.85 else "early_stopped" if u < 0.95 else
                  "failed" if u < 0.99 else "running")
        lr = float(10 ** rng.uniform(-4, -1))
        wd, zp = float(rng.uniform(0, 1e-3)), float(rng.uniform(0, 1))
        bb = "vgg16" if rng.random() < 0.5 else "mobilenet_v2"
        n_ep = epochs if status == "finished" else int(rng.integers(1, epochs))
        top = 0.5 + 0.05 * ARMS.index(arm) - 0.1 * abs(np.log10(lr) + 2.5) + rng.normal(0, 0.02)
        start = t0 + 1000 * (i + 1)
        ms = []
        for e in range(n_ep):
            ts, v = start + 60_000 * (e + 1), float(top * (1 - np.exp(-(e + 1) / 4)))
            ms += [Metric("val/mAP50", v, ts, e), Metric("score", v, ts, e),  # fit's score: the best so far (v rises)
                   Metric("val/mAP50_area", v + 0.01, ts, e),
                   Metric("train/loss", 4.0 - 2 * v, ts, e), Metric("perf/train_img_s", 150.0, ts, e),
                   Metric("cost/device_hours", 0.01 * (e + 1), ts, e)]
            ms += [Metric(f"val/AP50/{c}", v + 0.05 * k, ts, e) for k, c in enumerate(CLASSES)]
        params = {**base, "train.lr": str(lr), "train.weight_decay": str(wd),
                  "augment.zoom_out.p": str(zp), "model.backbone": bb, "train.epochs": str(epochs),
                  "train.seed": str(seed)}
        tags = {"mlflow.parentRunId": parent, "ssdlab.kind": "trial", "ssdlab.sweep": "bench",
                "ssdlab.arm": arm, "ssdlab.seed": str(seed), "ssdlab.note": f"arm {arm}",
                "ssdlab.trial_id": f"t{i:04d}", "ssdlab.status": status,
                "ssdlab.config_hash": f"{i:012x}", "ssdlab.searched": json.dumps(sorted(SPACE))}
        rid = client.create_run(exp, start_time=start, tags=tags).info.run_id
        plist = [Param(k, v) for k, v in sorted(params.items())]
        for j in range(0, len(plist), 100):  # MLflow's per-call limits: 100 params, 1000 metrics
            client.log_batch(rid, params=plist[j:j + 100])
        for j in range(0, len(ms), 1000):
            client.log_batch(rid, metrics=ms[j:j + 1000])
        if status != "running":
            client.set_terminated(rid, "FAILED" if status == "failed" else "FINISHED",
                                  end_time=start + 60_000 * n_ep + 500)


def store_uri(runs: int, epochs: int, rebuild: bool) -> str:
    db = ROOT / f"mlflow_{runs}x{epochs}_scored.db"  # runs log fit's score (a cached store from before does not)
    uri = f"sqlite:///{db}"
    if rebuild or not db.is_file():
        ROOT.mkdir(parents=True, exist_ok=True)
        tmp = ROOT / (db.name + ".tmp")
        tmp.unlink(missing_ok=True)
        t = time.perf_counter()
        fill(f"sqlite:///{tmp}", runs, epochs)
        tmp.replace(db)
        print(f"filled {db} with {runs} runs in {time.perf_counter() - t:.1f} s")
    return uri


VARIANTS = {  # name: (FAST_SQL, BULK_HISTORY)
    "ours": (True, True),  # SQL fast path
    "api_bulk": (False, True),  # mlflow.search_runs + get_metric_history_bulk
    "api": (False, False),  # mlflow.search_runs + get_metric_history per run (the reference)
}


def one_report(uri: str, out: Path, variant: str) -> float:
    load.FAST_SQL, load.BULK_HISTORY = VARIANTS[variant]
    try:
        t = time.perf_counter()
        write_report(build_report("bench", uri), out, ("md", "csv", "tex", "html"))
        return time.perf_counter() - t
    finally:
        load.FAST_SQL, load.BULK_HISTORY = True, True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--rebuild", action="store_true")
    args = ap.parse_args()
    uri = store_uri(args.runs, args.epochs, args.rebuild)
    out = Path(tempfile.mkdtemp(prefix="bench_report_"))
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    try:
        one_report(uri, out / "warm", "ours")  # imports, sqlite page cache
        for r in range(args.reps):
            for v in VARIANTS:
                times[v].append(one_report(uri, out / f"{v}{r}", v))
        same = all((out / "ours0" / f.name).read_bytes() == f.read_bytes()
                   for v in VARIANTS for f in (out / f"{v}0").iterdir())
    finally:
        shutil.rmtree(out, ignore_errors=True)
    med = {v: statistics.median(t) for v, t in times.items()}
    print(f"runs={args.runs} epochs={args.epochs} reps={args.reps} (median, interleaved); "
          f"identical files from every path: {same}")
    for v, label in (("ours", "ours (SQL fast path)"), ("api_bulk", "search_runs + bulk history"),
                     ("api", "reference: search_runs + get_metric_history per run")):
        print(f"{label:<52} {med[v]:6.2f} s  {['%.2f' % x for x in times[v]]}")
    print(f"RESULT report_1000_runs_s {med['ours']:.2f}")
    print(f"RESULT report_1000_runs_ref_s {med['api']:.2f} ratio {med['api'] / med['ours']:.2f}")


if __name__ == "__main__":
    main()
