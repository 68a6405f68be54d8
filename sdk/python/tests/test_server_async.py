"""The async client against a real `runbox serve` (skipped, loudly, when there is none)."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import pytest

from conftest import Server
from runbox import AsyncSandbox, SandboxNotFound, SandboxSettings

pytestmark = pytest.mark.usefixtures("runbox_server")


def test_async_lifecycle_code_commands_files(server: Server, tmp_path: Path) -> None:
    async def main() -> None:
        got: list[str] = []
        async with await AsyncSandbox.create() as sb:
            sid = sb.id
            assert (await sb.get_info()).state == "Running"
            await sb.run_code("x = 40")
            ex = await sb.run_code("print('line')\nx + 2", on_stdout=got.append)
            assert ex.text == "42" and got == ["line"]
            plot = await sb.run_code("import matplotlib.pyplot as plt\nplt.plot([1, 2])\nplt.show()")
            png = next(r.png for r in plot.results if r.png)
            assert base64.b64decode(png).startswith(b"\x89PNG")
            err = await sb.run_code("1/0")
            assert err.error is not None and err.error.name == "ZeroDivisionError" and err.error.traceback
            r = await sb.commands.run("echo hi; exit 4")
            assert (r.stdout, r.exit_code) == ("hi\n", 4)
            await sb.files.write("/workspace/a.txt", "data")
            assert await sb.files.read("/workspace/a.txt") == "data"
            assert "a.txt" in [e.name for e in await sb.files.list("/workspace")]
            src = tmp_path / "up.bin"
            src.write_bytes(b"\x00" * 100_000)
            await sb.files.upload(src, "/workspace/up.bin")
            assert await sb.files.download("/workspace/up.bin", tmp_path / "down.bin") == 100_000
            await sb.files.remove("/workspace/a.txt")
            assert not await sb.files.exists("/workspace/a.txt")
        with pytest.raises(SandboxNotFound):
            await AsyncSandbox.connect(sid)

    asyncio.run(main())


def test_async_safe_execute(server: Server) -> None:
    async def main() -> None:
        async with AsyncSandbox(SandboxSettings(max_execution_time=1, allowed_modules=["math"])) as sb:
            ok = await sb.safe_execute("import math\n__result__ = math.sqrt(16)")
            assert ok["success"] and ok["result"] == 4.0
            assert (await sb.safe_execute("x = (")) ["error_type"] == "syntax_error"
            assert (await sb.safe_execute("raise KeyError('k')"))["error_type"] == "runtime_exception"
            assert (await sb.safe_execute("while True: pass"))["error_type"] == "timeout"
            blocked = await sb.safe_execute("import socket")
            assert blocked["error_type"] == "runtime_exception" and "socket" in (blocked["error"] or "")

    asyncio.run(main())


def test_async_sandboxes_run_concurrently(server: Server) -> None:
    async def one(i: int) -> str | None:
        async with await AsyncSandbox.create() as sb:
            return (await sb.run_code(f"{i} * 2")).text

    async def main() -> None:
        assert await asyncio.gather(*(one(i) for i in range(4))) == ["0", "2", "4", "6"]

    asyncio.run(main())
