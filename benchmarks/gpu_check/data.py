"""The data parts 3-5 train and measure on: BCCD when present, else the synthetic shapes set (ssd_core.synth),
and the config those parts start from (experiments/configs/bccd_mobilenet_v2.yaml)."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Optional

from benchmarks.gpu_check.plan import Plan
from benchmarks.gpu_check.report import Report

REPO = Path(__file__).resolve().parents[2]
BCCD_CONFIG = REPO / "experiments" / "configs" / "bccd_mobilenet_v2.yaml"


def _config_data_keys() -> set:
    import yaml
    return set((yaml.safe_load(BCCD_CONFIG.read_text()) or {}).get("data") or {})


CONFIG_DATA_KEYS = _config_data_keys() if BCCD_CONFIG.is_file() else set()


@dataclasses.dataclass
class DataSpec:
    root: Path
    subdir: str                 # BCCD or SHAPES
    class_names: list
    source: str                 # "BCCD" or "synthetic"

    def split(self, name: str) -> str:
        return f"{self.subdir}/{name}"

    def overrides(self) -> list[str]:
        """Config overrides that point bccd_mobilenet_v2.yaml at this data (val = the selection split)."""
        out = [f"data.root={self.root}", f"data.train_sets=[{self.split('train')}]",
               f"data.val_sets=[{self.split('val')}]"]
        if "test_sets" in CONFIG_DATA_KEYS:   # the reported split, scored by fit itself
            out.append(f"data.test_sets=[{self.split('test')}]")
        if self.source != "BCCD":
            out.append(f"data.class_names=[{','.join(self.class_names)}]")
        return out


def default_data_arg() -> str:
    shared = REPO.parent / "shared" / "data" / "bccd"
    return str(shared) if shared.is_dir() else ".data/bccd"


def resolve_data(arg: str, scratch: Path, plan: Plan, report: Optional[Report]) -> DataSpec:
    root = Path(arg)
    if not root.is_absolute():
        root = (Path.cwd() / root) if (Path.cwd() / root).exists() else (REPO / root)
    if (root / "BCCD" / "ImageSets" / "Main" / "train.txt").is_file():
        import yaml
        names = yaml.safe_load(BCCD_CONFIG.read_text())["data"]["class_names"]
        return DataSpec(root.resolve(), "BCCD", list(names), "BCCD")
    from ssd_core.synth import SUBDIR, SYNTH_CLASSES, ensure_synthetic
    synth = scratch / "synth"
    if report is not None:
        report.log(f"WARNING: no BCCD at {root} (expected BCCD/ImageSets/Main/train.txt): using the synthetic "
                   f"shapes set ({plan.synth_images} images) in {synth}; the part 5 mAP is NOT a BCCD figure")
    ensure_synthetic(synth, images=plan.synth_images, seed=0, image_size=160)
    return DataSpec(synth.resolve(), SUBDIR, list(SYNTH_CLASSES), "synthetic")


class Repeat:
    """A dataset seen `times` times over (long DataLoader runs without epoch restarts)."""

    def __init__(self, dataset, min_len: int = 50_000):
        self.dataset = dataset
        self.times = max(1, math.ceil(min_len / max(1, len(dataset))))

    def __len__(self) -> int:
        return len(self.dataset) * self.times

    def __getitem__(self, i: int):
        return self.dataset[i % len(self.dataset)]
