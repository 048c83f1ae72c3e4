"""`ssdlab ui`: the URLs come first, the MLflow server's own output goes to a log file beside the store
(experiments.tracking.store.ui_log), a server that fails at start quotes that log and exits non-zero, and
Ctrl-C or SIGTERM stop the server with the command.

The terminal is one file here (stdout and stderr together, as a terminal shows them), polled until the
command has printed what it should or has ended; nothing waits a fixed time.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("mlflow")

from experiments.tracking.store import UI_LOG, ui_log  # noqa: E402
from ssdlab.serve import TAIL_LINES, listening  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
BY_SCORE = "/runs?orderByKey=metrics.%60score%60&orderByAsc=false"
# Lines of MLflow's server (uvicorn, its own logging, Starlette's warnings) that must stay off the terminal
SERVER_LINE = ("Uvicorn", "INFO", "Warning", "Registry store URI", "Security middleware", "Started server process")

# `ssdlab ui` with a stand-in for `mlflow ui` that starts in a moment (argv: port, store, stand-in code, options)
STAND_IN = """
import sys
from ssdlab.commands import report as commands
from ssdlab.cli import main
commands.ui_command = lambda uri, port: [sys.executable, "-c", sys.argv[3], str(port)]
sys.exit(main(["ui", "--port", sys.argv[1], "--tracking-uri", sys.argv[2], *sys.argv[4:]]))
"""
# Python's own HTTP server, which logs to stderr; on SIGTERM it signals its parent again, as `timeout` and
# others do when they signal the whole process group, then ends
HTTP_SERVER = """
import os, signal, sys
from http.server import HTTPServer, SimpleHTTPRequestHandler
def again(*_):
    os.kill(os.getppid(), signal.SIGTERM)
    sys.exit(0)
signal.signal(signal.SIGTERM, again)
print("stand-in serving", flush=True)
HTTPServer(("127.0.0.1", int(sys.argv[1])), SimpleHTTPRequestHandler).serve_forever()
"""


@pytest.fixture(scope="module")
def store(report_store) -> str:
    return report_store  # conftest's: filled once for the tests that read it


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(argv: list[str], terminal: Path) -> subprocess.Popen:
    with open(terminal, "w") as out:  # the child keeps its own copy
        return subprocess.Popen([sys.executable, *argv], cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _lines_until(proc: subprocess.Popen, terminal: Path, last: str, timeout: float = 240) -> list[str]:
    """The terminal's lines once one starts with `last` (or once the command ended); fails after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = terminal.read_text().splitlines()
        if any(line.startswith(last) for line in lines) or proc.poll() is not None:
            return lines
        time.sleep(0.2)
    pytest.fail(f"`ssdlab ui` printed no {last!r} line within {timeout:g} s: {terminal.read_text()!r}")


def _gone(port: int, timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while listening(port) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not listening(port)


def test_ui_prints_the_urls_first_and_keeps_the_mlflow_server_log_beside_the_store(store, tmp_path):
    """The real `mlflow ui`: the terminal shows the URLs and the log's path, nothing of the server's ~24 lines
    of logs and warnings (which the log file holds), the page serves, and Ctrl-C stops the server."""
    port, terminal, log = _free_port(), tmp_path / "terminal.txt", ui_log(store)
    assert log == Path(store[len("sqlite:///"):]).parent / UI_LOG
    proc = _start(["-m", "ssdlab.cli", "ui", "--port", str(port), "--tracking-uri", store], terminal)
    try:
        lines = _lines_until(proc, terminal, "MLflow server log:")
        assert lines[0] == f"MLflow UI for {store}: http://127.0.0.1:{port}  (Ctrl-C to stop)", lines
        assert lines[1].startswith(f"  ssdlab: http://127.0.0.1:{port}/#/experiments/") and lines[1].endswith(BY_SCORE)
        assert lines[2] == f"MLflow server log: {log}" and len(lines) == 3, lines
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as page:
            assert page.status == 200 and b"<html" in page.read().lower()
        text = log.read_text()
        assert f"Uvicorn running on http://127.0.0.1:{port}" in text and "Application startup complete" in text
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the terminal's whole process group
        assert proc.wait(60) == 0
        assert _gone(port)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    said = terminal.read_text().splitlines()
    assert said == lines, said  # nothing more, from the server's shutdown either
    assert not [line for line in said if any(s in line for s in SERVER_LINE)]


def test_ui_whose_server_cannot_take_the_port_quotes_its_log_and_fails(store, tmp_path):
    """The port is bound by another socket that does not listen (the command's own check passes), so the real
    `mlflow ui` fails to bind: the command exits 2 quoting the server's last log lines, not hanging."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "ssdlab.cli", "ui", "--port", str(port), "--tracking-uri", store],
                              cwd=REPO, capture_output=True, text=True, timeout=240)
    assert done.returncode == 2 and done.stdout == "", (done.stdout, done.stderr)
    first, *tail = done.stderr.splitlines()
    assert first == (f"ssdlab ui: error: mlflow ui exited with 0 before listening on port {port}; "
                     f"the last lines of its log {ui_log(store)}:")
    assert 0 < len(tail) <= TAIL_LINES and all(line.startswith("  | ") for line in tail)
    assert "Address already in use" in tail[-1]


def test_ui_with_a_stand_in_server_logs_it_and_sigterm_stops_it_once(store, tmp_path):
    """The stand-in's own lines go to the log; a second SIGTERM while the server is stopped is ignored."""
    from ssdlab.commands import report as commands
    assert commands.ui_command(store, 5123) == [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", store,
                                                "--host", "127.0.0.1", "--port", "5123"]
    port, terminal = _free_port(), tmp_path / "terminal.txt"
    proc = _start(["-c", STAND_IN, str(port), store, HTTP_SERVER], terminal)
    try:
        lines = _lines_until(proc, terminal, "MLflow server log:")
        assert lines[0].startswith("MLflow UI for") and f"http://127.0.0.1:{port}" in lines[0], lines
        assert lines[-1] == f"MLflow server log: {ui_log(store)}"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as page:  # logged by the stand-in
            assert page.status == 200
        proc.send_signal(signal.SIGTERM)  # the command only; the stand-in sends it a second one while stopping
        assert proc.wait(30) == 0
        assert _gone(port)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert terminal.read_text().splitlines() == lines  # no traceback from the second SIGTERM, no server line
    assert "stand-in serving" in ui_log(store).read_text() and '"GET / HTTP/1.1" 200' in ui_log(store).read_text()


# A server that ends at once, exit 0, on the Ctrl-C the terminal sends the whole process group (as uvicorn does)
QUICK_SERVER = """
import signal, sys
from http.server import HTTPServer, SimpleHTTPRequestHandler
signal.signal(signal.SIGINT, lambda *_: sys.exit(0))
HTTPServer(("127.0.0.1", int(sys.argv[1])), SimpleHTTPRequestHandler).serve_forever()
"""


def test_ctrl_c_stops_ui_with_0_where_it_started_with_sigint_ignored(store, tmp_path):
    """Started where SIGINT is ignored (nohup, some service managers and test runners), a Ctrl-C to the process
    group still stops `ssdlab ui` with exit 0; the server ending first on the same Ctrl-C is not reported as a
    server that exited by itself (exit 1 and its log quoted)."""
    port, terminal = _free_port(), tmp_path / "terminal.txt"
    with open(terminal, "w") as out:
        proc = subprocess.Popen([sys.executable, "-c", STAND_IN, str(port), store, QUICK_SERVER], cwd=REPO, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        lines = _lines_until(proc, terminal, "MLflow server log:")
        assert lines[-1] == f"MLflow server log: {ui_log(store)}", lines
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(30) == 0, terminal.read_text()
        assert _gone(port)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert terminal.read_text().splitlines() == lines


@pytest.mark.parametrize("then, options, why", [
    ("raise SystemExit(3)", [], "exited with 3 before listening"),
    ("time.sleep(120)", ["--timeout", "1"], "did not listen on 127.0.0.1:{port} within 1 s"),
])
def test_ui_whose_server_does_not_start_quotes_only_this_start_of_its_log(store, tmp_path, then, options, why):
    """A server that exits at start, or never listens, is named with the lines it wrote this time, and is gone."""
    log, port = ui_log(store), _free_port()
    with open(log, "a") as f:
        f.write("a line of an earlier start\n")
    code = f"import os, time; print('server pid', os.getpid(), flush=True); {then}"
    done = subprocess.run([sys.executable, "-c", STAND_IN, str(port), store, code, *options], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == "", (done.stdout, done.stderr)
    head, quoted = done.stderr.splitlines()
    assert why.format(port=port) in head and head.endswith(f"the last lines of its log {log}:")
    assert quoted.startswith("  | server pid ")
    pid, deadline = int(quoted.split()[-1]), time.monotonic() + 20
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not os.path.exists(f"/proc/{pid}")  # stopped, not left running
    assert "earlier start" in log.read_text()  # appended to


def test_ui_whose_server_dies_after_it_listened_says_so_with_its_log(store, tmp_path):
    """A server that ends on its own (here after one connection: the command's own probe) is no silent exit 0."""
    code = ("import sys; from http.server import HTTPServer, BaseHTTPRequestHandler; "
            "HTTPServer(('127.0.0.1', int(sys.argv[1])), BaseHTTPRequestHandler).handle_request(); "
            "print('served one connection, leaving', flush=True)")
    terminal = tmp_path / "terminal.txt"
    proc = _start(["-c", STAND_IN, str(_free_port()), store, code], terminal)
    try:
        assert proc.wait(120) == 1
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    lines = terminal.read_text().splitlines()
    assert lines[0].startswith("MLflow UI for") and lines[2] == f"MLflow server log: {ui_log(store)}", lines
    assert lines[3:] == [f"mlflow ui exited with 0; the last lines of its log {ui_log(store)}:",
                         "  | served one connection, leaving"]


def test_ui_refuses_a_missing_store_and_only_prints_a_server_url(capsys):
    from ssdlab.cli import main
    assert main(["ui", "--tracking-uri", "sqlite:////nonexistent/x.db"]) == 2
    assert "/nonexistent/x.db" in capsys.readouterr().err
    assert main(["ui", "--tracking-uri", "http://127.0.0.1:1"]) == 0
    assert "MLflow UI: http://127.0.0.1:1" in capsys.readouterr().out


def test_ui_log_of_a_store_that_is_no_file_is_under_runs():
    assert ui_log("postgresql://lab@db.internal/mlflow") == Path("runs") / UI_LOG
    assert ui_log("sqlite:////data/lab/mlflow.db?timeout=5") == Path("/data/lab") / UI_LOG
