"""A BCCD augmentation sweep on one GPU, to a converged budget, in one device command (or more: the .sh beside it).

The arms are a sweep's (`--sweep`, default sweeps/bccd_converged.yaml: flip -> + photometric -> + sample
patch -> + zoom out at 144 epochs; a sweep with a `design:` gives its cumulative path, in the factors' order)
on that sweep's base recipe (its `overrides`: the epochs, the validation period and the budget points
`eval.test_at` included), each arm x seed trained by ssd_core.train.fit in its own process, all packed on
the one GPU (bf16 autocast, each process's CUDA memory capped to its share as fractional-GPU sweep trials
are), on the sweep's experiment config, selection on BCCD/val, BCCD/test scored at the selected checkpoint and at each budget point. The run
dirs, without checkpoints, are bundled into OUT/bccd_ablation_gpu.tar.gz; back on the CPU:

    tar xzf bccd_ablation_gpu.tar.gz && ssdlab import gpu_ablation/runs/* --sweep bccd-converged-gpu --baseline initial
    ssdlab report --sweep bccd-converged-gpu --out docs/results/bccd_converged --format md,csv

On the device (PyTorch, no Ray / MLflow / Optuna; the wheels gpu_check needs in .whl, BCCD in .data/bccd):

    python3 -m benchmarks.gpu_ablation --device cuda --data .data/bccd --out $OUT --concurrency 8   (timeout_s 590)

Sizing (printed and written to gpu_ablation.json before anything trains): from this script's own runs on an
H100 (2026-12-06: 4 packed runs of 3,600 iterations in 237 s, 8 in 393 s, i.e. the GPU saturated at about
91 iterations/s in all under the plan's accounting), the plan takes the iterations each run gets and the
packing, and projects the wall time (the H200 of 2026-11-28, at batch 16 with more host threads, gave less:
1,496 iterations in 120 s alone, 2.69x that with 4 packed); runs still going at --deadline-s, or when the driver gets SIGTERM, are
stopped (they are then incomplete, and `ssdlab import` skips them) so the bundle is always written. A run
longer than one device command (10 minutes) starts the driver in its own session (`setsid`) with an --out
outside $OUT, and later commands on the still-warm machine wait for its bundle. On a CPU, `--quick` runs the
same code on the synthetic shapes at tiny sizes (tests/integration/test_gpu_ablation.py, then imports and
reports the result).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SWEEP = REPO / "sweeps" / "bccd_converged.yaml"
BCCD_CONFIG = REPO / "experiments" / "configs" / "bccd_mobilenet_v2.yaml"   # the default sweep's experiment
BUNDLE = "bccd_ablation_gpu.tar.gz"
# H100, 2026-12-06 (docs/results/bccd_converged/gpu/): the GPU's aggregate training iterations per second
# (bccd_mobilenet_v2, batch 8, bf16) under this plan's accounting, the same with 4 packed (237 s) and 8 packed
# (393 s): saturated from 4 on. Fewer packed runs are assumed no faster each than 4 (not measured alone).
AGGREGATE_IT_S, SATURATED_AT = 91.0, 4
TEST_AT = [0.125, 0.25, 0.5, 1.0]   # where the sweep names none
STARTUP_S, EVAL_S = 25.0, 1.5   # per process: CUDA and data start; per validation of BCCD/val


def per_run_it_s(n: int) -> float:
    """Each of n packed runs' iterations per second (the constants above)."""
    return AGGREGATE_IT_S / max(n, SATURATED_AT)


def arms(sweep: Path = SWEEP) -> list[tuple[str, dict]]:
    """(arm, overrides) on the sweep's base overrides: its explicit `arms`, or its design's cumulative path. The
    sweep is read and validated as `ssdlab sweep` reads it (a bad key is refused naming the file and the key)."""
    from experiments.design import build
    from experiments.sweep.validate import load_sweep

    spec = load_sweep(sweep)
    base = dict(spec.file.overrides or {})
    if spec.file.arms:
        points = [(name, spec.arm_overrides(name)) for name in spec.arm_names]
    elif spec.file.design:
        design = build({**spec.file.design, "type": "cumulative"})
        points = [(name, design.overrides(name)) for name in design.points]
    else:
        raise SystemExit(f"gpu_ablation: {sweep}: no `arms` or `design` to train (a search sweep is not an ablation)")
    return [(name, {**base, **o}) for name, o in points]


def experiment_config(sweep: Path) -> Path:
    """The sweep's `experiment` config, resolved by the sweep spec (experiments/sweep/spec.py)."""
    from experiments.sweep.validate import load_sweep

    return load_sweep(sweep).base_config_path


def plan(args, iters_per_epoch: int) -> dict:
    runs = len(args.arms_list) * len(args.seeds)
    at_once = min(args.concurrency, runs)
    rounds = math.ceil(runs / at_once)
    epochs = args.epochs or math.ceil(args.iterations / iters_per_epoch)
    it_s = per_run_it_s(at_once)
    evals = math.ceil(epochs / args.every)
    projected = rounds * (STARTUP_S + epochs * iters_per_epoch / it_s + evals * EVAL_S)
    return {"runs": runs, "concurrent": at_once, "rounds": rounds, "epochs": epochs,
            "iterations": epochs * iters_per_epoch, "iters_per_epoch": iters_per_epoch,
            "eval_every_epochs": args.every, "test_at": args.test_at, "memory_fraction": round(1 / at_once, 4),
            "assumed_it_s_per_run": round(it_s, 2), "projected_s": round(projected, 1),
            "deadline_s": args.deadline_s, "basis": "H100 2026-12-06: 91 it/s in all, 4 or 8 packed"}


def run_config(args, arm: str, overrides: dict, seed: int, p: dict, out: Path):
    from ssd_core.config import load_config

    o = dict(overrides)
    o.update({"train.epochs": p["epochs"], "train.seed": seed, "eval.every_epochs": args.every,
              "eval.test_at": args.test_at, "train.device": args.device, "train.log_every": 10_000,
              "data.num_workers": args.workers, "output.dir": str(out)})
    if args.quick:  # the synthetic shapes at tiny sizes: the same code path in seconds
        o.update({"data.root": str(out / "data"), "data.train_sets": ["SHAPES/train"], "data.val_sets": ["SHAPES/val"],
                  "data.test_sets": ["SHAPES/test"], "data.class_names": ["circle", "square", "triangle", "cross"],
                  "data.synthetic": {"images": 24, "seed": 0, "image_size": 96}, "model.image_size": 64,
                  "model.width_mult": 0.35, "model.prior_scales": "voc", "train.batch_size": 4,
                  "train.warmup_iters": 2, "data.num_workers": 0})
    elif args.data:
        o["data.root"] = str(Path(args.data).resolve())
    cfg = load_config(args.config, o)
    return cfg.model_copy(update={"name": arm})   # `ssdlab import` names each run's arm by its config name


def worker(spec_path: Path) -> int:
    """One training (a child process): the config from the spec file, the memory cap, fit."""
    import torch

    from ssd_core.build import cap_gpu_memory
    from ssd_core.config import validate_config
    from ssd_core.train import fit

    spec = json.loads(spec_path.read_text())
    cap_gpu_memory(spec["memory_fraction"])
    torch.set_num_threads(spec.get("threads", 1))   # packed processes share the host's cores
    cfg = validate_config(spec["config"], spec["source"])
    if cfg.data.synthetic is not None:
        from ssd_core.synth import ensure_synthetic
        ensure_synthetic(cfg.data.root, **cfg.data.synthetic.model_dump())
    fit(cfg, run_dir=Path(spec["run_dir"]))
    return 0


def iters_per_epoch(cfg) -> int:
    from ssd_core.build import build_dataset

    if cfg.data.synthetic is not None:
        from ssd_core.synth import ensure_synthetic
        ensure_synthetic(cfg.data.root, **cfg.data.synthetic.model_dump())
    n = len(build_dataset(cfg, "train", train=True))
    return max(1, n // cfg.train.batch_size)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--data", default=None, help="the folder holding BCCD/ (default: the config's default root)")
    ap.add_argument("--out", default=os.environ.get("OUT", "gpu_ablation_out"))
    ap.add_argument("--sweep", type=Path, default=SWEEP, help="the sweep YAML whose arms and base recipe to run")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--arms", default=None, help="comma-separated subset of the arms (default: all four)")
    ap.add_argument("--iterations", type=int, default=None,
                    help="at least this many iterations per run (default: the sweep's train.epochs)")
    ap.add_argument("--epochs", type=int, default=None, help="epochs per run (overrides --iterations)")
    ap.add_argument("--every", type=int, default=None,
                    help="validate every this many epochs (selection; default: the sweep's eval.every_epochs, else 4)")
    ap.add_argument("--concurrency", type=int, default=12, help="runs trained at once on the GPU")
    ap.add_argument("--workers", type=int, default=1, help="data loader workers per run")
    ap.add_argument("--deadline-s", type=float, default=540.0, help="stop runs still going after this long")
    ap.add_argument("--quick", action="store_true", help="tiny synthetic sizes on a CPU (the test)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(Path(args.worker))
    t0 = time.monotonic()
    out = Path(args.out)
    (out / "gpu_ablation" / "runs").mkdir(parents=True, exist_ok=True)
    all_arms = arms(args.sweep)
    args.config = experiment_config(args.sweep)
    keep = [a.strip() for a in args.arms.split(",")] if args.arms else [a for a, _ in all_arms]
    unknown = sorted(set(keep) - {a for a, _ in all_arms})
    if unknown:
        ap.error(f"--arms: {', '.join(unknown)} not among {', '.join(a for a, _ in all_arms)}")
    args.arms_list = [(a, o) for a, o in all_arms if a in keep]
    base = args.arms_list[0][1]
    args.every = args.every or base.get("eval.every_epochs", 4)
    args.test_at = base.get("eval.test_at", TEST_AT)
    work = out / "gpu_ablation"
    first = run_config(args, *args.arms_list[0], args.seeds[0], {"epochs": 1}, work)
    ipe = iters_per_epoch(first)
    if args.epochs is None and args.iterations is None:
        from ssd_core.config import load_config

        args.epochs = base.get("train.epochs") or load_config(args.config).train.epochs
    p = plan(args, ipe)
    stop = {"why": None}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(why="stopped by SIGTERM"))
    log = open(out / "gpu_ablation.log", "a")

    def say(line: str) -> None:
        print(line, flush=True)
        log.write(line + "\n")
        log.flush()

    say(f"gpu_ablation: {len(args.arms_list)} arms x {len(args.seeds)} seeds = {p['runs']} runs, {p['concurrent']} at "
        f"once ({p['rounds']} round(s)), {p['epochs']} epochs = {p['iterations']} iterations each, test at {args.test_at}; "
        f"projected {p['projected_s']:.0f} s (deadline {args.deadline_s:.0f} s; {p['basis']})")
    queue = []
    for arm, overrides in args.arms_list:
        for seed in args.seeds:
            cfg = run_config(args, arm, overrides, seed, p, work)
            name = f"{arm.replace('+', 'p_') or 'baseline'}-s{seed}"
            spec = work / f"{name}.json"
            spec.write_text(json.dumps({"config": cfg.model_dump(mode="json"), "source": f"gpu_ablation:{name}",
                                        "memory_fraction": p["memory_fraction"] if p["concurrent"] > 1 else 1.0,
                                        "threads": max(1, (os.cpu_count() or 1) // (2 * p["concurrent"])),
                                        "run_dir": str(work / "runs" / name)}))
            queue.append((name, spec))
    running, done = {}, {}
    while queue or running:
        while queue and len(running) < p["concurrent"]:
            name, spec = queue.pop(0)
            f = open(work / f"{name}.log", "w")
            running[name] = (subprocess.Popen([sys.executable, "-m", "benchmarks.gpu_ablation", "--worker", str(spec)],
                                              cwd=REPO, stdout=f, stderr=subprocess.STDOUT), time.monotonic())
        for name, (proc, started) in list(running.items()):
            if proc.poll() is not None:
                done[name] = {"rc": proc.returncode, "wall_s": round(time.monotonic() - started, 1)}
                say(f"  {name}: exit {proc.returncode} after {done[name]['wall_s']:.0f} s")
                del running[name]
        if stop["why"] is None and time.monotonic() - t0 > args.deadline_s:
            stop["why"] = "stopped at the deadline"
        if stop["why"]:
            for name, (proc, started) in running.items():
                proc.terminate()
                done[name] = {"rc": stop["why"], "wall_s": round(time.monotonic() - started, 1)}
                say(f"  {name}: {stop['why']} (incomplete: ssdlab import will skip it)")
            for name, _ in queue:
                done[name] = {"rc": f"not started ({stop['why']})"}
            queue, running = [], {}
            break
        time.sleep(0.5)
    wall = time.monotonic() - t0
    p.update(wall_s=round(wall, 1), runs_done=done, device=_device(args.device))
    (out / "gpu_ablation.json").write_text(json.dumps(p, indent=1))
    with tarfile.open(out / BUNDLE, "w:gz") as tar:  # run dirs without checkpoints (the device returns <= 16 MiB)
        tar.add(work / "runs", arcname="gpu_ablation/runs",
                filter=lambda ti: None if ti.name.endswith(".pt") or "/." in ti.name else ti)
        tar.add(out / "gpu_ablation.json", arcname="gpu_ablation/gpu_ablation.json")
    ok = sum(1 for d in done.values() if d.get("rc") == 0)
    say(f"gpu_ablation: {ok}/{p['runs']} runs finished in {wall:.0f} s; bundle {out / BUNDLE} "
        f"({(out / BUNDLE).stat().st_size / 1e6:.1f} MB)")
    return 0 if ok == p["runs"] else 1


def _device(device: str) -> str:
    import torch

    if device == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    import platform
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


if __name__ == "__main__":
    sys.exit(main())
