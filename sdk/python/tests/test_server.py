"""The sync client against a real `runbox serve` (skipped, loudly, when there is none)."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Iterator

import pytest

from conftest import Server
from runbox import (
    AuthenticationError,
    FileOperationsDisabled,
    RemoteFileNotFound,
    Sandbox,
    SandboxNotFound,
    SandboxSettings,
)

pytestmark = pytest.mark.usefixtures("runbox_server")


@pytest.fixture(scope="module")
def sb(runbox_server: Server) -> Iterator[Sandbox]:
    with Sandbox.create(timeout=600) as s:
        yield s


def test_create_info_kill(server: Server) -> None:
    s = Sandbox.create(metadata={"suite": "sdk"})
    try:
        assert s.id
        info = s.get_info()
        assert info.id == s.id and info.state == "Running" and info.metadata.get("suite") == "sdk"
        assert any(i.id == s.id for i in Sandbox.list())
    finally:
        s.kill()
    with pytest.raises(SandboxNotFound):
        Sandbox.connect(s.id)


def test_context_manager_kills_and_connect_reattaches(server: Server) -> None:
    with Sandbox.create() as s:
        sid = s.id
        s.run_code("kept = 'yes'")
        other = Sandbox.connect(sid)
        try:
            assert other.run_code("kept").text == "'yes'"
        finally:
            other.close()
    with pytest.raises(SandboxNotFound):
        Sandbox.connect(sid)


def test_wrong_api_key_is_an_authentication_error(server: Server) -> None:
    with pytest.raises(AuthenticationError) as e:
        Sandbox.create(api_key="definitely-not-the-key")
    assert e.value.status == 401 and e.value.code


def test_run_code_keeps_state_and_answers_42(sb: Sandbox) -> None:
    lines: list[str] = []
    first = sb.run_code("x = 40\nprint('set', x)\nprint('done')", on_stdout=lines.append)
    assert first.error is None, first.error
    assert first.logs.stdout == ["set 40", "done"] == lines
    second = sb.run_code("x + 2")
    assert second.text == "42"
    assert second.results[0].is_main_result
    assert second.execution_count is not None and first.execution_count is not None
    assert second.execution_count > first.execution_count


def test_separate_contexts_have_separate_state(sb: Sandbox) -> None:
    ctx = sb.create_code_context("python")
    sb.run_code("only_here = 1", context=ctx)
    assert sb.run_code("only_here", context=ctx).text == "1"
    missing = sb.run_code("only_here")
    assert missing.error is not None and missing.error.name == "NameError"


def test_matplotlib_plot_returns_a_png(sb: Sandbox) -> None:
    ex = sb.run_code("import matplotlib.pyplot as plt\nplt.plot([1, 2, 3], [1, 4, 9])\nplt.title('t')\nplt.show()")
    assert ex.error is None, ex.error
    pngs = [r.png for r in ex.results if r.png]
    assert pngs, ex.results
    assert base64.b64decode(pngs[0]).startswith(b"\x89PNG\r\n\x1a\n")


def test_dataframe_html(sb: Sandbox) -> None:
    ex = sb.run_code("import pandas as pd\npd.DataFrame({'a': [1, 2], 'b': ['x', 'y']})")
    assert ex.error is None, ex.error
    main = ex.main_result
    assert main is not None and main.html is not None and "<table" in main.html
    assert "html" in main.formats() and main.text


def test_error_with_traceback(sb: Sandbox) -> None:
    ex = sb.run_code("def f():\n    raise ValueError('boom')\nf()")
    assert ex.error is not None
    assert ex.error.name == "ValueError" and ex.error.value == "boom"
    assert any("f()" in line or "in f" in line for line in ex.error.traceback), ex.error.traceback
    assert ex.text is None


def test_commands_exit_codes_and_output(sb: Sandbox) -> None:
    ok = sb.commands.run("echo hello; echo oops >&2")
    assert (ok.exit_code, ok.stdout, ok.stderr, ok.error) == (0, "hello\n", "oops\n", None)
    bad = sb.commands.run("exit 3")
    assert bad.exit_code == 3 and bad.error is not None and bad.error.name == "CommandExecError"
    env = sb.commands.run("echo $GREETING; pwd", cwd="/tmp", envs={"GREETING": "hi"})
    assert env.stdout == "hi\n/tmp\n"


def test_command_timeout(sb: Sandbox) -> None:
    r = sb.commands.run("sleep 30", timeout=1)
    assert r.exit_code != 0 and r.error is not None


def test_files_round_trip(sb: Sandbox, tmp_path: Path) -> None:
    sb.files.make_dir("/workspace/d/sub")
    sb.files.write("/workspace/d/a.txt", "héllo\n")
    sb.files.write("/workspace/d/b.bin", bytes(range(256)))
    assert sb.files.read("/workspace/d/a.txt") == "héllo\n"
    assert sb.files.read("/workspace/d/b.bin", format="bytes") == bytes(range(256))
    names = sorted(e.name for e in sb.files.list("/workspace/d"))
    assert names == ["a.txt", "b.bin", "sub"]
    assert sb.files.exists("/workspace/d/a.txt") and not sb.files.exists("/workspace/d/nope")
    # the code sees the same files
    assert sb.run_code("open('/workspace/d/a.txt').read()").text == repr("héllo\n")

    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(3 * 1024 * 1024 + 7))
    sb.files.upload(big, "/workspace/d/big.bin")
    back = tmp_path / "back.bin"
    assert sb.files.download("/workspace/d/big.bin", back) == big.stat().st_size
    assert back.read_bytes() == big.read_bytes()

    sb.files.remove("/workspace/d/a.txt")
    assert not sb.files.exists("/workspace/d/a.txt")
    with pytest.raises(RemoteFileNotFound):
        sb.files.read("/workspace/d/a.txt")
    sb.files.remove("/workspace/d")
    assert not sb.files.exists("/workspace/d")


def test_allowed_modules_deny_socket(server: Server) -> None:
    with Sandbox.create(allowed_modules=["math", "json"]) as s:
        assert s.run_code("import math, json\nmath.floor(2.5)").text == "2"
        ex = s.run_code("import socket")
        assert ex.error is not None and "socket" in ex.error.value
        assert ex.error.name in ("ImportBlockedError", "ModuleNotFoundError", "ImportError"), ex.error
    with Sandbox.create(denied_modules=["socket"]) as s:
        ex = s.run_code("import socket")
        assert ex.error is not None and "socket" in ex.error.value


def test_settings_execute_returns___result__(server: Server) -> None:
    settings = SandboxSettings(max_memory_mb=256, max_cpu_percent=50, max_execution_time=10, allowed_modules=["math", "random"])
    with Sandbox(settings) as s:
        r = s.execute("import math\nprint('computing')\n__result__ = {'floor': math.floor(2.5), 'items': [1, 2]}")
        assert r.success, r.error
        assert r.value == {"floor": 2, "items": [1, 2]}
        assert r.stdout == "computing\n"
        assert s.execute("6 * 7").value == 42
        with pytest.raises(FileOperationsDisabled):
            s.files.read("/etc/hostname")
        d = s.safe_execute("import socket")
        assert d["success"] is False and d["error_type"] == "runtime_exception" and "socket" in (d["error"] or "")


def test_safe_execute_classifications(server: Server) -> None:
    with Sandbox(SandboxSettings(max_memory_mb=256, max_execution_time=10, allowed_modules=None)) as s:
        syn = s.safe_execute("def f(:\n  pass")
        assert (syn["success"], syn["error_type"]) == (False, "syntax_error"), syn
        exc = s.safe_execute("1 / 0")
        assert (exc["success"], exc["error_type"]) == (False, "runtime_exception"), exc
        assert "ZeroDivisionError" in (exc["error"] or "")
        ok = s.safe_execute("print('hi')\n__result__ = [1, 2]")
        assert ok == {**ok, "success": True, "stdout": "hi\n", "result": [1, 2], "error": None, "error_type": None}
        assert ok["execution_time_ms"] > 0


def test_safe_execute_timeout(server: Server) -> None:
    with Sandbox(SandboxSettings(max_execution_time=1, allowed_modules=None)) as s:
        d = s.safe_execute("while True: pass")
        assert (d["success"], d["error_type"]) == (False, "timeout"), d
        assert d["execution_time_ms"] < 10_000
        # the sandbox is still usable afterwards
        assert s.safe_execute("1 + 1")["result"] == 2


def test_safe_execute_resource_exhaustion(server: Server) -> None:
    with Sandbox(SandboxSettings(max_memory_mb=64, max_execution_time=30, allowed_modules=None)) as s:
        d = s.safe_execute("x = bytearray(1024 * 1024 * 1024)\nlen(x)")
        assert (d["success"], d["error_type"]) == (False, "resource_exhaustion"), d
