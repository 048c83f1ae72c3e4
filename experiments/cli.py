"""The `ssdlab` command.

Each area registers its own sub-commands from a small module under `experiments/commands/`
(`register(subparsers)`), so this file stays a table of contents:

    ssdlab data synth|check     experiments/commands/data.py
    ssdlab score                experiments/commands/score.py
    ssdlab config show          experiments/commands/train.py
    ssdlab train|eval|detect    experiments/commands/train.py
    ssdlab sweep                experiments/commands/sweep.py
    ssdlab report|runs|ui       reports/commands.py

A command handler returns an exit code. `UserError` (bad config, sweep, data, checkpoint) is
printed as one clear line and exits 2; anything else is a bug and shows its traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from ssd_core.errors import UserError

COMMAND_MODULES = (
    "experiments.commands.data",
    "experiments.commands.score",
    "experiments.commands.train",
    "experiments.commands.sweep",
    "reports.commands",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ssdlab", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:  # an area not built yet must not break the others
            if exc.name != name:
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
    except UserError as exc:
        print(f"ssdlab {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
