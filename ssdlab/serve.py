"""Run a local web server (`mlflow ui`, `optuna-dashboard`) in the foreground for `ssdlab ui` / `ssdlab dashboard`.

    listening(port)                        something accepts connections on 127.0.0.1:port
    serve(cmd, port, what, timeout, ready) start `cmd`, wait until it listens, call ready(base URL) (which prints
                                           the URLs), then wait; Ctrl-C or SIGTERM stop the server and return 0

The SIGTERM handler only unwinds the main thread: stopping the server waits on the process, which the main
thread is already doing inside Popen.wait (holding Popen's lock), so waiting in the handler would hang.
"""
from __future__ import annotations

import signal
import socket
import subprocess
import time
from typing import Callable

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


def serve(cmd: list[str], port: int, what: str, timeout: float, ready: Callable[[str], None]) -> int:
    proc = subprocess.Popen(cmd)

    def stop():
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def on_sigterm(signum, frame):
        raise _Stop()

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        deadline = time.monotonic() + timeout
        while not listening(port):
            if proc.poll() is not None:
                raise UserError(f"{what} exited with {proc.returncode} before listening on port {port}")
            if time.monotonic() > deadline:
                raise UserError(f"{what} did not listen on 127.0.0.1:{port} within {timeout:g} s")
            time.sleep(0.2)
        ready(f"http://127.0.0.1:{port}")
        return int(proc.wait() or 0)
    except (KeyboardInterrupt, _Stop):
        return 0
    finally:
        stop()
        signal.signal(signal.SIGTERM, previous)
