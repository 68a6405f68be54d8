"""Fixtures: a real `runbox serve` for the server-backed tests.

The server comes from $RUNBOX_BIN (default <repo>/target/debug/runbox). When it is missing,
has no `serve` subcommand, or the tests do not run as root, every server-backed test is
SKIPPED with the reason (pytest -rs prints it); it never passes silently.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest

REPO = Path(__file__).resolve().parents[3]
API_KEY = "sdk-tests-key-0123"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _skip_reason(binary: Path) -> str | None:
    if not binary.is_file() or not os.access(binary, os.X_OK):
        return f"RUNBOX SERVER TESTS SKIPPED: no runbox binary at {binary} (build it with `cargo build -p runbox` or set RUNBOX_BIN)"
    try:
        probe = subprocess.run([str(binary), "serve", "--help"], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"RUNBOX SERVER TESTS SKIPPED: cannot run {binary}: {e}"
    if probe.returncode != 0:
        return f"RUNBOX SERVER TESTS SKIPPED: {binary} has no `serve` subcommand yet"
    if os.geteuid() != 0:
        return "RUNBOX SERVER TESTS SKIPPED: not root (sandboxes need root; CI runs as root)"
    return None


class Server:
    def __init__(self, url: str, api_key: str, log: Path) -> None:
        self.url = url
        self.api_key = api_key
        self.log = log

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"


@pytest.fixture(scope="session")
def runbox_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    binary = Path(os.environ.get("RUNBOX_BIN") or REPO / "target" / "debug" / "runbox")
    if not binary.is_absolute():
        binary = REPO / binary
    reason = _skip_reason(binary)
    if reason:
        pytest.skip(reason)
    data = tmp_path_factory.mktemp("runbox-data")
    log = data.parent / "runbox-serve.log"
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ, RUNBOX_API_KEYS=f"sdk:{API_KEY}")
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(binary), "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", str(data)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    server = Server(url, API_KEY, log)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"`runbox serve` exited with {proc.returncode} before answering /health:\n{server.log_tail()}")
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"`runbox serve` did not answer /health within 60 s:\n{server.log_tail()}")
            time.sleep(0.1)
        saved = {k: os.environ.get(k) for k in ("RUNBOX_URL", "RUNBOX_API_KEY")}
        os.environ["RUNBOX_URL"] = url
        os.environ["RUNBOX_API_KEY"] = API_KEY
        yield server
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(data, ignore_errors=True)


@pytest.fixture
def server(runbox_server: Server) -> Server:
    return runbox_server
