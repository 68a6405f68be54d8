"""Exceptions raised by the runbox SDK.

Every error the SDK raises is a :class:`RunboxError`. Errors that come from the server carry
its ``{code, message}`` body (``.code``, ``.message``), the HTTP status and the request id.
Errors *inside* executed code are not exceptions: they are reported in
``Execution.error`` / ``CommandResult.error``.
"""

from __future__ import annotations

import builtins
from typing import Any

import httpx

__all__ = [
    "RunboxError",
    "InvalidRequest",
    "AuthenticationError",
    "NotFoundError",
    "SandboxNotFound",
    "RemoteFileNotFound",
    "ConflictError",
    "QuotaExceeded",
    "ServerError",
    "SandboxTimeoutError",
    "RunboxConnectionError",
    "ProtocolError",
    "FileOperationsDisabled",
    "error_from_response",
]


class RunboxError(Exception):
    """Base class of every error raised by the runbox SDK."""

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status
        self.request_id = request_id

    def __str__(self) -> str:
        parts = [self.message]
        detail = ", ".join(
            f"{k}={v}"
            for k, v in (("code", self.code), ("status", self.status), ("request_id", self.request_id))
            if v is not None
        )
        if detail:
            parts.append(f"({detail})")
        return " ".join(parts)


class InvalidRequest(RunboxError):
    """The server rejected the request as malformed (HTTP 400/422)."""


class AuthenticationError(RunboxError):
    """Missing or wrong API key (HTTP 401/403). Set ``RUNBOX_API_KEY`` or pass ``api_key=``."""


class NotFoundError(RunboxError):
    """Something the request named does not exist (HTTP 404)."""


class SandboxNotFound(NotFoundError):
    """The sandbox does not exist, is gone, or belongs to another tenant."""


class RemoteFileNotFound(NotFoundError, builtins.FileNotFoundError):
    """A file or directory inside the sandbox does not exist."""


class ConflictError(RunboxError):
    """The request conflicts with the sandbox's state (HTTP 409), e.g. pausing a paused sandbox."""


class QuotaExceeded(RunboxError):
    """The tenant hit a quota (HTTP 429): too many sandboxes, too much memory, ..."""


class ServerError(RunboxError):
    """The server or the sandbox's agent failed (HTTP 5xx)."""


class SandboxTimeoutError(RunboxError, builtins.TimeoutError):
    """A request to the server did not complete in time, or the sandbox never became ready."""


class RunboxConnectionError(RunboxError, builtins.ConnectionError):
    """The server could not be reached."""


class ProtocolError(RunboxError):
    """The server answered something the SDK cannot understand."""


class FileOperationsDisabled(RunboxError, builtins.PermissionError):
    """File operations were refused client-side (``SandboxSettings(allow_file_operations=False)``
    or a path outside ``allowed_directories``)."""


def _body(response: httpx.Response) -> tuple[str | None, str]:
    try:
        data: Any = response.json()
    except Exception:
        text = response.text.strip() if response.content else ""
        return None, text or response.reason_phrase or f"HTTP {response.status_code}"
    if isinstance(data, dict):
        code = data.get("code")
        message = data.get("message") or data.get("error") or response.reason_phrase
        return (str(code) if code is not None else None), str(message)
    return None, str(data)


def error_from_response(response: httpx.Response, *, sandbox_route: bool = False, file_route: bool = False) -> RunboxError:
    """Maps an error response (status >= 400) to the matching exception."""
    code, message = _body(response)
    status = response.status_code
    kwargs: dict[str, Any] = {
        "code": code,
        "status": status,
        "request_id": response.headers.get("x-request-id"),
    }
    cls: type[RunboxError]
    if status in (401, 403):
        cls = AuthenticationError
    elif status == 404:
        if code == "SANDBOX_NOT_FOUND" or (sandbox_route and not file_route):
            cls = SandboxNotFound
        elif file_route:
            cls = RemoteFileNotFound
        else:
            cls = NotFoundError
    elif status == 409:
        cls = ConflictError
    elif status == 429:
        cls = QuotaExceeded
    elif status in (408, 504):
        cls = SandboxTimeoutError
    elif status >= 500:
        cls = ServerError
    elif status in (400, 413, 416, 422):
        cls = InvalidRequest
    else:
        cls = RunboxError
    return cls(message, **kwargs)
