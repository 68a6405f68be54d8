"""The asyncio client: :class:`AsyncSandbox` with its ``commands`` and ``files`` (the same API as
:class:`runbox.Sandbox`, awaited)."""

from __future__ import annotations

import asyncio
import builtins
import json
import os
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Any, AsyncIterator, Callable, Literal, Mapping, Sequence, overload

import httpx

from . import _core
from ._config import EXECD_PORT, ConnectionConfig
from ._core import FilePolicy, Timeout
from ._events import CommandBuilder, EventParser, ExecutionBuilder
from .compat import ExecuteResult, SafeExecuteResult, SandboxSettings, execute_result, failed_result
from .errors import NotFoundError, RunboxError, SandboxNotFound, SandboxTimeoutError, ServerError
from .models import (
    CodeContext,
    CommandResult,
    EntryInfo,
    Execution,
    ExecutionError,
    OutputHandler,
    Result,
    SandboxInfo,
)

__all__ = ["AsyncSandbox", "AsyncCommands", "AsyncFiles"]


class _Client:
    """One httpx client for the lifecycle API and the sandbox's execd API (same server)."""

    def __init__(self, config: ConnectionConfig, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.config = config
        self.http = httpx.AsyncClient(timeout=httpx.Timeout(config.request_timeout), follow_redirects=False, transport=transport)

    async def close(self) -> None:
        await self.http.aclose()

    async def api(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: Any = None,
        sandbox_route: bool = False,
        ok: tuple[int, ...] = (),
    ) -> httpx.Response:
        try:
            resp = await self.http.request(
                method, self.config.api(path), json=json_body, params=params, headers=self.config.headers()
            )
        except httpx.HTTPError as e:
            raise _core.transport_error(e, f"{method} {path}") from e
        if resp.status_code in ok:
            return resp
        return _core.check(resp, sandbox_route=sandbox_route)


def _ctx_body(code: str, language: str, context: CodeContext | str | None, timeout: float | None) -> dict[str, Any]:
    body: dict[str, Any] = {"code": code}
    if isinstance(context, CodeContext):
        body["context"] = {"id": context.id, "language": context.language}
    elif isinstance(context, str):
        body["context"] = {"id": context, "language": language}
    else:
        body["context"] = {"language": language}
    if timeout is not None:
        body["timeout"] = max(1, int(timeout * 1000))
    return body


class AsyncSandbox:
    """A runbox sandbox.

    ``await AsyncSandbox.create(...)`` starts one now; ``AsyncSandbox(SandboxSettings(...))``
    starts one with those limits on first use::

        async with await AsyncSandbox.create() as sb:
            print((await sb.run_code("6 * 7")).text)
    """

    def __init__(
        self,
        settings: SandboxSettings | None = None,
        *,
        url: str | None = None,
        api_key: str | None = None,
        request_timeout: float | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._settings = settings
        self._transport = transport
        self._config = ConnectionConfig.resolve(url, api_key, request_timeout)
        self._client: _Client | None = None
        self._id: str | None = None
        self._execd_url = ""
        self._execd_headers: dict[str, str] = {}
        self._run_timeout: float | None = None
        self._files_policy = FilePolicy()
        if settings is not None:
            self._run_timeout = float(settings.max_execution_time) if settings.max_execution_time else None
            self._files_policy = FilePolicy(settings.allow_file_operations, settings.allowed_directories)
        self.commands = AsyncCommands(self)
        self.files = AsyncFiles(self)

    # ---- lifecycle ----

    @classmethod
    async def create(
        cls,
        timeout: Timeout = _core.DEFAULT_SANDBOX_TIMEOUT,
        memory: str | int | None = "512Mi",
        cpu: str | int | float | None = "1",
        env: Mapping[str, str] | None = None,
        metadata: Mapping[str, str] | None = None,
        pids: int | None = None,
        allowed_modules: str | Sequence[str] | None = None,
        denied_modules: str | Sequence[str] | None = None,
        image: str = "default",
        *,
        network: str | None = None,
        output_limit: int | None = None,
        idle_timeout: Timeout = None,
        extensions: Mapping[str, str] | None = None,
        url: str | None = None,
        api_key: str | None = None,
        request_timeout: float | None = None,
        ready_timeout: float = _core.READY_TIMEOUT,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> "AsyncSandbox":
        """Creates a sandbox and waits until its agent answers.

        ``timeout`` is the sandbox's lifetime in seconds (None: until killed); ``memory`` a
        quantity (``"512Mi"``) or MiB; ``cpu`` cores (``"1"``, ``0.5``, ``"500m"``);
        ``allowed_modules``/``denied_modules`` the Python import policy; ``pids`` the process
        limit; ``extensions`` any other ``runbox.*`` option.
        """
        sb = cls(url=url, api_key=api_key, request_timeout=request_timeout, transport=transport)
        body = _core.build_create_request(
            image=image,
            timeout=timeout,
            memory=memory,
            cpu=cpu,
            env=env,
            metadata=metadata,
            pids=pids,
            allowed_modules=allowed_modules,
            denied_modules=denied_modules,
            network=network,
            output_limit=output_limit,
            idle_timeout=idle_timeout,
            extensions=extensions,
        )
        await sb._start(body, ready_timeout)
        return sb

    @classmethod
    async def connect(
        cls,
        sandbox_id: str,
        *,
        url: str | None = None,
        api_key: str | None = None,
        request_timeout: float | None = None,
        ready_timeout: float = _core.READY_TIMEOUT,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> "AsyncSandbox":
        """Attaches to an existing sandbox (raises :class:`SandboxNotFound` when it is gone)."""
        sb = cls(url=url, api_key=api_key, request_timeout=request_timeout, transport=transport)
        sb._client = _Client(sb._config, sb._transport)
        try:
            await sb._client.api("GET", f"/sandboxes/{sandbox_id}", sandbox_route=True)
            sb._id = sandbox_id
            await sb._attach(ready_timeout)
        except BaseException:
            await sb.close()
            raise
        return sb

    @classmethod
    async def list(
        cls,
        *,
        state: str | None = None,
        metadata: Mapping[str, str] | None = None,
        url: str | None = None,
        api_key: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> builtins.list[SandboxInfo]:
        """The tenant's sandboxes (all pages)."""
        client = _Client(ConnectionConfig.resolve(url, api_key), transport)
        try:
            out: builtins.list[SandboxInfo] = []
            page = 1
            while True:
                params: builtins.list[tuple[str, str]] = [("page", str(page)), ("pageSize", "100")]
                if state:
                    params.append(("state", state))
                for k, v in (metadata or {}).items():
                    params.append(("metadata", f"{k}={v}"))
                data = (await client.api("GET", "/sandboxes", params=params)).json()
                out.extend(SandboxInfo.from_json(item) for item in data.get("items") or [])
                if not (data.get("pagination") or {}).get("hasNextPage"):
                    return out
                page += 1
        finally:
            await client.close()

    async def _start(self, body: dict[str, Any], ready_timeout: float) -> None:
        self._client = _Client(self._config, self._transport)
        try:
            created = (await self._client.api("POST", "/sandboxes", json_body=body)).json()
        except BaseException:
            await self.close()
            raise
        sandbox_id = created.get("id") if isinstance(created, dict) else None
        if not sandbox_id:
            await self.close()
            raise RunboxError(f"the server's create answer has no id: {created!r}")
        self._id = str(sandbox_id)
        try:
            await self._attach(ready_timeout)
        except BaseException:
            try:
                await self.kill()
            except RunboxError:
                pass
            raise

    async def _attach(self, ready_timeout: float) -> None:
        client = self._require_client()
        ep = (await client.api("GET", _core.endpoint_path(self.id, EXECD_PORT), sandbox_route=True)).json()
        self._execd_url, self._execd_headers = _core.execd_base(self._config, ep)
        await self._wait_ready(ready_timeout)

    async def _wait_ready(self, ready_timeout: float) -> None:
        client = self._require_client()
        deadline = time.monotonic() + ready_timeout
        last: str = "no answer yet"
        while True:
            try:
                resp = await client.http.get(self._execd_url + "/ping", headers=self._execd_headers, timeout=5.0)
                if resp.status_code == 200:
                    return
                if resp.status_code in (401, 403, 404):
                    _core.check(resp, sandbox_route=True)
                last = f"HTTP {resp.status_code}"
            except httpx.HTTPError as e:
                last = f"{e.__class__.__name__}: {e}"
            if time.monotonic() >= deadline:
                raise SandboxTimeoutError(f"sandbox {self._id} did not become ready in {ready_timeout:g} s ({last})")
            await asyncio.sleep(_core.PING_INTERVAL)

    def _require_client(self) -> _Client:
        if self._client is None:
            raise RunboxError("this sandbox is closed")
        return self._client

    async def _ensure(self) -> _Client:
        """The started sandbox's client; a settings-made sandbox is created here on first use."""
        if self._id is None:
            if self._client is not None:
                raise RunboxError("this sandbox is being created")
            kwargs = self._settings.create_kwargs() if self._settings is not None else {}
            await self._start(_core.build_create_request(**kwargs), _core.READY_TIMEOUT)
        return self._require_client()

    @property
    def id(self) -> str:
        """The sandbox's id (a settings-made sandbox must be started first: ``await sb.start()``)."""
        if self._id is None:
            raise RunboxError("this sandbox has not been created yet: await start() (or run something) first")
        return self._id

    async def start(self) -> "AsyncSandbox":
        """Creates a settings-made sandbox now (it is otherwise created on first use)."""
        await self._ensure()
        return self

    @property
    def settings(self) -> SandboxSettings | None:
        return self._settings

    @property
    def started(self) -> bool:
        return self._id is not None

    async def get_info(self) -> SandboxInfo:
        client = await self._ensure()
        return SandboxInfo.from_json((await client.api("GET", f"/sandboxes/{self.id}", sandbox_route=True)).json())

    async def is_running(self) -> bool:
        try:
            return (await self.get_info()).state == "Running"
        except SandboxNotFound:
            return False

    async def set_timeout(self, timeout: Timeout) -> str | None:
        """Extends (or shortens) the sandbox's life to ``timeout`` seconds from now; returns the
        new ``expiresAt``."""
        import datetime as dt

        secs = _core.seconds(timeout)
        if secs is None:
            raise ValueError("set_timeout needs a number of seconds")
        at = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=secs)
        body = {"expiresAt": at.isoformat().replace("+00:00", "Z")}
        data = (await (await self._ensure()).api("POST", f"/sandboxes/{self.id}/renew-expiration", json_body=body, sandbox_route=True)).json()
        return data.get("expiresAt") if isinstance(data, dict) else None

    async def pause(self) -> None:
        await (await self._ensure()).api("POST", f"/sandboxes/{self.id}/pause", sandbox_route=True)

    async def resume(self) -> None:
        await (await self._ensure()).api("POST", f"/sandboxes/{self.id}/resume", sandbox_route=True)
        await self._wait_ready(_core.READY_TIMEOUT)

    async def kill(self) -> None:
        """Deletes the sandbox (a sandbox that is already gone is fine) and closes the client."""
        if self._client is None:
            return
        try:
            if self._id is not None:
                await self._client.api("DELETE", f"/sandboxes/{self._id}", sandbox_route=True, ok=(404,))
        finally:
            await self.close()

    async def close(self) -> None:
        """Closes the HTTP client without deleting the sandbox."""
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def __aenter__(self) -> "AsyncSandbox":
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._id is None:
            await self.close()
            return
        try:
            await self.kill()
        except RunboxError:
            if exc is None:
                raise

    def __repr__(self) -> str:
        return f"AsyncSandbox(id={self._id!r})"

    # ---- execd plumbing ----

    async def _execd(
        self,
        method: str,
        path: str,
        *,
        params: Any = None,
        json_body: Any = None,
        file_route: bool = False,
        ok: tuple[int, ...] = (),
        **kwargs: Any,
    ) -> httpx.Response:
        client = await self._ensure()
        try:
            resp = await client.http.request(
                method, self._execd_url + path, params=params, json=json_body, headers=self._execd_headers, **kwargs
            )
        except httpx.HTTPError as e:
            raise _core.transport_error(e, f"{method} {path}") from e
        if resp.status_code in ok:
            return resp
        return _core.check(resp, file_route=file_route)

    async def _stream(self, path: str, body: dict[str, Any], run_timeout: float | None) -> AsyncIterator[dict[str, Any]]:
        client = await self._ensure()
        parser = EventParser()
        try:
            async with client.http.stream(
                "POST",
                self._execd_url + path,
                json=body,
                headers=self._execd_headers,
                timeout=_core.stream_timeout(self._config, run_timeout),
            ) as resp:
                if resp.status_code >= 400:
                    await resp.aread()
                    _core.check(resp)
                async for chunk in resp.aiter_bytes():
                    for event in parser.feed(chunk):
                        yield event
        except httpx.HTTPError as e:
            raise _core.transport_error(e, f"POST {path}") from e
        for event in parser.close():
            yield event

    # ---- code ----

    async def run_code(
        self,
        code: str,
        language: str = "python",
        context: CodeContext | str | None = None,
        timeout: float | None = None,
        on_stdout: OutputHandler | None = None,
        on_stderr: OutputHandler | None = None,
        on_result: Callable[[Result], Any] | None = None,
        on_error: Callable[[ExecutionError], Any] | None = None,
    ) -> Execution:
        """Runs code in a stateful context (the language's default one unless ``context`` is
        given) and returns everything it produced. ``timeout`` (seconds) interrupts the cell.
        Errors in the code are in ``.error``, not raised."""
        if timeout is None:
            timeout = self._run_timeout
        builder = ExecutionBuilder(on_stdout, on_stderr, on_result, on_error)
        async for event in self._stream("/code", _ctx_body(code, language, context, timeout), timeout):
            builder.apply(event)
            while builder.pending:
                await builder.pending.pop(0)
        if not builder.complete and builder.execution.error is None:
            raise ServerError("the execution stream ended before the execution completed")
        return builder.finish()

    async def create_code_context(self, language: str = "python") -> CodeContext:
        data = (await self._execd("POST", "/code/context", json_body={"language": language})).json()
        return CodeContext(id=str(data["id"]), language=str(data.get("language") or language))

    async def list_code_contexts(self, language: str = "python") -> builtins.list[CodeContext]:
        data = (await self._execd("GET", "/code/contexts", params={"language": language})).json()
        return [CodeContext(id=str(c["id"]), language=str(c.get("language") or language)) for c in data]

    async def delete_code_context(self, context: CodeContext | str) -> None:
        cid = context.id if isinstance(context, CodeContext) else context
        await self._execd("DELETE", f"/code/contexts/{cid}")

    async def interrupt(self, context: CodeContext | str) -> None:
        cid = context.id if isinstance(context, CodeContext) else context
        await self._execd("DELETE", "/code", params={"id": cid})

    # ---- migration shapes ----

    async def execute(self, code: str, timeout: float | None = None) -> ExecuteResult:
        """Runs Python code; ``.value`` is ``__result__`` (or the last expression's value).
        Errors in the code do not raise (see ``.error`` / ``.error_type``)."""
        t = timeout if timeout is not None else self._run_timeout
        started = time.monotonic()
        execution = await self.run_code(code, timeout=t)
        return execute_result(execution, timeout=t, elapsed=time.monotonic() - started)

    async def safe_execute(self, code: str, timeout: float | None = None) -> SafeExecuteResult:
        """Like :meth:`execute` but never raises: a dict with ``success``, ``stdout``,
        ``stderr``, ``result``, ``error``, ``error_type`` and ``execution_time_ms``."""
        t = timeout if timeout is not None else self._run_timeout
        started = time.monotonic()
        try:
            return (await self.execute(code, timeout=t)).to_dict()
        except Exception as e:  # noqa: BLE001 - the point of safe_execute
            return failed_result(e, elapsed=time.monotonic() - started, timeout=t)


class AsyncCommands:
    """Shell commands in the sandbox (``sandbox.commands``)."""

    def __init__(self, sandbox: AsyncSandbox) -> None:
        self._sb = sandbox

    async def run(
        self,
        cmd: str,
        cwd: str | None = None,
        envs: Mapping[str, str] | None = None,
        timeout: float | None = None,
        background: bool = False,
        on_stdout: OutputHandler | None = None,
        on_stderr: OutputHandler | None = None,
    ) -> CommandResult:
        """Runs ``cmd`` with ``sh -c``-like semantics. A non-zero exit is ``exit_code`` (and
        ``error``), not an exception. ``background=True`` returns at once with ``.id``."""
        body: dict[str, Any] = {"command": cmd, "background": background}
        if cwd is not None:
            body["cwd"] = cwd
        if envs:
            body["envs"] = {str(k): str(v) for k, v in envs.items()}
        if timeout is not None:
            body["timeout"] = max(1, int(timeout * 1000))
        builder = CommandBuilder(on_stdout, on_stderr)
        async for event in self._sb._stream("/command", body, None if background else timeout):
            builder.apply(event)
            while builder.pending:
                await builder.pending.pop(0)
        if not builder.complete and builder.result.error is None:
            raise ServerError("the command stream ended before the command completed")
        return builder.finish(background=background)

    async def status(self, command_id: str) -> dict[str, Any]:
        """``GET /command/status/{id}``: running, exit_code, error, started_at, finished_at."""
        data: dict[str, Any] = (await self._sb._execd("GET", f"/command/status/{command_id}")).json()
        return data

    async def logs(self, command_id: str, cursor: int | None = None) -> tuple[str, int | None]:
        """A background command's output so far (and the cursor for the next call)."""
        params = {"cursor": str(cursor)} if cursor is not None else None
        resp = await self._sb._execd("GET", f"/command/{command_id}/logs", params=params)
        tail = resp.headers.get("EXECD-COMMANDS-TAIL-CURSOR")
        return resp.text, int(tail) if tail and tail.lstrip("-").isdigit() else None

    async def kill(self, command_id: str) -> None:
        await self._sb._execd("DELETE", "/command", params={"id": command_id})


class AsyncFiles:
    """Files in the sandbox (``sandbox.files``). Relative paths are relative to /workspace."""

    def __init__(self, sandbox: AsyncSandbox) -> None:
        self._sb = sandbox

    def _check(self, *paths: str) -> None:
        for p in paths:
            self._sb._files_policy.check(p)

    @overload
    async def read(self, path: str, format: Literal["text"] = "text") -> str: ...
    @overload
    async def read(self, path: str, format: Literal["bytes"]) -> bytes: ...

    async def read(self, path: str, format: Literal["text", "bytes"] = "text") -> str | bytes:
        """The file's content: ``str`` (UTF-8) by default, ``bytes`` with ``format="bytes"``."""
        self._check(path)
        resp = await self._sb._execd("GET", "/files/download", params={"path": path}, file_route=True)
        return resp.content if format == "bytes" else resp.content.decode("utf-8")

    async def write(self, path: str, data: str | bytes | IO[bytes], mode: int | None = None) -> None:
        """Writes (replaces) a file; parent directories are created."""
        self._check(path)
        content: bytes | IO[bytes] = data.encode("utf-8") if isinstance(data, str) else data
        await self._upload(path, content, mode)

    async def _upload(self, path: str, content: bytes | IO[bytes], mode: int | None) -> None:
        meta: dict[str, Any] = {"path": path}
        if mode is not None:
            meta["mode"] = mode
        files = [
            ("metadata", ("metadata", json.dumps(meta).encode(), "application/json")),
            ("file", (os.path.basename(path) or "file", content, "application/octet-stream")),
        ]
        await self._sb._execd("POST", "/files/upload", files=files, file_route=True, timeout=None)

    async def upload(self, local_path: str | os.PathLike[str], remote_path: str, mode: int | None = None) -> None:
        """Copies a local file into the sandbox, streamed from disk."""
        self._check(remote_path)
        with open(local_path, "rb") as f:
            await self._upload(remote_path, f, mode)

    async def download(self, remote_path: str, local_path: str | os.PathLike[str]) -> int:
        """Copies a sandbox file to ``local_path``, streamed to disk; returns the byte count."""
        self._check(remote_path)
        sb = self._sb
        client = await sb._ensure()
        target = Path(local_path)
        partial = target.with_name(target.name + ".part")
        written = 0
        try:
            async with client.http.stream(
                "GET",
                sb._execd_url + "/files/download",
                params={"path": remote_path},
                headers=sb._execd_headers,
                timeout=httpx.Timeout(sb._config.request_timeout, read=None),
            ) as resp:
                if resp.status_code >= 400:
                    await resp.aread()
                    _core.check(resp, file_route=True)
                with open(partial, "wb") as out:
                    async for chunk in resp.aiter_bytes():
                        out.write(chunk)
                        written += len(chunk)
            os.replace(partial, target)
        except httpx.HTTPError as e:
            raise _core.transport_error(e, "GET /files/download") from e
        finally:
            if partial.exists():
                partial.unlink()
        return written

    async def list(self, path: str = ".", depth: int = 1) -> builtins.list[EntryInfo]:
        self._check(path)
        data = (await self._sb._execd("GET", "/directories/list", params={"path": path, "depth": str(depth)}, file_route=True)).json()
        return [EntryInfo.from_json(e) for e in data]

    async def info(self, path: str) -> EntryInfo:
        self._check(path)
        data = (await self._sb._execd("GET", "/files/info", params={"path": path}, file_route=True)).json()
        if isinstance(data, dict) and data:
            entry = data.get(path) or next(iter(data.values()))
            return EntryInfo.from_json(entry)
        raise NotFoundError(f"no info for {path}")

    async def exists(self, path: str) -> bool:
        try:
            await self.info(path)
            return True
        except NotFoundError:
            return False

    async def make_dir(self, path: str, mode: int = 755) -> None:
        """Creates a directory and its parents (``mode`` in octal digits, as the API writes it)."""
        self._check(path)
        await self._sb._execd("POST", "/directories", json_body={path: {"mode": mode}}, file_route=True)

    async def remove(self, path: str) -> None:
        """Removes a file, or a directory with everything in it."""
        self._check(path)
        if (await self.info(path)).is_dir:
            await self._sb._execd("DELETE", "/directories", params={"path": path}, file_route=True)
        else:
            await self._sb._execd("DELETE", "/files", params={"path": path}, file_route=True)

    async def rename(self, src: str, dest: str) -> None:
        self._check(src, dest)
        await self._sb._execd("POST", "/files/mv", json_body=[{"src": src, "dest": dest}], file_route=True)

