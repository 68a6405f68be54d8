"""The async flavour of both SDKs (opensandbox.Sandbox, code_interpreter.CodeInterpreter).

Driven with asyncio.run() so no pytest-asyncio plugin is needed."""

from __future__ import annotations

import asyncio
import hashlib
import os
from datetime import timedelta

from osb_util import IMAGE, READY_TIMEOUT, stdout_text


def test_async_sandbox_end_to_end(aconn):
    from opensandbox import Sandbox, SandboxManager
    from opensandbox.models.execd import RunCommandOpts
    from opensandbox.models.filesystem import DirectoryListEntry
    from opensandbox.models.sandboxes import SandboxFilter

    async def main():
        sb = await Sandbox.create(
            IMAGE,
            connection_config=aconn(),
            ready_timeout=READY_TIMEOUT,
            timeout=timedelta(minutes=5),
            env={"ASYNC_ENV": "yes"},
            metadata={"flavour": "async"},
        )
        try:
            info = await sb.get_info()
            assert info.status.state == "Running"
            assert info.entrypoint == ["tail", "-f", "/dev/null"]

            ex = await sb.commands.run("echo hello")
            assert ex.error is None and stdout_text(ex) == "hello"
            ex = await sb.commands.run('echo "$ASYNC_ENV"; exit 5')
            assert stdout_text(ex) == "yes" and ex.exit_code == 5

            ex = await sb.commands.run("pwd", opts=RunCommandOpts(working_directory="/tmp"))
            assert stdout_text(ex) == "/tmp"

            data = os.urandom(1 << 20)
            await sb.files.write_file("/tmp/async/blob.bin", data)
            assert await sb.files.read_bytes("/tmp/async/blob.bin") == data
            ex = await sb.commands.run("sha256sum /tmp/async/blob.bin")
            assert stdout_text(ex).split()[0] == hashlib.sha256(data).hexdigest()
            entries = await sb.files.list_directory(DirectoryListEntry(path="/tmp/async", depth=1))
            assert [e.path for e in entries] == ["/tmp/async/blob.bin"]
            await sb.files.delete_files(["/tmp/async/blob.bin"])

            # concurrent streams on one sandbox
            outs = await asyncio.gather(*(sb.commands.run(f"sleep 0.2; echo a{i}") for i in range(5)))
            assert [stdout_text(o) for o in outs] == [f"a{i}" for i in range(5)]

            renew = await sb.renew(timedelta(minutes=20))
            assert renew.expires_at > info.expires_at

            mgr = await SandboxManager.create(connection_config=aconn())
            try:
                page = await mgr.list_sandbox_infos(SandboxFilter(metadata={"flavour": "async"}))
                assert sb.id in [i.id for i in page.sandbox_infos]
            finally:
                await mgr.close()
        finally:
            await sb.kill()
            await sb.close()

    asyncio.run(main())


def test_async_code_interpreter(aconn):
    from code_interpreter import CodeInterpreter, SupportedLanguage
    from opensandbox import Sandbox

    async def main():
        sb = await Sandbox.create(IMAGE, connection_config=aconn(), ready_timeout=READY_TIMEOUT)
        try:
            ci = await CodeInterpreter.create(sb, ready_timeout=READY_TIMEOUT)
            try:
                assert (await ci.codes.run("x = 1")).error is None
                ex = await ci.codes.run("x + 1")
                assert ex.result and ex.result[0].text == "2"

                ctx = await ci.codes.create_context(SupportedLanguage.BASH)
                ex = await ci.codes.run("V=7; echo $((V * 6))", context=ctx)
                assert stdout_text(ex) == "42"
                await ci.codes.delete_context(ctx.id)

                ex = await ci.codes.run("raise ValueError('bad value')")
                assert ex.error is not None and ex.error.name == "ValueError"
                assert ex.error.value == "bad value" and ex.error.traceback
            finally:
                await ci.aclose()
        finally:
            await sb.kill()
            await sb.close()

    asyncio.run(main())
