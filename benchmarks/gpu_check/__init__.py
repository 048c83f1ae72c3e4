"""GPU check: every GPU figure the project needs, each against its reference, in one short run.

    python3 -m benchmarks.gpu_check --device cuda --data .data/bccd --out $OUT     (the GPU machine)
    python -m benchmarks.gpu_check --device cpu --quick                           (tiny sizes on a CPU)

How to run it on the lent GPU machine, and the figures of past runs: docs/gpu_check.md. Nothing here imports
Ray, MLflow, Optuna or pycocotools (the GPU machine has none of them).

Parts (select with --parts 1,2,3,4,5), one module each:
  1. loss_postprocess.py  MultiBox loss and post-processing against torchvision's SSD code path
  2. train_step.py        SSD300-VGG16 training step against torchvision's ssd300_vgg16; 2c: ours compiled
  3. input_pipeline.py    the input pipeline alone, and whether it feeds part 2's training rate
  4. packing.py           1, 2, 4 training processes packed on the one GPU (each one: pack_worker.py)
  5. bccd_training.py     a real training on BCCD through ssd_core.train.fit, VOC07 mAP@0.5 on val and test
The harness (harness.py) parses the command line and runs them; plan.py holds the sizes of the full and the
quick run, report.py the RESULT lines and the JSON, runtime.py the deadline clock and the time caps, data.py
the data (BCCD, else the synthetic shapes). Shared synthetic inputs come from benchmarks/inputs.py.

Robustness: every part runs under its own time cap (SIGALRM) inside a global deadline
(--deadline-s, 465 s on CUDA) and inside try/except: a failing part prints
`RESULT <part> FAILED: <one-line error>`, records the error and the rest still run. The JSON
($OUT/gpu_check.json, or --out DIR, default $OUT or ./gpu_check_out) is rewritten after every part, so a
killed run still leaves its results (SIGTERM: the pack workers are killed, the JSON and the summary
written, exit 143); $OUT/gpu_check.log repeats what was printed. Every RESULT line is
`RESULT <name> ours=<x> ref=<y> unit=<u> ratio=<r> target=<t> met=<yes|NO|n/a>`; ratio is always the
speed-up of ours: ours/ref for rates (images/s), ref/ours for times (ms). CUDA targets read "n/a" on a CPU.
"""
from benchmarks.gpu_check.harness import main

__all__ = ["main"]
