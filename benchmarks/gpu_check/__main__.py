"""`python -m benchmarks.gpu_check`: the harness's main (also the pack workers' entry, `--worker pack`)."""
import os
import sys

from benchmarks.gpu_check.harness import main

if __name__ == "__main__":
    try:
        code = main()
    except SystemExit as exc:   # SIGTERM (the JSON is saved by then) or an argparse error
        code = exc.code if isinstance(exc.code, int) else 1
    sys.stdout.flush()
    sys.stderr.flush()
    # Everything is written: leave without waiting for stray pools (compile workers, loader workers)
    # that an interrupted part may have left behind.
    os._exit(code)
