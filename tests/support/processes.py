"""Processes seen from /proc and ss: a free port, a process tree, its names, what it listens on (and
LoopbackWatch: that a local Ray listens on 127.0.0.1 only, with token authentication)."""
from __future__ import annotations

import re
import shutil
import socket
import subprocess
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (from /proc), children first."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                kids = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            out += kids
            todo += kids
    return out


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def named(pids, name: str) -> list[int]:
    """The pids whose process name starts with `name` (Linux keeps 15 characters of it)."""
    return [p for p in pids if comm(p) and comm(p).startswith(name[:15])]


def listening(pids: set[int]) -> list[tuple[str, str]]:
    """(local address, process name) of every TCP socket that one of `pids` listens on."""
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True).stdout
    found = []
    for line in out.splitlines():
        owners = [int(p) for p in re.findall(r"pid=(\d+)", line)]
        if any(p in pids for p in owners):
            name = re.search(r'\(\("([^"]+)"', line)
            found.append((line.split()[3], name.group(1) if name else "?"))
    return found


class LoopbackWatch:
    """While active, samples what the processes under `pid` listen on (every 0.5 s) and the GCS's
    environment: for a check that a local Ray listens on 127.0.0.1 only, with token authentication."""

    def __init__(self, pid: int):
        import threading

        self.pid, self.seen, self.gcs_env = pid, set(), ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            pids = set(descendants(self.pid))
            self.seen |= set(listening(pids))
            gcs = named(pids, "gcs_server")
            if gcs and not self.gcs_env:
                try:
                    self.gcs_env = Path(f"/proc/{gcs[0]}/environ").read_bytes().decode(errors="replace")
                except OSError:
                    pass

    def __enter__(self) -> "LoopbackWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)

    def check(self) -> None:
        """Every socket a loopback one (Ray would otherwise take the machine's address, on all
        interfaces), the dashboard agent on none, Ray's token authentication on (Ray's default)."""
        if not shutil.which("ss"):
            return  # iproute2 absent: nothing to look with
        names = {n for _, n in self.seen}
        assert {"gcs_server", "raylet"} <= names, self.seen
        assert all(addr.startswith(("127.0.0.1:", "[::ffff:127.0.0.1]:")) for addr, _ in self.seen), self.seen
        assert not [a for a, n in self.seen if "DashboardAgent" in n], self.seen
        assert "RAY_AUTH_MODE=token" in self.gcs_env.split("\0")
