"""The `ssdlab` command: cli.py parses and dispatches, one module per command under commands/. The top of
the import graph: it may import ssd_core, experiments and reports; nothing imports it."""
