"""A trial's state in Tune checkpoints: the run dir's files staged into each epoch's
checkpoint with its marker, the newest consistent state restored on resume, the
weights pruned from all but the newest KEEP_STATE checkpoints."""
from __future__ import annotations

import json
import os
import posixpath
import shutil
import tempfile
from pathlib import Path
from typing import Optional

from experiments.sweep.job import HEAVY_FILES, KEEP_STATE, REPORTED, STATE_FILES
from ssd_core import rundir as RD


def state_names(names) -> list[str]:
    """The names among `names` (a folder's files) that a trial's state consists of: STATE_FILES and the
    budget points' detections (ssd_core.rundir.detections_at)."""
    names = set(names)
    return [n for n in STATE_FILES if n in names] + sorted(n for n in names if RD.point_of(n) is not None)


def stage_state(run_dir: Path, into: Path) -> None:
    """The run dir's state files into a checkpoint folder: the large ones hard-linked (fit replaces them
    atomically, so a link keeps this epoch's file), the small ones copied (metrics.jsonl grows in place)."""
    for name in state_names(p.name for p in run_dir.iterdir()):
        src = run_dir / name
        if not src.is_file():
            continue
        if name in HEAVY_FILES:
            try:
                os.link(src, into / name)
                continue
            except OSError:
                pass
        shutil.copy2(src, into / name)


def read_marker(fs, checkpoint_path: str) -> Optional[dict]:
    try:
        with fs.open_input_stream(posixpath.join(checkpoint_path, REPORTED)) as f:
            return json.loads(f.read().decode())
    except Exception:  # missing, unreadable, or not JSON: no marker
        return None


def _state_epoch(last_pt: Path) -> int:
    """The epoch a local last.pt holds (-1 when there is none or it does not load)."""
    from ssd_core.checkpoint import load_checkpoint
    from ssd_core.errors import CheckpointError

    if not last_pt.is_file():
        return -1
    try:
        return int(load_checkpoint(last_pt).get("epoch", -1))
    except (CheckpointError, OSError, ValueError, TypeError):
        return -1


def restore_newest_state(checkpoint, run_dir: Path) -> Optional[int]:
    """Copy the newest state of this trial in storage into `run_dir` when it is newer than the run dir's
    own last.pt (another node trained it, or this node's scratch is gone). The newest is the trial's
    checkpoint with weights whose marker's `state_epoch` is highest (Tune's own pointer may name an
    older checkpoint whose weights the driver has since stripped). Returns the restored epoch, or None."""
    import pyarrow.fs as pafs

    fs = checkpoint.filesystem
    trial_dir = posixpath.dirname(checkpoint.path.rstrip("/"))
    try:
        entries = fs.get_file_info(pafs.FileSelector(trial_dir))
    except (OSError, FileNotFoundError):
        return None
    dirs = sorted((e.path for e in entries if e.type == pafs.FileType.Directory
                   and posixpath.basename(e.path).startswith("checkpoint_")), reverse=True)
    best = None
    for path in dirs:
        if fs.get_file_info(posixpath.join(path, RD.LAST)).type != pafs.FileType.File:
            continue
        marker = read_marker(fs, path)
        if marker is None:
            continue
        epoch = int(marker.get("state_epoch", marker.get("epoch", 0)))
        if best is None or epoch > best[0]:
            best = (epoch, path)
    if best is None or best[0] <= _state_epoch(run_dir / RD.LAST):
        return None
    tmp = Path(tempfile.mkdtemp(prefix=".ssdlab-restore-", dir=run_dir))
    try:
        files = [e for e in fs.get_file_info(pafs.FileSelector(best[1])) if e.type == pafs.FileType.File]
        for name in state_names(posixpath.basename(e.path) for e in files):
            pafs.copy_files(posixpath.join(best[1], name), str(tmp / name), source_filesystem=fs,
                            destination_filesystem=pafs.LocalFileSystem())
        # the whole state of that epoch, nothing newer left beside it
        for name in state_names([*STATE_FILES, *(p.name for p in run_dir.iterdir()), *(p.name for p in tmp.iterdir())]):
            if (tmp / name).is_file():
                os.replace(tmp / name, run_dir / name)
            elif name != RD.CONFIG:
                (run_dir / name).unlink(missing_ok=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return best[0]


def prune_state(checkpoint, keep: int = KEEP_STATE) -> int:
    """In the storage folder of `checkpoint`'s trial, strip the weights (HEAVY_FILES) from every checkpoint
    but the newest `keep`: markers stay (Tune may resume from any checkpoint its saved state names; the
    worker then takes the newest weights, restore_newest_state). Called by the driver for each new
    checkpoint. Returns how many files were deleted."""
    import pyarrow.fs as pafs

    fs = checkpoint.filesystem
    trial_dir = posixpath.dirname(checkpoint.path.rstrip("/"))
    dirs = sorted((e.path for e in fs.get_file_info(pafs.FileSelector(trial_dir))
                   if e.type == pafs.FileType.Directory and posixpath.basename(e.path).startswith("checkpoint_")),
                  reverse=True)
    deleted = 0
    for path in dirs[keep:]:
        for name in HEAVY_FILES:
            target = posixpath.join(path, name)
            if fs.get_file_info(target).type == pafs.FileType.File:
                fs.delete_file(target)
                deleted += 1
    return deleted
