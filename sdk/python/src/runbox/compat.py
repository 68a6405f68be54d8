"""The shapes of the systems people migrate from: ``SandboxSettings`` limits, ``execute`` with a
result ``.value``, and ``safe_execute`` returning a plain dict that never raises."""

from __future__ import annotations

import ast
import re
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal, TypedDict

from .errors import RunboxError, SandboxTimeoutError
from .models import Execution, ExecutionError, Result

__all__ = ["SandboxSettings", "ExecuteResult", "SafeExecuteResult", "ErrorType", "classify_error", "result_value"]

ErrorType = Literal["timeout", "resource_exhaustion", "syntax_error", "runtime_exception", "system_error"]


@dataclass
class SandboxSettings:
    """Limits and policy of a sandbox, in the shape of the common Python sandbox settings.

    - ``max_memory_mb`` -> the sandbox's memory limit (``"<n>Mi"``)
    - ``max_cpu_percent`` -> CPU cores (50 -> ``"0.5"``, 200 -> ``"2"``)
    - ``max_execution_time`` -> the timeout of every ``execute`` (seconds)
    - ``allow_imports`` / ``allowed_modules`` -> the kernel's import allow-list (an empty or
      missing list with ``allow_imports=True`` means no allow-list)
    - ``denied_modules`` -> the import deny-list
    - ``allow_file_operations=False`` -> every ``files.*`` call is refused client-side and nothing
      is mounted; with it on, ``allowed_directories`` (relative to /workspace) limits which
      paths ``files.*`` accepts
    - ``network_access=False`` -> no network (``runbox.network: none``)
    """

    max_memory_mb: int = 100
    max_cpu_percent: int | float = 50
    max_execution_time: float = 5
    allowed_directories: list[str] = field(default_factory=lambda: ["./"])
    network_access: bool = False
    allow_file_operations: bool = False
    allow_imports: bool = True
    allowed_modules: list[str] | None = field(default_factory=lambda: ["math", "random", "json"])
    denied_modules: list[str] | None = None
    check_interval: float = 0.1
    """Accepted for compatibility; runbox enforces limits in the kernel, not by polling."""
    max_pids: int | None = None
    image: str = "default"
    sandbox_timeout: float | None = 600
    """Lifetime of the sandbox behind these settings, seconds (None: until killed)."""

    def cpu(self) -> str:
        cores = max(float(self.max_cpu_percent), 1.0) / 100.0
        return format(round(cores, 3), "g")

    def create_kwargs(self) -> dict[str, Any]:
        """The ``Sandbox.create`` arguments these settings stand for."""
        if self.allow_imports:
            allowed = list(self.allowed_modules) if self.allowed_modules else None
        else:
            allowed = []
        kwargs: dict[str, Any] = {
            "image": self.image,
            "timeout": self.sandbox_timeout,
            "memory": f"{int(self.max_memory_mb)}Mi",
            "cpu": self.cpu(),
            "allowed_modules": allowed,
            "denied_modules": list(self.denied_modules) if self.denied_modules else None,
            "pids": self.max_pids,
        }
        if not self.network_access:
            kwargs["network"] = "none"
        else:
            warnings.warn(
                "SandboxSettings(network_access=True): the sandbox gets the server's default network policy",
                stacklevel=3,
            )
        return kwargs


_LAST_LINE = re.compile(r"^(\w+(?:\.\w+)*)(?::|$)")


def result_value(execution: Execution) -> Any:
    """The value of ``__result__`` (or the last expression): ``application/json`` when the
    result has it, else its text through ``ast.literal_eval`` when that works, else the text."""
    main: Result | None = execution.main_result
    if main is None:
        return None
    if "application/json" in main.data:
        return main.json
    text = main.text
    if text is None:
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text


_SYNTAX = {"SyntaxError", "IndentationError", "TabError"}
_RESOURCE = {"MemoryError", "RecursionError", "OverflowError"}
_SYSTEM = {"KernelStartError", "StreamClosed"}


def classify_error(error: ExecutionError | None, *, timeout: float | None = None, elapsed: float | None = None) -> ErrorType | None:
    """Sorts an execution error into the ``safe_execute`` error types."""
    if error is None:
        return None
    name = error.name
    value = error.value or ""
    if name in _SYNTAX:
        return "syntax_error"
    timed_out = timeout is not None and elapsed is not None and elapsed >= timeout * 0.95
    if name == "TimeoutError" and ("ran longer than" in value or timed_out or timeout is not None and "kernel was killed" in value):
        return "timeout"
    if name == "KeyboardInterrupt" and timed_out:
        return "timeout"
    if name in _RESOURCE:
        return "resource_exhaustion"
    if name == "KernelDied":
        if "signal 9" in value or "memory" in value.lower() or "signal 24" in value or "signal 25" in value:
            return "resource_exhaustion"
        if timed_out:
            return "timeout"
        return "system_error"
    if name in _SYSTEM:
        return "system_error"
    return "runtime_exception"


class SafeExecuteResult(TypedDict):
    success: bool
    stdout: str
    stderr: str
    result: Any
    error: str | None
    error_type: ErrorType | None
    execution_time_ms: float


@dataclass
class ExecuteResult:
    """What ``execute`` returns. Errors in the code do not raise: see ``.error``."""

    value: Any
    stdout: str
    stderr: str
    error: ExecutionError | None
    error_type: ErrorType | None
    execution_time_ms: float
    execution: Execution

    @property
    def success(self) -> bool:
        return self.error is None

    @property
    def results(self) -> list[Result]:
        return self.execution.results

    @property
    def text(self) -> str | None:
        return self.execution.text

    def to_dict(self) -> SafeExecuteResult:
        return {
            "success": self.success,
            "stdout": self.stdout,
            "stderr": self.stderr,
            "result": self.value,
            "error": None if self.error is None else error_message(self.error),
            "error_type": self.error_type,
            "execution_time_ms": self.execution_time_ms,
        }


def error_message(error: ExecutionError) -> str:
    return f"{error.name}: {error.value}" if error.value else error.name


def _joined(lines: list[str]) -> str:
    return "".join(line + "\n" for line in lines)


def execute_result(execution: Execution, *, timeout: float | None, elapsed: float) -> ExecuteResult:
    return ExecuteResult(
        value=result_value(execution) if execution.error is None else None,
        stdout=_joined(execution.logs.stdout),
        stderr=_joined(execution.logs.stderr),
        error=execution.error,
        error_type=classify_error(execution.error, timeout=timeout, elapsed=elapsed),
        execution_time_ms=elapsed * 1000.0,
        execution=execution,
    )


def failed_result(exc: BaseException, *, elapsed: float, timeout: float | None = None) -> SafeExecuteResult:
    """``safe_execute``'s answer when the call itself failed (transport, server, quota, ...)."""
    kind: ErrorType = "system_error"
    if isinstance(exc, SandboxTimeoutError) and timeout is not None and elapsed >= timeout:
        kind = "timeout"
    name = type(exc).__name__
    return {
        "success": False,
        "stdout": "",
        "stderr": "",
        "result": None,
        "error": f"{name}: {exc}" if isinstance(exc, RunboxError) else f"{name}: {exc}",
        "error_type": kind,
        "execution_time_ms": elapsed * 1000.0,
    }
