"""runbox: the Python SDK of the runbox code-execution service.

Sync::

    from runbox import Sandbox
    with Sandbox.create() as sb:
        print(sb.run_code("6 * 7").text)          # 42

Async::

    from runbox import AsyncSandbox
    async with await AsyncSandbox.create() as sb:
        print((await sb.run_code("6 * 7")).text)

The server is found from ``url=`` or ``RUNBOX_URL`` (default http://127.0.0.1:8080), the API key
from ``api_key=`` or ``RUNBOX_API_KEY``.
"""

from ._config import DEFAULT_URL, ConnectionConfig
from .async_sandbox import AsyncCommands, AsyncFiles, AsyncSandbox
from .compat import ErrorType, ExecuteResult, SafeExecuteResult, SandboxSettings, classify_error, result_value
from .errors import (
    AuthenticationError,
    ConflictError,
    FileOperationsDisabled,
    InvalidRequest,
    NotFoundError,
    ProtocolError,
    QuotaExceeded,
    RemoteFileNotFound,
    RunboxConnectionError,
    RunboxError,
    SandboxNotFound,
    SandboxTimeoutError,
    ServerError,
)
from .models import (
    CodeContext,
    CommandResult,
    EntryInfo,
    Execution,
    ExecutionError,
    Logs,
    Result,
    SandboxInfo,
)
from .sandbox import Commands, Files, Sandbox

TimeoutError = SandboxTimeoutError  # noqa: A001 - the SDK's timeout error under the usual name

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_URL",
    "ConnectionConfig",
    "Sandbox",
    "Commands",
    "Files",
    "AsyncSandbox",
    "AsyncCommands",
    "AsyncFiles",
    "SandboxSettings",
    "ExecuteResult",
    "SafeExecuteResult",
    "ErrorType",
    "classify_error",
    "result_value",
    "Result",
    "Logs",
    "Execution",
    "ExecutionError",
    "CommandResult",
    "EntryInfo",
    "SandboxInfo",
    "CodeContext",
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
    "TimeoutError",
    "RunboxConnectionError",
    "ProtocolError",
    "FileOperationsDisabled",
]
