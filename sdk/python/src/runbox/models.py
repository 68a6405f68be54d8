"""What executions, commands and file listings return."""

from __future__ import annotations

import json as _json
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

__all__ = [
    "Result",
    "Logs",
    "ExecutionError",
    "Execution",
    "CommandResult",
    "EntryInfo",
    "SandboxInfo",
    "CodeContext",
    "OutputHandler",
]

OutputHandler = Callable[[str], Any]
"""A callback that receives one line of output (without its newline) as it arrives."""

# Short name -> MIME key as the execd stream sends it (``text`` replaces ``text/plain``).
_FORMATS: dict[str, tuple[str, ...]] = {
    "text": ("text", "text/plain"),
    "html": ("text/html",),
    "markdown": ("text/markdown",),
    "svg": ("image/svg+xml",),
    "png": ("image/png",),
    "jpeg": ("image/jpeg",),
    "pdf": ("application/pdf",),
    "latex": ("text/latex",),
    "json": ("application/json",),
    "javascript": ("application/javascript",),
}


class Result:
    """One result of a code execution: a MIME bundle (the value of the last expression or
    ``__result__``, a figure, ...)."""

    def __init__(self, data: dict[str, Any], *, is_main_result: bool = False) -> None:
        self.data: dict[str, Any] = dict(data)
        self.is_main_result = is_main_result

    def _get(self, name: str) -> Any:
        for key in _FORMATS[name]:
            if key in self.data:
                return self.data[key]
        return None

    def _str(self, name: str) -> str | None:
        v = self._get(name)
        return None if v is None else str(v)

    @property
    def text(self) -> str | None:
        v = self._get("text")
        return None if v is None else str(v)

    @property
    def html(self) -> str | None:
        return self._str("html")

    @property
    def markdown(self) -> str | None:
        return self._str("markdown")

    @property
    def svg(self) -> str | None:
        return self._str("svg")

    @property
    def png(self) -> str | None:
        """Base64-encoded PNG."""
        return self._str("png")

    @property
    def jpeg(self) -> str | None:
        """Base64-encoded JPEG."""
        return self._str("jpeg")

    @property
    def pdf(self) -> str | None:
        return self._str("pdf")

    @property
    def latex(self) -> str | None:
        return self._str("latex")

    @property
    def javascript(self) -> str | None:
        return self._str("javascript")

    @property
    def json(self) -> Any:
        """The ``application/json`` data, decoded if it arrived as a string."""
        v = self._get("json")
        if isinstance(v, str):
            try:
                return _json.loads(v)
            except ValueError:
                return v
        return v

    @property
    def is_figure(self) -> bool:
        """A matplotlib figure the kernel sent at the end of the cell (or on ``plt.show()``)."""
        text = self.text or ""
        return "image/png" in self.data and text.startswith("<Figure")

    def formats(self) -> list[str]:
        """Short names of the formats present (``text``, ``html``, ``png``, ...), plus any
        MIME keys without a short name."""
        out: list[str] = []
        known: set[str] = set()
        for name, keys in _FORMATS.items():
            known.update(keys)
            if any(k in self.data for k in keys):
                out.append(name)
        out.extend(k for k in self.data if k not in known)
        return out

    def __getitem__(self, mime: str) -> Any:
        return self.data[mime]

    def __contains__(self, mime: object) -> bool:
        return mime in self.data

    def __repr__(self) -> str:
        main = ", main" if self.is_main_result else ""
        return f"Result(formats={self.formats()}{main}, text={self.text!r})"

    def __str__(self) -> str:
        return self.text or ""


@dataclass
class Logs:
    """Output lines of an execution, newlines stripped."""

    stdout: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)


@dataclass
class ExecutionError:
    """An error reported by the sandbox: an exception in the code (``name`` is its class), a
    timeout (``TimeoutError``), a dead kernel (``KernelDied``), a failed command
    (``CommandExecError`` with the exit code as ``value``), ..."""

    name: str
    value: str
    traceback: list[str] = field(default_factory=list)

    @property
    def traceback_text(self) -> str:
        return "\n".join(self.traceback)

    def __str__(self) -> str:
        return f"{self.name}: {self.value}"


@dataclass
class Execution:
    """Everything one ``run_code`` call produced."""

    results: list[Result] = field(default_factory=list)
    logs: Logs = field(default_factory=Logs)
    error: ExecutionError | None = None
    execution_count: int | None = None
    id: str | None = None
    """The execution id the agent announced (its ``init`` event)."""
    execution_time_ms: float | None = None
    """Time the agent measured for the cell, in milliseconds."""
    status: list[str] = field(default_factory=list)
    """Notes the agent sent while running (truncated output, dropped results, ...)."""

    @property
    def main_result(self) -> Result | None:
        for r in self.results:
            if r.is_main_result:
                return r
        return None

    @property
    def text(self) -> str | None:
        """Text of the main result (the last expression's value or ``__result__``)."""
        main = self.main_result
        return main.text if main is not None else None

    @property
    def success(self) -> bool:
        return self.error is None

    def __repr__(self) -> str:
        return (
            f"Execution(results={self.results!r}, logs={self.logs!r}, error={self.error!r}, "
            f"execution_count={self.execution_count!r})"
        )


@dataclass
class CommandResult:
    """Outcome of ``commands.run``. For a background command only ``id`` is known at once."""

    stdout: str = ""
    stderr: str = ""
    exit_code: int | None = None
    error: ExecutionError | None = None
    id: str | None = None
    execution_time_ms: float | None = None
    status: list[str] = field(default_factory=list)
    """Notes the agent sent (e.g. that the command timed out and was killed)."""

    @property
    def success(self) -> bool:
        return self.exit_code == 0 and self.error is None


@dataclass
class EntryInfo:
    """A file or directory inside the sandbox."""

    path: str
    type: Literal["file", "directory", "symlink", "other"] | str
    size: int = 0
    mode: int = 0
    owner: str = ""
    group: str = ""
    modified_at: str | None = None
    created_at: str | None = None

    @property
    def name(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    @property
    def is_dir(self) -> bool:
        return self.type == "directory"

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "EntryInfo":
        return cls(
            path=str(data.get("path", "")),
            type=str(data.get("type", "file")),
            size=int(data.get("size") or 0),
            mode=int(data.get("mode") or 0),
            owner=str(data.get("owner") or ""),
            group=str(data.get("group") or ""),
            modified_at=data.get("modified_at"),
            created_at=data.get("created_at"),
        )


@dataclass
class SandboxInfo:
    """The server's view of a sandbox (``GET /v1/sandboxes/{id}``)."""

    id: str
    state: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    expires_at: str | None = None
    created_at: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "SandboxInfo":
        status = data.get("status") or {}
        return cls(
            id=str(data.get("id", "")),
            state=status.get("state") if isinstance(status, dict) else None,
            metadata=dict(data.get("metadata") or {}),
            expires_at=data.get("expiresAt"),
            created_at=data.get("createdAt"),
            raw=data,
        )


@dataclass(frozen=True)
class CodeContext:
    """A stateful code context (a kernel) inside a sandbox."""

    id: str
    language: str
