"""Run a local web server (`mlflow ui`, `optuna-dashboard`) in the foreground for `ssdlab ui` / `ssdlab dashboard`.

    listening(port)                        something accepts connections on 127.0.0.1:port
    serve(cmd, port, what, timeout, ready, log=None)
                                           start `cmd`, wait until it listens, call ready(base URL) (which prints
                                           the URLs), then wait; Ctrl-C or SIGTERM stop the server and return 0.
                                           With `log`, the server's stdout and stderr are appended to that file,
                                           not the terminal; a server that exits before it listens, or does not
                                           listen within `timeout`, is a UserError quoting its last lines there,
                                           and one that exits later prints them too (exit 1 if it said 0)

Ctrl-C and SIGTERM have one handler, installed for the call (so a Ctrl-C stops the server even where the
command was started with SIGINT ignored): it only unwinds the main thread (stopping the server waits on the
process, which the main thread may be doing, holding Popen's lock, so waiting in the handler would hang), and
does so once: later signals, while the server is being stopped, are ignored. The main thread polls the server
rather than blocking in waitpid, so a Ctrl-C that the terminal also sent the server is this command's stop
(exit 0) even when the server is the quicker to exit, not "the server exited".
"""
from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Callable, Optional

from ssd_core.errors import UserError


def listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def check_port(port: int) -> None:
    if not 0 < port < 65536:
        raise UserError(f"--port {port} is not a TCP port")
    if listening(port):
        raise UserError(f"--port {port}: something already listens on 127.0.0.1:{port}; choose another")


class _Stop(Exception):
    pass


TAIL_LINES = 20  # of the server's log, quoted when it fails to start


def _open_log(log: Path):
    """`log` opened for appending, with a line that marks where this start begins; UserError if it cannot be."""
    try:
        log.parent.mkdir(parents=True, exist_ok=True)
        out = open(log, "ab")
        out.write(f"---- {datetime.now().isoformat(timespec='seconds')} ssdlab starts the server ----\n".encode())
        out.flush()
        return out
    except OSError as exc:
        raise UserError(f"{log}: cannot write the server's log there ({exc.strerror or exc})") from None


def _tail(log: Path, start: int, n: int = TAIL_LINES) -> str:
    """The last `n` lines written to `log` after byte `start`, indented."""
    try:
        with open(log, "rb") as f:
            f.seek(start)
            lines = f.read().decode(errors="replace").splitlines()[-n:]
    except OSError:
        lines = []
    return "\n".join(f"  | {line}" for line in lines) or "  (it wrote nothing)"


def serve(cmd: list[str], port: int, what: str, timeout: float, ready: Callable[[str], None],
          log: Optional[Path] = None) -> int:
    out = _open_log(log) if log is not None else None
    start = out.tell() if out is not None else 0
    try:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT if out is not None else None)
    finally:
        if out is not None:
            out.close()  # the server holds its own copy

    def failed(why: str) -> UserError:
        if log is None:
            return UserError(why)
        return UserError(f"{why}; the last lines of its log {log}:\n{_tail(log, start)}")

    def stop():
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    stopping = []  # a second signal (`timeout`, a terminal's Ctrl-C reach the process group) must not cut stop() short

    def on_stop(signum, frame):
        if not stopping:
            stopping.append(signum)
            raise _Stop()

    previous = {sig: signal.signal(sig, on_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        deadline = time.monotonic() + timeout
        while not listening(port):
            if proc.poll() is not None:
                raise failed(f"{what} exited with {proc.returncode} before listening on port {port}")
            if time.monotonic() > deadline:
                raise failed(f"{what} did not listen on 127.0.0.1:{port} within {timeout:g} s")
            time.sleep(0.2)
        ready(f"http://127.0.0.1:{port}")
        while proc.poll() is None:
            time.sleep(0.2)  # a signal's handler runs within this sleep
        code = int(proc.returncode or 0)
        if log is None:
            return code
        print(f"{what} exited with {code}; the last lines of its log {log}:\n{_tail(log, start)}", file=sys.stderr)
        return code or 1
    except (KeyboardInterrupt, _Stop):
        return 0
    finally:
        stopping.append(None)
        stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
