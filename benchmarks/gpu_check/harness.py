"""The harness: parse the command line, run the chosen parts in order (each under its own time cap inside the
global deadline, a failure recorded and the rest still run), part 2c (torch.compile) last, then the summary;
SIGTERM stops the pack workers and saves what there is. `--worker pack` runs one packed trial instead.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path
from typing import Callable

from benchmarks.gpu_check.bccd_training import part5_bccd_training
from benchmarks.gpu_check.data import REPO, default_data_arg, resolve_data
from benchmarks.gpu_check.input_pipeline import feed_check, part3_input_pipeline
from benchmarks.gpu_check.loss_postprocess import part1_loss_postprocess
from benchmarks.gpu_check.pack_worker import pack_worker
from benchmarks.gpu_check.packing import CHILDREN, part4_packing
from benchmarks.gpu_check.plan import PART_NAMES, Plan
from benchmarks.gpu_check.report import Report, fmt, one_line
from benchmarks.gpu_check.runtime import PartTimeout, elapsed, free_memory, gib, restart, time_cap, time_left
from benchmarks.gpu_check.train_step import TrainBench, part2_train_step, part2c_compiled

DESCRIPTION = ("GPU check: every GPU figure the project needs,"
               " each against its reference, in one short run.")


def run_part(report: Report, key: str, cap_s: float, fn: Callable[[dict], None]) -> None:
    section = report.data["parts"].setdefault(key, {})
    section["status"] = "running"
    section["started_at_s"] = round(elapsed(), 2)
    report.log(f"==== part {key} (cap {cap_s:.0f} s, {elapsed():.0f} s elapsed)")
    report.save()
    t0 = time.perf_counter()
    try:
        if cap_s < 1:
            raise PartTimeout("no time left before the deadline")
        with time_cap(cap_s):
            fn(section)
        section["status"] = "ok"
    except Exception as exc:  # noqa: BLE001 - one part's failure must not stop the others
        section["status"] = "failed"
        section["error"] = one_line(exc)
        section["traceback"] = traceback.format_exc()[-4000:]
        report.failed(key, exc)
    finally:
        section["seconds"] = time.perf_counter() - t0
        report.save()
        with contextlib.suppress(Exception):
            free_memory()


def run_compiled(report: Report, plan: Plan, device: str, bench: TrainBench) -> None:
    """Part 2c, last: ours with torch.compile in whatever time is left, recorded in part 2's section; then
    part 3's feed check again, with the compiled rates."""
    section = report.data["parts"][PART_NAMES["2"]]
    report.log(f"==== part 2c: ours with torch.compile({plan.compile_backend}), "
               f"{time_left(plan):.0f} s left before the deadline")
    t0 = time.perf_counter()
    try:
        part2c_compiled(report, section, plan, device, bench)
    except Exception as exc:  # noqa: BLE001
        section.setdefault("compiled", {})["error"] = one_line(exc)
        section["compiled"]["traceback"] = traceback.format_exc()[-4000:]
        report.failed("2c_compile", exc)
    section.setdefault("compiled", {})["seconds"] = time.perf_counter() - t0
    compiled_rates = [r for r in section.get("compiled", {}).values() if isinstance(r, dict) and "img_s" in r]
    if compiled_rates and report.data["parts"].get(PART_NAMES["3"], {}).get("rates"):
        feed_check(report, report.data["parts"][PART_NAMES["3"]])   # again, with the compiled rates
    report.save()


def metadata(args, plan: Plan) -> dict:
    import torch
    import torchvision
    meta = {"command": " ".join([Path(sys.executable).name, "-m", "benchmarks.gpu_check", *sys.argv[1:]]),
            "argv": sys.argv, "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "device": args.device, "quick": args.quick, "python": platform.python_version(),
            "torch": torch.__version__, "torchvision": torchvision.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "host": platform.node(), "cpu_count": os.cpu_count(), "plan": dataclasses.asdict(plan)}
    if args.device == "cuda":
        props = torch.cuda.get_device_properties(0)
        meta.update(device_name=torch.cuda.get_device_name(), gpu_count=torch.cuda.device_count(),
                    gpu_memory_gib=gib(props.total_memory), capability=f"{props.major}.{props.minor}")
    else:
        meta["device_name"] = platform.processor() or platform.machine()
    with contextlib.suppress(Exception):
        meta["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                                            text=True, timeout=5).stdout.strip() or None
    return meta


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=DESCRIPTION,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (the CPU smoke run, ~40 s)")
    ap.add_argument("--out", default=os.environ.get("OUT") or "gpu_check_out",
                    help="output folder for gpu_check.json and gpu_check.log (default $OUT or ./gpu_check_out)")
    ap.add_argument("--data", default=None, help="BCCD root, the folder holding BCCD/ (default: ../shared/data/bccd "
                                                  "if it exists, else .data/bccd; synthetic shapes if absent)")
    ap.add_argument("--parts", default="1,2,3,4,5", help="comma-separated parts to run (2 includes 2c, compiled)")
    ap.add_argument("--budget-s", type=float, default=None, help="part 5 training budget (default 120; quick 3)")
    ap.add_argument("--deadline-s", type=float, default=None, help="whole-script deadline (default 465; quick 300)")
    ap.add_argument("--no-compile", action="store_true", help="skip part 2c (torch.compile)")
    ap.add_argument("--worker", choices=("pack",), help=argparse.SUPPRESS)
    ap.add_argument("--worker-dir", help=argparse.SUPPRESS)
    ap.add_argument("--rank", type=int, default=0, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv=None) -> int:
    restart()                              # the deadline counts from here (also when called in-process)
    args = parse_args(argv)
    with contextlib.suppress(ImportError):     # repaired annotations: `ssdlab data check` reports those
        from ssd_core.data import DataWarning
        warnings.simplefilter("ignore", DataWarning)
    if args.worker == "pack":
        return pack_worker(Path(args.worker_dir), args.rank)
    import torch
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: --device cuda but torch.cuda.is_available() is False", file=sys.stderr)
        return 2
    plan = Plan.make(args.device, args.quick)
    if plan.quick and args.device == "cpu":
        torch.set_num_threads(1)   # the smoke run: one thread stays fast when other work shares the cores
    if args.budget_s is not None:
        plan.p5_budget_s = args.budget_s
    if args.deadline_s is not None:
        plan.deadline_s = args.deadline_s
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    bad = [p for p in parts if p not in PART_NAMES]
    if bad:
        print(f"gpu_check: --parts: unknown part(s) {bad}; expected some of 1,2,3,4,5", file=sys.stderr)
        return 2
    out = Path(args.out)
    report = Report(out, metadata(args, plan))
    if hasattr(signal, "SIGTERM"):
        signal.signal(signal.SIGTERM, lambda signum, frame: on_sigterm(report))
    m = report.data["meta"]
    report.log(f"gpu_check: {m['command']}")
    report.log(f"  {m['date_utc']}  device {m['device_name']}  torch {m['torch']}  torchvision {m['torchvision']}  "
               f"cuda {m['cuda']}  python {m['python']}  {m['cpu_count']} CPUs  out {out}")
    if args.device == "cuda":
        report.log(f"  torch.cuda.get_device_name(): {torch.cuda.get_device_name()}  "
                   f"({m['gpu_memory_gib']:.1f} GiB, capability {m['capability']}, {m['gpu_count']} GPU(s))")
    scratch = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    try:
        data = None
        if any(p in parts for p in ("3", "4", "5")):
            data = resolve_data(args.data or default_data_arg(), scratch, plan, report)
            m["data"] = {"root": str(data.root), "source": data.source, "subdir": data.subdir,
                         "classes": data.class_names}
            report.log(f"  data: {data.source} at {data.root}")
        report.save()
        device = args.device
        # Minimal time the later parts need, so an early part's cap never eats them.
        reserve = {"1": 0.0, "2": 0.0, "3": 15.0, "4": 45.0, "5": min(plan.p5_budget_s, 60.0) + 30.0}
        if plan.quick:
            reserve = dict.fromkeys(reserve, 0.0)

        def cap(part: str, static: float) -> float:
            later = sum(reserve[p] for p in parts if p > part)
            return max(0.0, min(static, time_left(plan) - later))

        bench = TrainBench(plan, device) if "2" in parts else None
        for part in parts:
            key = PART_NAMES[part]
            if part == "1":
                run_part(report, key, cap("1", plan.p1_cap_s),
                         lambda s: part1_loss_postprocess(report, s, plan, device))
            elif part == "2":
                run_part(report, key, cap("2", plan.p2_cap_s),
                         lambda s: part2_train_step(report, s, plan, device, bench))
            elif part == "3":
                run_part(report, key, cap("3", plan.p3_cap_s), lambda s: part3_input_pipeline(report, s, plan, data))
            elif part == "4":
                run_part(report, key, cap("4", plan.p4_cap_s),
                         lambda s: part4_packing(report, s, plan, device, data, scratch))
            elif part == "5":
                budget = plan.p5_budget_s
                if not plan.quick:   # shrink the training (not below 30 s) rather than overrun the deadline
                    budget = max(30.0, min(budget, time_left(plan) - plan.p5_extra_s))
                run_part(report, key, cap("5", budget + plan.p5_extra_s),
                         lambda s: part5_bccd_training(report, s, plan, device, data, scratch, budget))
        if "2" in parts and not args.no_compile:
            run_compiled(report, plan, device, bench)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        summary(report)
    return 0


def on_sigterm(report: Report) -> None:
    """Killed (e.g. the command's time limit): stop the pack workers, save what there is, leave now."""
    for p in list(CHILDREN):
        with contextlib.suppress(Exception):
            p.kill()
    with contextlib.suppress(Exception):
        for section in report.data["parts"].values():
            if section.get("status") == "running":
                section["status"] = "killed"
                section["seconds"] = elapsed() - section.get("started_at_s", 0.0)
                section["error"] = "SIGTERM: the run was stopped during this part"
        report.log("gpu_check: SIGTERM, saving and exiting")
        summary(report)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(143)


def summary(report: Report) -> None:
    report.log("==== summary")
    for key, s in report.data["parts"].items():
        report.log(f"  {key:20s} {s.get('status', '?'):7s} {s.get('seconds', 0):6.1f} s"
                   + (f"  {s['error']}" if s.get("error") else ""))
    for r in report.data["results"]:
        if r.get("failed"):
            continue
        if "ratio" in r:
            met = "n/a" if r["met"] is None else ("met" if r["met"] else "NOT MET")
            tgt = f">={r['target']:g}" if r["target"] is not None else "report"
            report.log(f"  {r['name']:40s} x{r['ratio']:.2f}  target {tgt:7s} {met}")
        else:
            report.log(f"  {r['name']:40s} {fmt(r['value'])} {r['unit']}")
    report.data["meta"]["finished"] = True
    report.save()
    report.log(f"wrote {report.json_path} ({elapsed():.1f} s in all)")
