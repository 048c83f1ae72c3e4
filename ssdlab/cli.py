"""The `ssdlab` command.

Each area registers its own sub-commands from a small module under `ssdlab/commands/`
(`register(subparsers)`), so this file stays a table of contents:

    ssdlab data synth|check     ssdlab/commands/data.py
    ssdlab init                 ssdlab/commands/init.py
    ssdlab score                ssdlab/commands/score.py
    ssdlab config show          ssdlab/commands/train.py
    ssdlab train|eval|detect    ssdlab/commands/train.py
    ssdlab sweep                ssdlab/commands/sweep.py
    ssdlab export|deploy bench  ssdlab/commands/deploy.py
    ssdlab report|runs|ui       ssdlab/commands/report.py
    ssdlab server               ssdlab/commands/server.py
    ssdlab dashboard            ssdlab/commands/dashboard.py
    ssdlab import               ssdlab/commands/importer.py

A command handler returns an exit code. `UserError` (bad config, sweep, data, checkpoint, store) is
printed as one clear line and exits 2; anything else is a bug and shows its traceback.

Exit codes (docs/operations.md, "Exit codes"):

    0    done
    1    the work ran and failed: a sweep trial failed (each one's error is printed), training diverged
         (non-finite loss; the last good checkpoint is kept), `data check` found problems
    2    bad input, nothing started: config, sweep, data, checkpoint, MLflow store, command line
    130  interrupted (Ctrl-C, SIGTERM); a sweep continues with --resume
    141  the output pipe was closed early (`ssdlab ... | head`): stops quietly, like other Unix tools
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

# MLflow draws a progress bar for every artifact it downloads and logs its schema migrations: the lab's
# commands print their own lines
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
import logging  # noqa: E402

logging.getLogger("mlflow").setLevel(logging.WARNING)
logging.getLogger("alembic").setLevel(logging.WARNING)

from ssd_core.errors import DiskFullError, NonFiniteLossError, UserError

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 0, 1, 2, 130, 141

COMMAND_MODULES = (
    "ssdlab.commands.data",
    "ssdlab.commands.init",
    "ssdlab.commands.score",
    "ssdlab.commands.train",
    "ssdlab.commands.sweep",
    "ssdlab.commands.deploy",
    "ssdlab.commands.report",
    "ssdlab.commands.server",
    "ssdlab.commands.dashboard",
    "ssdlab.commands.importer",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ssdlab", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="ssdlab: a paper-faithful SSD (Liu et al. 2016) and an ablation lab. Train and evaluate\n"
                    "detectors, run sweeps of arms x seeds or Optuna searches on Ray Tune, log every trial to\n"
                    "MLflow, and regenerate the summary and ablation tables (with confidence intervals) from it.",
        epilog="Start with `make demo` (an ablation sweep and its report). Exit codes: 0 done, 1 a trial or\n"
               "the training failed, 2 bad input, 130 interrupted. `ssdlab COMMAND --help` for each command.")
    parser.add_argument("--version", action="version", version=f"ssdlab {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:  # each registers its subcommands; its heavy imports wait for the handler
        importlib.import_module(name).register(sub)
    return parser


def _version() -> str:
    try:
        from importlib.metadata import version
        return version("ssdlab")
    except Exception:
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, not as "Exception ignored" at exit
    except BrokenPipeError:
        _drop_stdout()
        return EXIT_BROKEN_PIPE
    except UserError as exc:
        print(f"ssdlab {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (NonFiniteLossError, DiskFullError) as exc:  # the work ran and could not go on: one line, exit 1
        print(f"ssdlab {args.command}: error: {exc.strerror if isinstance(exc, DiskFullError) else exc}",
              file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return int(code or 0)


def _drop_stdout() -> None:
    """After EPIPE: point stdout at /dev/null so the interpreter's final flush is quiet too."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # no real file descriptor (captured in tests)
        pass


if __name__ == "__main__":
    sys.exit(main())
