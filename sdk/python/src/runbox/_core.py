"""Pieces shared by the sync and async clients: request bodies, URLs, response checks."""

from __future__ import annotations

import datetime as _dt
import posixpath
from typing import Any, Mapping, Sequence

import httpx

from ._config import EXECD_PORT, ConnectionConfig
from .errors import (
    FileOperationsDisabled,
    ProtocolError,
    RunboxConnectionError,
    RunboxError,
    SandboxTimeoutError,
    error_from_response,
)

DEFAULT_SANDBOX_TIMEOUT = 600
DEFAULT_ENTRYPOINT = ["tail", "-f", "/dev/null"]
ACCESS_TOKEN_HEADER = "X-EXECD-ACCESS-TOKEN"
WORKSPACE = "/workspace"
# Extra seconds allowed on top of an execution's own timeout before the HTTP read gives up.
STREAM_GRACE = 30.0
READY_TIMEOUT = 30.0
PING_INTERVAL = 0.1


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()

Timeout = int | float | _dt.timedelta | None


def seconds(value: Timeout) -> float | None:
    if value is None:
        return None
    if isinstance(value, _dt.timedelta):
        return value.total_seconds()
    return float(value)


def memory_quantity(value: str | int | None) -> str | None:
    """``512`` (MiB) -> ``"512Mi"``; strings pass as they are (``"1Gi"``, ``"500M"``)."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise TypeError("memory must be a quantity like '512Mi' or a number of MiB")
    if isinstance(value, int):
        return f"{value}Mi"
    if isinstance(value, float):
        return f"{int(value)}Mi"
    return str(value)


def cpu_quantity(value: str | int | float | None) -> str | None:
    """``0.5`` -> ``"0.5"``, ``2`` -> ``"2"``, ``"500m"`` stays."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise TypeError("cpu must be a quantity like '1', '0.5' or '500m'")
    if isinstance(value, float):
        return format(value, "g")
    return str(value)


def module_list(mods: str | Sequence[str] | None) -> str | None:
    if mods is None:
        return None
    if isinstance(mods, str):
        mods = [m for m in mods.split(",")]
    return ",".join(m.strip() for m in mods if m.strip())


def build_create_request(
    *,
    image: str = "default",
    timeout: Timeout = DEFAULT_SANDBOX_TIMEOUT,
    memory: str | int | None = "512Mi",
    cpu: str | int | float | None = "1",
    env: Mapping[str, str] | None = None,
    metadata: Mapping[str, str] | None = None,
    pids: int | None = None,
    allowed_modules: str | Sequence[str] | None = None,
    denied_modules: str | Sequence[str] | None = None,
    network: str | None = None,
    output_limit: int | None = None,
    idle_timeout: Timeout = None,
    entrypoint: Sequence[str] | None = None,
    extensions: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The body of ``POST /v1/sandboxes`` (an OpenSandbox CreateSandboxRequest)."""
    t = seconds(timeout)
    body: dict[str, Any] = {
        "image": {"uri": image},
        "entrypoint": list(entrypoint or DEFAULT_ENTRYPOINT),
        "timeout": None if t is None else max(1, int(round(t))),
    }
    limits: dict[str, str] = {}
    if (c := cpu_quantity(cpu)) is not None:
        limits["cpu"] = c
    if (m := memory_quantity(memory)) is not None:
        limits["memory"] = m
    if limits:
        body["resourceLimits"] = limits
    if env:
        body["env"] = {str(k): str(v) for k, v in env.items()}
    if metadata:
        body["metadata"] = {str(k): str(v) for k, v in metadata.items()}
    ext: dict[str, str] = {}
    if pids is not None:
        ext["runbox.pids"] = str(int(pids))
    if (a := module_list(allowed_modules)) is not None:
        ext["runbox.import_allow"] = a
    if (d := module_list(denied_modules)) is not None and d:
        ext["runbox.import_deny"] = d
    if network is not None:
        ext["runbox.network"] = network
    if output_limit is not None:
        ext["runbox.output_limit"] = str(int(output_limit))
    if (it := seconds(idle_timeout)) is not None:
        ext["runbox.idle_timeout"] = str(int(it))
    if extensions:
        ext.update({str(k): str(v) for k, v in extensions.items()})
    if ext:
        body["extensions"] = ext
    return body


def execd_base(config: ConnectionConfig, endpoint: Mapping[str, Any]) -> tuple[str, dict[str, str]]:
    """From ``GET /endpoints/44772``'s answer: the execd base URL and the headers to send."""
    raw = endpoint.get("endpoint")
    if not isinstance(raw, str) or not raw:
        raise ProtocolError(f"the endpoint answer has no 'endpoint': {dict(endpoint)!r}")
    url = raw if "://" in raw else f"{config.scheme}://{raw}"
    headers = endpoint.get("headers") or {}
    if not isinstance(headers, dict):
        raise ProtocolError(f"the endpoint answer's 'headers' is not an object: {headers!r}")
    return url.rstrip("/"), {str(k): str(v) for k, v in headers.items()}


def endpoint_path(sandbox_id: str, port: int = EXECD_PORT) -> str:
    return f"/sandboxes/{sandbox_id}/endpoints/{port}"


def check(response: httpx.Response, *, sandbox_route: bool = False, file_route: bool = False) -> httpx.Response:
    if response.status_code >= 400:
        raise error_from_response(response, sandbox_route=sandbox_route, file_route=file_route)
    return response


def transport_error(exc: httpx.HTTPError, what: str) -> RunboxError:
    if isinstance(exc, httpx.TimeoutException):
        return SandboxTimeoutError(f"{what}: timed out ({exc.__class__.__name__})")
    if isinstance(exc, (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)):
        return RunboxConnectionError(f"{what}: {exc.__class__.__name__}: {exc}")
    return RunboxError(f"{what}: {exc.__class__.__name__}: {exc}")


def stream_timeout(config: ConnectionConfig, run_timeout: float | None) -> httpx.Timeout:
    read = None if run_timeout is None else run_timeout + STREAM_GRACE
    return httpx.Timeout(config.request_timeout, read=read)


class FilePolicy:
    """Client-side refusal of file operations (the SandboxSettings migration shape)."""

    def __init__(self, allowed: bool = True, directories: Sequence[str] | None = None) -> None:
        self.allowed = allowed
        self.directories = [self._abs(d) for d in directories or []]

    @staticmethod
    def _abs(path: str) -> str:
        p = path if path.startswith("/") else posixpath.join(WORKSPACE, path)
        return posixpath.normpath(p)

    def check(self, path: str) -> None:
        if not self.allowed:
            raise FileOperationsDisabled(
                f"file operations are disabled for this sandbox (SandboxSettings(allow_file_operations=False)); refused: {path}"
            )
        if self.directories:
            p = self._abs(path)
            for d in self.directories:
                if p == d or p.startswith(d.rstrip("/") + "/"):
                    return
            raise FileOperationsDisabled(
                f"{path} is outside the allowed directories ({', '.join(self.directories)})"
            )
