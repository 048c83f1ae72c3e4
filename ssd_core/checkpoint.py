"""Checkpoints: written atomically, loaded with `torch.load(..., weights_only=True)`.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts (no pickled classes):
model, optimizer, scheduler and scaler state, epoch, iteration, the RNG states of torch, CUDA,
numpy, Python and the data loader's generator, the class names and the resolved config.
"""
from __future__ import annotations

import os
import pickle
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch

from ssd_core.errors import CheckpointError, disk_full

REQUIRED_KEYS = ("model", "config", "class_names")


def save_checkpoint(state: dict[str, Any], path: Union[str, os.PathLike]) -> Path:
    """Write `state` to `path` atomically (a temporary file in the same folder, then os.replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:  # a full disk: one line naming the file and the space (the old file stays)
        need = tmp.stat().st_size if tmp.exists() else None
        if tmp.exists():
            tmp.unlink()
        full = disk_full(path, exc, max(need or 0, path.stat().st_size if path.exists() else 0) or None)
        if full is not None:
            raise full from None
        raise
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def load_checkpoint(path: Union[str, os.PathLike], map_location: Union[str, torch.device] = "cpu"
                    ) -> dict[str, Any]:
    """Load a checkpoint written by `save_checkpoint`; CheckpointError naming the file when it is
    missing, corrupt, not a ssdlab checkpoint, or holds pickled objects."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated zip, not a torch file, a pickled object: one line, never "weights_only=False"
        text = str(exc)
        found = re.search(r"GLOBAL (\S+)", text)
        if isinstance(exc, pickle.UnpicklingError) and found:  # weights-only loading refused code to run
            raise CheckpointError(f"{path}: not a checkpoint this tool will load: it holds a pickled Python object "
                                  f"({found.group(1)}), and checkpoints are loaded weights-only (tensors and plain "
                                  f"values), which never runs code from a file") from None
        lines = [ln.strip() for ln in text.splitlines() if ln.strip() and "weights_only" not in ln]
        detail = next((ln for ln in lines if ln.startswith("Unsupported")), lines[0] if lines else "")
        raise CheckpointError(f"{path}: cannot read checkpoint ({type(exc).__name__}: {detail[:200]})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a ssdlab checkpoint (a {type(state).__name__}, expected a dict)")
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"{path}: not a ssdlab checkpoint: missing keys {missing}")
    return state


def load_model_state(model: torch.nn.Module, state: dict[str, Any], path: Union[str, os.PathLike]) -> None:
    """model.load_state_dict with a CheckpointError naming the file on a shape or key mismatch."""
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = "; ".join(line.strip() for line in first[:4])
        raise CheckpointError(f"{path}: checkpoint does not match the model built from the config: {detail}") from None


WEIGHTS_KEYS = ("model", "config", "config_yaml", "config_hash", "config_source", "class_names", "epoch",
                "iteration", "best_metric", "best_epoch")


def export_weights(src: Union[str, os.PathLike], dst: Union[str, os.PathLike]) -> Path:
    """A copy of checkpoint `src` with the model weights and the config only (no optimizer, scheduler,
    RNG states or history): what a run logs to MLflow and a user deploys. It loads like any checkpoint
    (ssd_core.inference.model_from_checkpoint) but cannot resume training."""
    state = load_checkpoint(src)
    return save_checkpoint({k: state[k] for k in WEIGHTS_KEYS if k in state}, dst)


# ---------------------------------------------------------------- the training state


@dataclass
class TrainState:
    """Where a run is: what `fit` saves every epoch (with the model, optimizer, scheduler, scaler and RNG
    states) and restores on resume. `best_metric` is the selection score (None without a val split)."""

    epoch: int = 0
    iteration: int = 0
    history: list = field(default_factory=list)      # one metrics dict per epoch
    best_metric: Optional[float] = None
    best_epoch: Optional[int] = None
    device_seconds: float = 0.0                       # training + evaluation seconds (cost/device_hours)
    elapsed_seconds: float = 0.0                      # wall-clock of the run (time budget, time schedule)

    def save(self, path, model, optimizer, scheduler, scaler, generator, class_names, cfg) -> Path:
        from ssd_core.config import config_hash, to_yaml

        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler.is_enabled() else {},
                 "epoch": self.epoch, "iteration": self.iteration, "rng": rng_state(generator),
                 "history": self.history, "best_metric": self.best_metric, "best_epoch": self.best_epoch,
                 "device_seconds": self.device_seconds, "elapsed_seconds": self.elapsed_seconds,
                 "class_names": list(class_names), "config": cfg.model_dump(mode="json"), "config_yaml": to_yaml(cfg),
                 "config_hash": config_hash(cfg), "config_source": cfg.source}
        return save_checkpoint(state, path)

    @classmethod
    def resume(cls, path, model, optimizer, scheduler, scaler, generator, cfg, device) -> "TrainState":
        """Load `path` into the model, optimizer, scheduler, scaler and RNGs; CheckpointError when it
        was written by another config."""
        from ssd_core.config import config_hash

        state = load_checkpoint(path, map_location=device)
        if state.get("config_hash") != config_hash(cfg):
            raise CheckpointError(f"{path}: written by config {state.get('config_hash')}, "
                                  f"not this config ({config_hash(cfg)}); use another --run-dir")
        load_model_state(model, state, path)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"], generator)
        return cls(int(state["epoch"]), int(state["iteration"]), list(state["history"]), state["best_metric"],
                   state["best_epoch"], float(state.get("device_seconds", 0.0)), float(state.get("elapsed_seconds", 0.0)))


# ---------------------------------------------------------------- RNG states (weights_only friendly)


def rng_state(loader_generator: Optional[torch.Generator] = None) -> dict[str, Any]:
    """torch, CUDA, numpy, Python and data-loader generator states as tensors and lists."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, py_state, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": version, "state": list(py_state), "gauss": py_gauss},
        "loader": loader_generator.get_state() if loader_generator is not None else None,
    }


def set_rng_state(state: dict[str, Any], loader_generator: Optional[torch.Generator] = None) -> None:
    """Restore what `rng_state` captured."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if loader_generator is not None and state.get("loader") is not None:
        loader_generator.set_state(state["loader"])
