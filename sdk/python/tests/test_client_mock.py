"""The clients against an in-process fake of the server (httpx.MockTransport; no server)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from runbox import (
    AsyncSandbox,
    AuthenticationError,
    FileOperationsDisabled,
    QuotaExceeded,
    RemoteFileNotFound,
    RunboxConnectionError,
    Sandbox,
    SandboxNotFound,
    SandboxSettings,
)

URL = "http://runbox.test:8080"
KEY = "test-key-123"
TOKEN = "tok-abc"


def stream(*events: dict[str, Any]) -> httpx.Response:
    body = "".join(json.dumps({"timestamp": 1, **e}) + "\n\n" for e in events)
    return httpx.Response(200, content=body.encode(), headers={"content-type": "text/event-stream"})


def error(status: int, code: str, message: str) -> httpx.Response:
    return httpx.Response(status, json={"code": code, "message": message}, headers={"x-request-id": "req-1"})


class FakeServer:
    """Just enough of the lifecycle API and execd to drive the clients."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.created: list[dict[str, Any]] = []
        self.sandboxes: set[str] = set()
        self.files: dict[str, bytes] = {}
        self.quota_left = 100

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.path
        if path.startswith("/v1/"):
            if request.headers.get("OPEN-SANDBOX-API-KEY") != KEY:
                return error(401, "UNAUTHORIZED", "missing or invalid API key")
            assert "X-EXECD-ACCESS-TOKEN" not in request.headers
            return self.lifecycle(request, path[3:])
        prefix = "/sandboxes/"
        if path.startswith(prefix) and "/port/44772" in path:
            sid, rest = path[len(prefix) :].split("/port/44772", 1)
            assert "OPEN-SANDBOX-API-KEY" not in request.headers, "the API key must not go to the sandbox"
            if request.headers.get("X-EXECD-ACCESS-TOKEN") != TOKEN + sid:
                return error(401, "UNAUTHORIZED", "bad token")
            if sid not in self.sandboxes:
                return error(404, "SANDBOX_NOT_FOUND", f"sandbox {sid} not found")
            return self.execd(request, rest)
        return error(404, "NOT_FOUND", path)

    def lifecycle(self, request: httpx.Request, path: str) -> httpx.Response:
        if request.method == "POST" and path == "/sandboxes":
            if self.quota_left <= 0:
                return error(429, "QUOTA_EXCEEDED", "tenant has 20 live sandboxes")
            self.quota_left -= 1
            body = json.loads(request.content)
            self.created.append(body)
            sid = f"sb{len(self.created)}"
            self.sandboxes.add(sid)
            return httpx.Response(202, json={"id": sid, "status": {"state": "Running"}, "metadata": body.get("metadata", {})})
        parts = path.strip("/").split("/")
        if parts[0] == "sandboxes" and len(parts) >= 2:
            sid = parts[1]
            if sid not in self.sandboxes:
                return error(404, "SANDBOX_NOT_FOUND", f"sandbox {sid} not found")
            if request.method == "DELETE" and len(parts) == 2:
                self.sandboxes.discard(sid)
                return httpx.Response(204)
            if request.method == "GET" and len(parts) == 2:
                return httpx.Response(200, json={"id": sid, "status": {"state": "Running"}, "metadata": {}})
            if parts[2:] == ["endpoints", "44772"]:
                return httpx.Response(
                    200,
                    json={"endpoint": f"runbox.test:8080/sandboxes/{sid}/port/44772", "headers": {"X-EXECD-ACCESS-TOKEN": TOKEN + sid}},
                )
        return error(404, "NOT_FOUND", path)

    def execd(self, request: httpx.Request, path: str) -> httpx.Response:
        if path == "/ping":
            return httpx.Response(200, text="pong")
        if path == "/code":
            body = json.loads(request.content)
            code = body["code"]
            if code == "boom":
                return stream(
                    {"type": "init", "text": "e1"},
                    {"type": "error", "error": {"ename": "NameError", "evalue": "name 'boom' is not defined", "traceback": ["Traceback", "NameError"]}},
                    {"type": "execution_complete", "execution_time": 1},
                )
            if code == "while True: pass":
                return stream(
                    {"type": "init", "text": "e1"},
                    {"type": "error", "error": {"ename": "TimeoutError", "evalue": f"the cell ran longer than {body.get('timeout')} ms and was interrupted"}},
                    {"type": "execution_complete"},
                )
            return stream(
                {"type": "init", "text": "e1"},
                {"type": "execution_count", "execution_count": 1},
                {"type": "stdout", "text": "line 1"},
                {"type": "stdout", "text": "line 2"},
                {"type": "result", "results": {"text": repr({"code": code, "timeout": body.get("timeout"), "context": body.get("context")})}},
                {"type": "execution_complete", "execution_time": 3},
            )
        if path == "/command":
            body = json.loads(request.content)
            if body["command"] == "false":
                return stream({"type": "init", "text": "c1"}, {"type": "error", "error": {"ename": "CommandExecError", "evalue": "1"}}, {"type": "execution_complete"})
            return stream({"type": "init", "text": "c1"}, {"type": "stdout", "text": json.dumps(body)}, {"type": "execution_complete"})
        if path == "/files/upload":
            ctype = request.headers["content-type"]
            assert ctype.startswith("multipart/form-data")
            raw = request.content
            boundary = ctype.split("boundary=")[1].encode()
            parts = [p for p in raw.split(b"--" + boundary) if p.strip(b"-\r\n")]
            names = [p.split(b'name="')[1].split(b'"')[0].decode() for p in parts]
            assert names == ["metadata", "file"], names
            meta = json.loads(parts[0].split(b"\r\n\r\n", 1)[1].rstrip(b"\r\n"))
            self.files[meta["path"]] = parts[1].split(b"\r\n\r\n", 1)[1][:-2]
            return httpx.Response(200)
        if path == "/files/download":
            p = request.url.params["path"]
            if p not in self.files:
                return error(404, "FILE_NOT_FOUND", f"{p}: no such file")
            return httpx.Response(200, content=self.files[p])
        return error(404, "NOT_FOUND", path)


@pytest.fixture
def fake() -> FakeServer:
    return FakeServer()


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNBOX_URL", URL)
    monkeypatch.setenv("RUNBOX_API_KEY", KEY)


def test_create_run_and_kill(fake: FakeServer) -> None:
    seen: list[str] = []
    with Sandbox.create(memory=256, cpu=0.5, metadata={"t": "1"}, allowed_modules=["math"], transport=httpx.MockTransport(fake)) as sb:
        assert sb.id == "sb1"
        ex = sb.run_code("x = 1", on_stdout=seen.append, timeout=2.5)
        assert ex.logs.stdout == ["line 1", "line 2"] == seen
        assert ex.execution_count == 1
        assert ex.results[0].is_main_result
        echoed = eval(ex.text or "")
        assert echoed == {"code": "x = 1", "timeout": 2500, "context": {"language": "python"}}
        r = sb.commands.run("echo hi", cwd="/tmp", envs={"A": "b"}, timeout=3)
        assert json.loads(r.stdout) == {"command": "echo hi", "background": False, "cwd": "/tmp", "envs": {"A": "b"}, "timeout": 3000}
        assert r.exit_code == 0
        bad = sb.commands.run("false")
        assert bad.exit_code == 1 and bad.error is not None and bad.error.name == "CommandExecError"
    assert fake.created[0]["resourceLimits"] == {"cpu": "0.5", "memory": "256Mi"}
    assert fake.created[0]["extensions"] == {"runbox.import_allow": "math"}
    assert "sb1" not in fake.sandboxes, "the context manager kills the sandbox"
    methods = [(r.method, r.url.path) for r in fake.requests]
    assert methods[:3] == [("POST", "/v1/sandboxes"), ("GET", "/v1/sandboxes/sb1/endpoints/44772"), ("GET", "/sandboxes/sb1/port/44772/ping")]
    assert methods[-1] == ("DELETE", "/v1/sandboxes/sb1")


def test_errors_carry_the_server_code(fake: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    t = httpx.MockTransport(fake)
    with pytest.raises(SandboxNotFound) as nf:
        Sandbox.connect("nope", transport=t)
    assert nf.value.code == "SANDBOX_NOT_FOUND" and nf.value.status == 404 and nf.value.request_id == "req-1"
    fake.quota_left = 0
    with pytest.raises(QuotaExceeded) as q:
        Sandbox.create(transport=t)
    assert q.value.code == "QUOTA_EXCEEDED" and "20 live" in q.value.message
    monkeypatch.setenv("RUNBOX_API_KEY", "wrong")
    with pytest.raises(AuthenticationError) as a:
        Sandbox.create(transport=t)
    assert a.value.status == 401


def test_connection_refused_is_a_connection_error() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with pytest.raises(RunboxConnectionError):
        Sandbox.create(transport=httpx.MockTransport(refuse))


def test_files_round_trip_and_missing(fake: FakeServer, tmp_path: Path) -> None:
    with Sandbox.create(transport=httpx.MockTransport(fake)) as sb:
        sb.files.write("/workspace/a.txt", "héllo")
        assert fake.files["/workspace/a.txt"] == "héllo".encode()
        assert sb.files.read("/workspace/a.txt") == "héllo"
        assert sb.files.read("/workspace/a.txt", format="bytes") == "héllo".encode()
        src = tmp_path / "src.bin"
        src.write_bytes(bytes(range(256)) * 100)
        sb.files.upload(src, "/workspace/b.bin")
        assert sb.files.download("/workspace/b.bin", tmp_path / "dst.bin") == 25600
        assert (tmp_path / "dst.bin").read_bytes() == src.read_bytes()
        with pytest.raises(RemoteFileNotFound):
            sb.files.read("/workspace/missing")
        with pytest.raises(FileNotFoundError):
            sb.files.download("/workspace/missing", tmp_path / "x")
        assert not (tmp_path / "x").exists() and not (tmp_path / "x.part").exists()


def test_settings_sandbox_is_lazy_and_refuses_files(fake: FakeServer) -> None:
    sb = Sandbox(SandboxSettings(max_memory_mb=64, max_cpu_percent=50, max_execution_time=1, allowed_modules=["math"]), transport=httpx.MockTransport(fake))
    with pytest.raises(FileOperationsDisabled):
        sb.files.write("/workspace/x", "y")
    with pytest.raises(PermissionError):
        sb.files.read("/workspace/x")
    assert not sb.started and fake.requests == [], "refused client-side, before any sandbox exists"
    with sb:
        res = sb.execute("__result__ = 1")
        assert res.value == {"code": "__result__ = 1", "timeout": 1000, "context": {"language": "python"}}
        assert res.stdout == "line 1\nline 2\n" and res.success
        d = sb.safe_execute("boom")
        assert d["success"] is False and d["error_type"] == "runtime_exception"
        assert d["error"] == "NameError: name 'boom' is not defined"
        t = sb.safe_execute("while True: pass")
        assert t["error_type"] == "timeout" and t["result"] is None
        assert set(t) == {"success", "stdout", "stderr", "result", "error", "error_type", "execution_time_ms"}
    body = fake.created[0]
    assert body["resourceLimits"] == {"cpu": "0.5", "memory": "64Mi"}
    assert body["extensions"] == {"runbox.import_allow": "math", "runbox.network": "none"}
    assert len(fake.created) == 1 and not fake.sandboxes


def test_allowed_directories_are_checked_client_side(fake: FakeServer) -> None:
    s = SandboxSettings(allow_file_operations=True, allowed_directories=["./data", "/tmp/out"])
    with Sandbox(s, transport=httpx.MockTransport(fake)) as sb:
        sb.files.write("data/a.txt", "1")
        sb.files.write("/workspace/data/b.txt", "2")
        sb.files.write("/tmp/out/c", "3")
        for bad in ["/etc/passwd", "/workspace/other", "data/../secret", "/tmp/outside"]:
            with pytest.raises(FileOperationsDisabled):
                sb.files.write(bad, "x")


def test_safe_execute_never_raises_on_transport_failure() -> None:
    def down(request: httpx.Request) -> httpx.Response:
        return error(503, "UNAVAILABLE", "server is shutting down")

    d = Sandbox(SandboxSettings(), transport=httpx.MockTransport(down)).safe_execute("1")
    assert d["success"] is False and d["error_type"] == "system_error" and "shutting down" in (d["error"] or "")


def test_async_client(fake: FakeServer) -> None:
    async def main() -> None:
        lines: list[str] = []

        async def on_stdout(line: str) -> None:  # async callbacks are awaited
            lines.append(line)

        async with await AsyncSandbox.create(transport=httpx.MockTransport(fake)) as sb:
            ex = await sb.run_code("1 + 1", on_stdout=on_stdout)
            assert lines == ["line 1", "line 2"] and ex.execution_count == 1
            await sb.files.write("/workspace/f", b"\x00\x01")
            assert await sb.files.read("/workspace/f", format="bytes") == b"\x00\x01"
            assert (await sb.commands.run("false")).exit_code == 1
        assert not fake.sandboxes

        lazy = AsyncSandbox(SandboxSettings(max_execution_time=2), transport=httpx.MockTransport(fake))
        async with lazy:
            d = await lazy.safe_execute("boom")
            assert d["error_type"] == "runtime_exception"
            r = await lazy.execute("v")
            assert r.value["timeout"] == 2000
        assert not fake.sandboxes

    asyncio.run(main())
