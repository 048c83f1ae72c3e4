"""`ssdlab init`: a first config and a starter ablation sweep for a dataset a user brings.

    plan_starter(path, name)      -> Starter: the experiment config and the sweep (as mappings), and the
                                     lines that say what was chosen and why
    write_starter(starter, root)  experiments/configs/NAME.yaml + sweeps/NAME_ablation.yaml (both validated
                                  by reading them back; never over existing files without force)

What is chosen, from the data and this machine, not from any other data set:
    data       format, root, classes and splits as ssd_core/data/detect.py finds them (hashed slices where the
               dataset has no validation or test split, said loudly)
    input      the cheapest input size and first-map stride whose fitted default boxes cover >= 95% of the
               training boxes (ssd_core/prior_fit/choose.py), `model.prior_scales: auto`
    recipe     RECIPE's optimisation (the BCCD recipe: SSDLite-style MobileNetV2 from scratch, AdamW 1e-2 with
               warmup and cosine, bf16 where the machine has it), batch 8 on a CPU and 32 on a GPU
    budget     BUDGET_ITERS iterations, at least MIN_EPOCHS epochs; with `measure`, one training iteration
               is timed here (ssd_core/steptime.py) and what a trial and the sweep cost is printed
    sweep      the paper's augmentation as cumulative arms (AUGMENTATION_PATH), seeds in waves until each delta
               is decided (experiments/sequential.py), the test split scored at TEST_AT of the budget
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "experiments" / "configs" / "bccd_mobilenet_v2.yaml"
BUDGET_ITERS = 3000       # the BCCD recipe's budget: 120 epochs of 25 iterations
MIN_EPOCHS = 30
EVALS = 12                # selection-split evaluations over a run
TEST_AT = [0.25, 0.5, 1.0]
SEEDS = {"start": 2, "max": 6, "step": 2}
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_NONE = {"augment.photometric": False, "augment.zoom_out.p": 0.0, "augment.sample_patch.enabled": False}
AUGMENTATION_PATH = {  # the paper's table: each arm adds one piece to the one before (sec. 3.2, 3.6)
    "initial": ("flip only", {**_NONE, "augment.flip": True}),
    "+photometric": ("+ photometric distortions", {**_NONE, "augment.flip": True, "augment.photometric": True}),
    "+sample_patch": ("+ sample patch", {**_NONE, "augment.flip": True, "augment.photometric": True,
                                         "augment.sample_patch.enabled": True}),
    "+zoom_out": ("+ zoom out (the paper's: p 0.5, up to 4x)", {
        "augment.flip": True, "augment.photometric": True, "augment.sample_patch.enabled": True,
        "augment.zoom_out.p": 0.5, "augment.zoom_out.max": 4.0}),
}


@dataclass
class Starter:
    name: str
    config: dict                      # the experiment config, nested as its YAML
    sweep: dict
    lines: list[str] = field(default_factory=list)   # what was chosen and why, one line each


def plan_starter(path: str | os.PathLike, name: str | None = None, measure: bool = True, say=print) -> Starter:
    """The config and sweep for the dataset at `path` (module docstring); `say` gets each line as it is known."""
    import numpy as np
    import torch

    from ssd_core.build import build_dataset
    from ssd_core.config import apply_overrides, validate_config
    from ssd_core.data.detect import detect_layout
    from ssd_core.errors import ConfigError
    from ssd_core.prior_fit import training_boxes
    from ssd_core.prior_fit.choose import choose_input
    from ssd_core.steptime import step_seconds

    layout = detect_layout(path)
    name = name or default_name(layout.root)
    if not NAME.match(name):
        raise ConfigError(f"--name {name!r}: use letters, digits and _ . - only (it names files and the sweep)")
    lines: list[str] = []

    def note(line: str) -> None:
        lines.append(line)
        say(line)

    for line in layout.notes:
        note(line)
    gpu = torch.cuda.is_available()
    doc = yaml.safe_load(RECIPE.read_text())
    data = {k.split(".", 1)[1]: v for k, v in layout.data_keys().items() if v not in (None, [])}
    data["root"] = _portable(layout.root)
    doc.update(name=name, data={**data, "num_workers": 0}, tracking={"experiment": name})
    doc["train"].update(batch_size=32 if gpu else 8, device="auto", amp="auto")
    cfg = validate_config(doc, source=f"{name} (from {RECIPE.name})")
    train_ds = build_dataset(cfg, "train", train=True)
    names = list(train_ds.class_names)
    doc["data"]["class_names"] = names  # written down: the label order never depends on what a split holds
    boxes, labels, _ = training_boxes(cfg, build_dataset(cfg, "train", train=False, transform=False))
    counts = {s: len(ds) for s in ("train", "val", "test")
              if (ds := build_dataset(cfg, s, train=False, class_names=names, transform=False)) is not None}
    note(f"classes ({len(names)}): {', '.join(names)}; images: " + ", ".join(f"{s} {n}" for s, n in counts.items())
         + f"; {len(boxes)} training boxes")
    if len(boxes) == 0:
        raise ConfigError(f"{path}: the training split has no boxes: nothing to learn from")
    sides = [max(train_ds.image_size(k)) for k in range(len(train_ds))]
    choice = choose_input(cfg, boxes, labels, names, max_side=int(np.median(sides)))
    note("input: " + choice.reason())
    for c in choice.candidates:
        say(f"    {'*' if c is choice.chosen else ' '} {c.line()}")
    doc["model"].update(image_size=choice.chosen.image_size, output_stride=choice.chosen.stride, prior_scales="auto")
    per_epoch = max(1, len(train_ds) // doc["train"]["batch_size"])
    epochs = max(MIN_EPOCHS, math.ceil(BUDGET_ITERS / per_epoch))
    doc["train"]["epochs"] = epochs
    doc["eval"] = {**doc.get("eval", {}), "every_epochs": max(1, epochs // EVALS)}
    note(f"recipe: {RECIPE.name}'s optimisation from scratch ({doc['train']['optimizer']} lr {doc['train']['lr']}, "
         f"{doc['train']['schedule']['type']} schedule), batch {doc['train']['batch_size']} on "
         f"{'a GPU' if gpu else 'this CPU'}, bf16 where the device has it (train.amp auto)")
    budget = f"budget: {epochs} epochs = {epochs * per_epoch} iterations of batch {doc['train']['batch_size']}"
    if measure:
        final = apply_overrides(load_config_doc(doc), choice.chosen.keys)  # the fitted boxes: no second fit
        secs = step_seconds(final, build_dataset(final, "train", train=True))
        hours = secs * epochs * per_epoch * 1.1 / 3600  # + ~10% for evaluation
        budget += (f"; one iteration takes {secs:.2f} s here ({'GPU' if gpu else 'one CPU thread, as a sweep trial'}): "
                   f"about {hours:.1f} h a trial, {hours * 8 / _concurrent(gpu):.1f} h for the sweep's first wave "
                   f"(4 arms x 2 seeds, {_concurrent(gpu)} at a time), up to {hours * 24 / _concurrent(gpu):.1f} h "
                   f"with 6 seeds")
    note(budget)
    note(f"for a first look on a short budget: ssdlab sweep sweeps/{name}_ablation.yaml -o train.epochs="
         f"{max(2, epochs // 10)}")
    sweep = starter_sweep(name, gpu)
    load_config_doc(doc)  # the config must load as written
    return Starter(name, doc, sweep, lines)


def load_config_doc(doc: dict):
    from ssd_core.config import validate_config
    return validate_config(doc, source=f"{doc.get('name')}.yaml")


def starter_sweep(name: str, gpu: bool) -> dict:
    return {
        "name": f"{name}-ablation",
        "description": f"the paper's augmentation as cumulative arms on {name} (SSDLite MobileNetV2 from scratch), "
                       f"seeds in waves until each delta is decided",
        "experiment": f"../experiments/configs/{name}.yaml",
        "overrides": {"eval.test_at": TEST_AT, "train.log_every": 1000},
        "arms": {arm: {"note": note, "overrides": over} for arm, (note, over) in AUGMENTATION_PATH.items()},
        "seeds": dict(SEEDS),
        "resources": {"cpu": 2, "gpu": 1} if gpu else {"cpu": 1, "gpu": 0},
        "max_concurrent": _concurrent(gpu),
        "failure": {"max_failures": 1},
        "tracking": {"uri": "sqlite:///mlflow.db", "experiment": name, "log_checkpoints": True},
    }


def starter_paths(root: str | os.PathLike, name: str) -> tuple[Path, Path]:
    """(experiments/configs/NAME.yaml, sweeps/NAME_ablation.yaml) under `root`."""
    return Path(root) / "experiments" / "configs" / f"{name}.yaml", Path(root) / "sweeps" / f"{name}_ablation.yaml"


def refuse_overwrite(paths, force: bool) -> None:
    from ssd_core.errors import ConfigError

    for path in paths:
        if path.exists() and not force:
            raise ConfigError(f"{path}: already exists; ssdlab init does not overwrite it without --force")


def write_starter(starter: Starter, root: str | os.PathLike = ".", force: bool = False) -> tuple[Path, Path]:
    """Write the config and the sweep under `root`; each read back through the loaders users run."""
    from experiments.sweep.validate import load_sweep
    from ssd_core.config import load_config
    from ssd_core.errors import ConfigError

    config, sweep = starter_paths(root, starter.name)
    refuse_overwrite((config, sweep), force)
    header = "".join(f"# {line}\n" for line in [f"Written by `ssdlab init` for {starter.name}:"] + starter.lines)
    for path, doc in ((config, starter.config), (sweep, starter.sweep)):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(header + yaml.safe_dump(doc, sort_keys=False, default_flow_style=None, width=120))
        tmp.replace(path)
    load_config(config)
    if load_sweep(sweep).name != starter.sweep["name"]:
        raise ConfigError(f"{sweep}: read back as another sweep")
    return config, sweep


def _concurrent(gpu: bool) -> int:
    import torch
    return max(1, torch.cuda.device_count()) if gpu else max(1, min(4, os.cpu_count() or 1))


def default_name(root: Path) -> str:
    base = (root.parent if root.is_file() else root).name
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", base).strip("._-").lower() or "dataset"


def _portable(path: Path) -> str:
    """The data root as the config keeps it: relative to the repository when that is short, else absolute."""
    rel = os.path.relpath(Path(path).resolve(), REPO)
    return rel if not rel.startswith(os.path.join("..", "..")) else str(Path(path).resolve())
