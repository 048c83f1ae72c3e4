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
