"""Train the demo's three recipes (sweeps/demo_ablation.yaml) at seed 0 with ssd_core.train.fit, one thread,
and write each epoch's non-timing metrics as JSON. Run it at two commits and compare the files to show that
a restructure changed no behaviour; it also runs at commits from before the experiments/sweep
package (the import fallback). About 2.5 minutes on the 2-core machine.

    python -m benchmarks.demo_epochs /tmp/after.json
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch

try:
    from experiments.sweep.validate import load_sweep
except ImportError:  # a commit from before the experiments/sweep package
    from experiments.sweep_spec import load_sweep
from ssd_core.config import apply_overrides
from ssd_core.prior_fit import resolve_priors
from ssd_core.train import fit

TIMING = ("perf/", "cost/", "time", "_s", "img_s", "eta", "sys/")  # keys that measure the machine, not the run


def main(out: str) -> None:
    torch.set_num_threads(1)
    spec = load_sweep("sweeps/demo_ablation.yaml")
    epochs = {}
    for arm in spec.arm_names:
        run_dir = Path(tempfile.mkdtemp()) / "run"
        cfg = spec.trial_config(arm, 0)
        cfg = apply_overrides(cfg, {"data.root": str(Path(cfg.data.root).resolve())})
        fit(resolve_priors(cfg), run_dir=run_dir)
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        epochs[arm] = [{k: v for k, v in r.items() if not any(t in k for t in TIMING)} for r in rows]
    Path(out).write_text(json.dumps(epochs, indent=1, sort_keys=True))
    print({arm: len(rows) for arm, rows in epochs.items()}, sum(len(r) for rows in epochs.values() for r in rows),
          "values")


if __name__ == "__main__":
    main(sys.argv[1])
