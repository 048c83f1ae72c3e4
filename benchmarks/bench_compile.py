"""torch.compile of the training step (train.compile) against eager, on the BCCD model at the precision
train.amp auto resolves to on this CPU (bf16 autocast + channels_last where the CPU has bf16), one thread,
batch 8, as a sweep trial trains it. Adopt compile only if it gives >= ADOPT x.

    python -m benchmarks.bench_compile [--steps 6] [--threads 1] [--config experiments/configs/bccd_mobilenet_v2.yaml]

The step is bench_precision's (fit's Trainer: the forward under autocast through the compiled module, the
MultiBox loss in fp32, backward, AdamW). The first compiled step (compilation) is timed apart; then the
steps alternate eager / compiled and the figures are medians of process CPU time (one thread). Ends with
``RESULT compile_<model> compiled_ms eager_ms ratio compile_s`` (ratio = eager / compiled).
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from benchmarks.bench_precision import batch, interleaved_medians, stepper  # noqa: E402
from ssd_core import precision  # noqa: E402
from ssd_core.config import apply_overrides, load_config  # noqa: E402

CONFIG = Path(__file__).resolve().parents[1] / "experiments" / "configs" / "bccd_mobilenet_v2.yaml"
ADOPT = 1.15


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--config", default=str(CONFIG))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    clock = time.process_time if args.threads == 1 else time.perf_counter
    base = load_config(args.config)
    from ssd_core.prior_fit import resolve_priors
    base = apply_overrides(resolve_priors(base), {"train.device": "cpu", "train.amp": "auto"})
    classes = len(base.data.class_names)
    plan = precision.resolve(base.train, torch.device("cpu"))
    data = batch(base, classes, torch.Generator().manual_seed(0))
    run = {"eager": stepper(base, classes, data),
           "compiled": stepper(apply_overrides(base, {"train.compile": True}), classes, data)}
    run["eager"]()
    t0 = time.perf_counter()
    run["compiled"]()  # compilation
    compile_s = time.perf_counter() - t0
    run["compiled"]()  # a recompile for the second call's shapes / autograd, if any
    e, c = interleaved_medians(run, args.steps, clock).values()
    print(f"{base.name}: {base.model.backbone} {base.model.image_size} px stride {base.model.output_stride}, batch "
          f"{base.train.batch_size}, {plan.describe()}, torch {torch.__version__}, {args.threads} thread(s)")
    print(f"  eager {e:.0f} ms   compiled {c:.0f} ms   speed-up x{e / c:.2f} (median of {args.steps}); first compiled "
          f"step {compile_s:.0f} s; adopt at >= x{ADOPT}: {'yes' if e / c >= ADOPT else 'no'}")
    print(f"RESULT compile_{Path(args.config).stem} {c:.1f} {e:.1f} {e / c:.2f} {compile_s:.0f}", flush=True)


if __name__ == "__main__":
    main()
