"""Fixtures for driving the OFFICIAL OpenSandbox Python SDKs (PyPI `opensandbox`,
`opensandbox-code-interpreter`, pinned in requirements.txt) against `runbox serve`.

The SDK is used unchanged. The only thing this file adds on top of it is observation:
an httpx spy that records every request/response (method, URL, status) the SDK makes, and
a check that the SDK did not silently swallow a malformed server answer (the SDK logs and
drops stream events it cannot parse instead of raising).

Environment knobs:
  RUNBOX_BIN                 runbox binary (default: <repo>/target/debug/runbox; runbox-agent
                             must sit next to it)
  RUNBOX_TEST_SERVER_LOG     where to copy the server log at the end (default: the temp dir,
                             path printed in the session summary)
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from osb_util import IMAGE, READY_TIMEOUT, REQUEST_TIMEOUT

REPO = Path(__file__).resolve().parents[2]
RUNBOX_BIN = Path(os.environ.get("RUNBOX_BIN", REPO / "target" / "debug" / "runbox"))
TENANT = "osbtest"
API_KEY = "osb-test-key-" + uuid.uuid4().hex[:16]


@dataclass
class RunboxServer:
    port: int
    domain: str
    api_key: str
    data_dir: Path
    log_path: Path
    proc: subprocess.Popen

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError as e:  # pragma: no cover
            return f"<no server log: {e}>"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _skip_loudly(reason: str) -> None:
    banner = "\n" + "!" * 78 + f"\n!!! OpenSandbox SDK suite SKIPPED: {reason}\n" + "!" * 78 + "\n"
    sys.stderr.write(banner)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def runbox_server(tmp_path_factory) -> RunboxServer:
    agent = RUNBOX_BIN.with_name("runbox-agent")
    if not RUNBOX_BIN.is_file() or not agent.is_file():
        _skip_loudly(
            f"runbox binaries missing ({RUNBOX_BIN}, {agent}); "
            "run `cargo build -p runbox -p runbox-agent` first"
        )
    if os.geteuid() != 0:
        _skip_loudly("runbox serve must run as root (sandboxes need namespaces/cgroups)")

    port = _free_port()
    base = tmp_path_factory.mktemp("runbox")
    data_dir = base / "data"
    log_path = base / "server.log"
    env = dict(os.environ)
    env["RUNBOX_API_KEYS"] = f"{TENANT}:{API_KEY}"
    env.setdefault("RUST_LOG", "info")
    log = open(log_path, "wb")
    proc = subprocess.Popen(
        [str(RUNBOX_BIN), "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", str(data_dir)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    server = RunboxServer(port, f"127.0.0.1:{port}", API_KEY, data_dir, log_path, proc)
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            log.close()
            pytest.fail(f"runbox serve exited with {proc.returncode}:\n{server.log_tail()}")
        try:
            r = httpx.get(f"http://{server.domain}/health", timeout=2)
            if r.status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            log.close()
            pytest.fail(f"runbox serve did not answer GET /health within 30 s:\n{server.log_tail()}")
        time.sleep(0.1)

    yield server

    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
    log.close()
    dest = os.environ.get("RUNBOX_TEST_SERVER_LOG")
    if dest:
        shutil.copyfile(log_path, dest)
    sys.stderr.write(f"\n[opensandbox suite] runbox server log: {dest or log_path}\n")


# --------------------------------------------------------------------------------------
# Observation: what did the SDK send, what did it get back?
# --------------------------------------------------------------------------------------

@dataclass
class Exchange:
    method: str
    url: str
    status: int | None
    error: str | None = None
    body: bytes = b""


class HttpSpy:
    def __init__(self) -> None:
        self.exchanges: list[Exchange] = []
        self._lock = threading.Lock()

    def record(self, ex: Exchange) -> None:
        with self._lock:
            self.exchanges.append(ex)

    def find(self, method: str, path_fragment: str) -> list[Exchange]:
        with self._lock:
            return [e for e in self.exchanges if e.method == method and path_fragment in e.url]

    def wait_for(self, method: str, path_fragment: str, timeout: float = 10.0) -> list[Exchange]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.find(method, path_fragment)
            if found:
                return found
            time.sleep(0.05)
        return self.find(method, path_fragment)

    def dump(self) -> str:
        with self._lock:
            return "\n".join(f"{e.method} {e.url} -> {e.status or e.error}" for e in self.exchanges)


def _small_body(request) -> bytes:
    try:
        content = request.content  # raises for streaming (multipart upload) bodies
    except Exception:
        return b""
    return content if len(content) <= 4096 else b""


@pytest.fixture
def http_spy(monkeypatch) -> HttpSpy:
    """Record every HTTP exchange made by any httpx client (the SDK builds its own)."""
    spy = HttpSpy()
    orig_send = httpx.Client.send
    orig_asend = httpx.AsyncClient.send

    def send(self, request, *args, **kwargs):
        body = _small_body(request)
        try:
            resp = orig_send(self, request, *args, **kwargs)
        except Exception as e:
            spy.record(Exchange(request.method, str(request.url), None, repr(e)))
            raise
        spy.record(Exchange(request.method, str(request.url), resp.status_code, None, body))
        return resp

    async def asend(self, request, *args, **kwargs):
        body = _small_body(request)
        try:
            resp = await orig_asend(self, request, *args, **kwargs)
        except Exception as e:
            spy.record(Exchange(request.method, str(request.url), None, repr(e)))
            raise
        spy.record(Exchange(request.method, str(request.url), resp.status_code, None, body))
        return resp

    monkeypatch.setattr(httpx.Client, "send", send)
    monkeypatch.setattr(httpx.AsyncClient, "send", asend)
    return spy


# The SDK swallows events it cannot parse/dispatch (logs and continues), so a schema
# mismatch in runbox's stream would otherwise go unnoticed.
_SWALLOWED = ("Failed to parse SSE", "Error processing event", "Failed to dispatch")


@pytest.fixture(autouse=True)
def _no_swallowed_sdk_errors(request, caplog):
    caplog.set_level(logging.DEBUG, logger="opensandbox")
    caplog.set_level(logging.DEBUG, logger="code_interpreter")
    yield
    rep = getattr(request.node, "rep_call", None)
    if rep is None or not rep.passed:
        return  # the test already failed (or xfailed) on its own: don't pile on
    swallowed = [
        r for r in caplog.records
        if r.name.startswith(("opensandbox", "code_interpreter"))
        and any(s in r.getMessage() for s in _SWALLOWED)
    ]
    errors = []
    if request.node.get_closest_marker("sdk_errors_expected") is None:
        errors = [
            r for r in caplog.records
            if r.name.startswith(("opensandbox", "code_interpreter")) and r.levelno >= logging.ERROR
        ]
    bad = swallowed + [r for r in errors if r not in swallowed]
    if bad:
        lines = "\n".join(f"{r.name} {r.levelname}: {r.getMessage()}" for r in bad[:10])
        pytest.fail(f"the SDK logged errors it did not raise (malformed server answer?):\n{lines}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call":
        item.rep_call = rep


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "sdk_errors_expected: the test provokes SDK errors on purpose (kill, bad key)"
    )


# --------------------------------------------------------------------------------------
# SDK configuration and sandboxes
# --------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def sdk_env(runbox_server):
    """Configure the SDK the documented way, through its env variables, for the session.

    OPEN_SANDBOX_DOMAIN / OPEN_SANDBOX_API_KEY are what the SDK falls back to when no
    ConnectionConfig is passed. Telemetry (POST /v1/metrics/events) is left ON here on
    purpose: runbox must answer it (204); one test checks the switched-off path.
    """
    saved = {k: os.environ.get(k) for k in ("OPEN_SANDBOX_DOMAIN", "OPEN_SANDBOX_API_KEY",
                                             "OPENSANDBOX_DISABLE_METRICS")}
    os.environ["OPEN_SANDBOX_DOMAIN"] = runbox_server.domain
    os.environ["OPEN_SANDBOX_API_KEY"] = runbox_server.api_key
    os.environ.pop("OPENSANDBOX_DISABLE_METRICS", None)
    yield runbox_server
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def conn(sdk_env):
    """Explicit sync ConnectionConfig, as the SDK README shows."""
    from opensandbox.config import ConnectionConfigSync

    def make(**kw):
        kw.setdefault("domain", sdk_env.domain)
        kw.setdefault("protocol", "http")
        kw.setdefault("api_key", sdk_env.api_key)
        kw.setdefault("request_timeout", REQUEST_TIMEOUT)
        return ConnectionConfigSync(**kw)

    return make


@pytest.fixture(scope="session")
def aconn(sdk_env):
    from opensandbox.config import ConnectionConfig

    def make(**kw):
        kw.setdefault("domain", sdk_env.domain)
        kw.setdefault("protocol", "http")
        kw.setdefault("api_key", sdk_env.api_key)
        kw.setdefault("request_timeout", REQUEST_TIMEOUT)
        return ConnectionConfig(**kw)

    return make


def _sandbox_factory(conn):
    from opensandbox import SandboxSync

    created = []

    def make(**kw):
        kw.setdefault("connection_config", conn())
        kw.setdefault("ready_timeout", READY_TIMEOUT)
        kw.setdefault("timeout", timedelta(minutes=10))
        image = kw.pop("image", IMAGE)
        sb = SandboxSync.create(image, **kw)
        created.append(sb)
        return sb

    def cleanup():
        for sb in created:
            with contextlib.suppress(Exception):
                sb.kill()
            with contextlib.suppress(Exception):
                sb.close()

    return make, cleanup


@pytest.fixture
def make_sandbox(conn):
    """Factory for fresh sandboxes, killed when the test ends (runbox enforces a per-tenant
    memory quota, and the SDK asks 2Gi per sandbox by default)."""
    make, cleanup = _sandbox_factory(conn)
    yield make
    cleanup()


@pytest.fixture(scope="module")
def sandbox(conn):
    """One shared sandbox per test module (keeps the suite well under 2 minutes)."""
    make, cleanup = _sandbox_factory(conn)
    yield make(env={"RUNBOX_SUITE_ENV": "from-create", "SPACED": "a b  c"})
    cleanup()
