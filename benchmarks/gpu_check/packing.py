"""Part 4, the parent side: packing 1, 2, 4 concurrent training processes (pack_worker.py;
experiments/configs/bccd_mobilenet_v2.yaml, batch 16, bf16, 3 loader workers each) on the one GPU, each
capped to 1/n of its memory the way the sweep caps fractional-GPU trials (ssd_core.build.cap_gpu_memory:
set_per_process_memory_fraction), started together through a start-time file, each training a fixed number
of seconds. Aggregate images/s, per-trial slowdown. Target: 4 packed trials >= 2.5x the throughput of one.
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.gpu_check.data import BCCD_CONFIG, REPO, DataSpec
from benchmarks.gpu_check.plan import Plan
from benchmarks.gpu_check.report import Report

CHILDREN: list = []                  # the pack workers running now (killed on SIGTERM)


def part4_packing(report: Report, section: dict, plan: Plan, device: str, data: DataSpec, scratch: Path) -> None:
    base = report.out / "pack"
    shutil.rmtree(base, ignore_errors=True)
    section.update(config=str(BCCD_CONFIG.relative_to(REPO)), data=data.source, batch=plan.p4_batch,
                   trial_seconds=plan.p4_seconds, loader_workers_per_trial=plan.p4_loader_workers,
                   threads_per_trial=plan.p4_threads, image_size=plan.p4_image_size or "config",
                   memory_cap="torch.cuda.set_per_process_memory_fraction(1/n) when n > 1, as "
                              "ssd_core.build.cap_gpu_memory does for fractional GPUs", rounds={})
    single = None
    for n in plan.p4_procs:
        rdir = base / f"n{n}"
        rdir.mkdir(parents=True)
        spec = {"device": device, "n": n, "fraction": 1.0 / n, "batch": plan.p4_batch, "seconds": plan.p4_seconds,
                "warmup": plan.p4_warmup, "loader_workers": plan.p4_loader_workers, "threads": plan.p4_threads,
                "image_size": plan.p4_image_size, "amp": "bf16" if device == "cuda" else "off",
                "overrides": data.overrides(), "root": str(data.root), "dir": str(rdir),
                "ready_timeout_s": plan.p4_ready_timeout_s + 30}
        (rdir / "spec.json").write_text(json.dumps(spec))
        results = run_pack_round(rdir, n, plan)
        per = [r["img_s"] for r in results]
        agg = sum(per)
        single = agg if n == 1 else single
        rnd = {"n": n, "aggregate_img_s": agg, "per_trial_img_s": per, "trials": results}
        if single:
            rnd["throughput_vs_one"] = agg / single
            rnd["per_trial_slowdown"] = single / statistics.mean(per)
        section["rounds"][f"n{n}"] = rnd
        report.save()
        mem = ", ".join(f"{r['peak_mem_gib']:.2f}" for r in results if r.get("peak_mem_gib") is not None)
        report.log(f"[4] {n} packed trial(s): aggregate {agg:.1f} img/s, per trial "
                   f"{', '.join(f'{p:.1f}' for p in per)} img/s" + (f", peak GiB {mem}" if mem else "")
                   + (f"; x{agg / single:.2f} the throughput of one, each trial {single / statistics.mean(per):.2f}x "
                      f"slower" if single and n > 1 else ""))
        if n > 1 and single:
            report.result(f"packing_{n}_trials_{device}", "4", agg, single, "img/s", True, 2.5 if n == 4 else None,
                          note=f"aggregate of {n} packed trials vs one trial alone; per-trial slowdown "
                               f"{single / statistics.mean(per):.2f}x", ours_label=f"{n} packed", ref_label="1 trial")


def run_pack_round(rdir: Path, n: int, plan: Plan) -> list[dict]:
    """Start n workers, wait until all are ready, write the start time, collect their results."""
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(plan.p4_threads)
    env["PYTHONUNBUFFERED"] = "1"
    procs, logs = [], []
    try:
        for rank in range(n):
            log = open(rdir / f"worker{rank}.log", "w")
            logs.append(log)
            cmd = [sys.executable, "-m", "benchmarks.gpu_check", "--worker", "pack", "--worker-dir", str(rdir),
                   "--rank", str(rank)]
            procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT))
            CHILDREN.append(procs[-1])
        deadline = time.perf_counter() + plan.p4_ready_timeout_s
        while not all((rdir / f"ready{r}").exists() for r in range(n)):
            for r, p in enumerate(procs):
                if p.poll() is not None:
                    raise RuntimeError(f"pack worker {r}/{n} exited with {p.returncode} before the start: "
                                       f"{_tail(rdir / f'worker{r}.log')}")
            if time.perf_counter() > deadline:
                raise TimeoutError(f"pack workers not ready after {plan.p4_ready_timeout_s:.0f} s")
            time.sleep(0.05)
        start_at = time.time() + 0.5
        tmp = rdir / "start.tmp"
        tmp.write_text(json.dumps({"start": start_at}))
        os.replace(tmp, rdir / "start")
        for r, p in enumerate(procs):
            p.wait(timeout=max(5.0, start_at - time.time()) + plan.p4_seconds + 60)
            if p.returncode != 0:
                raise RuntimeError(f"pack worker {r}/{n} exited with {p.returncode}: {_tail(rdir / f'worker{r}.log')}")
        return [json.loads((rdir / f"result{r}.json").read_text()) for r in range(n)]
    finally:
        for p in procs:                      # only the workers this round started
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
            CHILDREN.remove(p)
        for log in logs:
            log.close()


def _tail(path: Path, lines: int = 3) -> str:
    try:
        return " | ".join(path.read_text().strip().splitlines()[-lines:])
    except OSError:
        return "(no log)"
