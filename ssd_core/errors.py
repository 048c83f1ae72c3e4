"""Errors a user can fix: bad configs, sweeps, images, annotations, checkpoints.

Every message names the file and the key or object at fault. The CLI prints them as one line and
exits with code 2; they never hide a traceback from a real bug.
"""
from __future__ import annotations


class UserError(Exception):
    """Bad input that the user can fix. The message names the file and the key or object."""


class ConfigError(UserError, ValueError):
    """An experiment config or sweep file is invalid."""


class DataError(UserError):
    """A dataset, image or annotation cannot be read."""


class CheckpointError(UserError):
    """A checkpoint is missing, corrupt or does not match the config."""


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/Inf loss. Raised by ssd_core.train.fit; the last good checkpoint is kept."""


class DiskFullError(OSError):
    """A write failed because the disk holding it is full. The message names the file, the free space left
    and the space the write needed; nothing already written is lost (checkpoints are replaced atomically)."""


def disk_full(path, exc: BaseException | None = None, need_bytes: int | None = None) -> DiskFullError | None:
    """A DiskFullError for a write to `path` that failed with `exc`, when the disk is what failed: ENOSPC
    (or EDQUOT), or torch's "unexpected pos" short write on a disk with (almost) nothing left; else None."""
    import errno
    import os
    import shutil
    from pathlib import Path

    nospace = isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)
    folder = Path(path).parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        free = None
    short_write = exc is not None and "unexpected pos" in str(exc)
    if not nospace and not (short_write and free is not None and free < max(need_bytes or 0, 1 << 20)):
        return None
    mb = lambda b: f"{b / 1e6:.1f} MB"  # noqa: E731
    need = f"; it needs about {mb(need_bytes)}" if need_bytes else ""
    left = f" ({mb(free)} free{need})" if free is not None else ""
    return DiskFullError(errno.ENOSPC, f"{os.fspath(path)}: no space left on the disk holding it{left}: free space "
                                       f"there and continue with --resume")
