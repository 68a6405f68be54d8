"""The execd event stream: parsing it and folding it into results.

On the wire each event is one JSON object followed by a blank line; ``data: {...}`` lines
(server-sent-events style) are accepted too, as are comment (``:``), ``event:``, ``id:`` and
``retry:`` lines, which are ignored.
"""

from __future__ import annotations

import inspect
import json
from typing import Any, Callable, Iterable, Iterator

from .errors import ProtocolError
from .models import CommandResult, Execution, ExecutionError, OutputHandler, Result

Event = dict[str, Any]


class EventParser:
    """Incremental parser: feed it bytes as they arrive, get complete events back."""

    def __init__(self) -> None:
        self._pending = b""
        self._lines: list[str] = []

    def feed(self, chunk: bytes) -> list[Event]:
        self._pending += chunk
        events: list[Event] = []
        while True:
            nl = self._pending.find(b"\n")
            if nl < 0:
                break
            raw, self._pending = self._pending[:nl], self._pending[nl + 1 :]
            self._line(raw.decode("utf-8", errors="replace").rstrip("\r"), events)
        return events

    def close(self) -> list[Event]:
        """The stream ended: whatever is left must be one complete event (or nothing)."""
        events: list[Event] = []
        if self._pending:
            rest, self._pending = self._pending, b""
            self._line(rest.decode("utf-8", errors="replace").rstrip("\r"), events)
        self._flush(events, final=True)
        return events

    def _line(self, line: str, events: list[Event]) -> None:
        if not line.strip():
            self._flush(events, final=True)
            return
        if line.startswith(":") or line.startswith(("event:", "id:", "retry:")):
            return
        if line.startswith("data:"):
            line = line[5:]
            if line.startswith(" "):
                line = line[1:]
        self._lines.append(line)
        # Tolerate servers that omit the blank line: a line that completes a JSON object is
        # an event as soon as it arrives.
        self._flush(events, final=False)

    def _flush(self, events: list[Event], *, final: bool) -> None:
        if not self._lines:
            return
        text = "\n".join(self._lines)
        try:
            value = json.loads(text)
        except ValueError:
            if final:
                self._lines = []
                raise ProtocolError(f"malformed event in the execution stream: {text[:200]!r}") from None
            return
        self._lines = []
        if not isinstance(value, dict):
            raise ProtocolError(f"an execution event must be a JSON object, got {text[:200]!r}")
        events.append(value)


def parse_events(chunks: Iterable[bytes]) -> Iterator[Event]:
    """All events of a complete byte stream (for tests and simple callers)."""
    parser = EventParser()
    for chunk in chunks:
        yield from parser.feed(chunk)
    yield from parser.close()


def _error(event: Event) -> ExecutionError:
    err = event.get("error") or {}
    tb = err.get("traceback") or []
    if isinstance(tb, str):
        tb = tb.splitlines()
    return ExecutionError(
        name=str(err.get("ename") or "Error"),
        value=str(err.get("evalue") if err.get("evalue") is not None else ""),
        traceback=[str(line) for line in tb],
    )


def _call(cb: Callable[[Any], Any] | None, arg: Any, pending: list[Any]) -> None:
    if cb is not None:
        out = cb(arg)
        if inspect.isawaitable(out):
            pending.append(out)


def mark_main_result(results: list[Result]) -> None:
    """The main result is the last one that is not a figure sent at the end of the cell:
    ``__result__`` when the cell set it, else the value of the last expression."""
    for r in results:
        r.is_main_result = False
    for r in reversed(results):
        if not r.is_figure:
            r.is_main_result = True
            return


class ExecutionBuilder:
    """Folds the events of one ``/code`` stream into an :class:`Execution`, calling the
    callbacks as lines, results and errors arrive."""

    def __init__(
        self,
        on_stdout: OutputHandler | None = None,
        on_stderr: OutputHandler | None = None,
        on_result: Callable[[Result], Any] | None = None,
        on_error: Callable[[ExecutionError], Any] | None = None,
    ) -> None:
        self.execution = Execution()
        self.complete = False
        self.pending: list[Any] = []
        """Awaitables returned by async callbacks, for the async client to await."""
        self._on_stdout = on_stdout
        self._on_stderr = on_stderr
        self._on_result = on_result
        self._on_error = on_error

    def apply(self, event: Event) -> None:
        kind = event.get("type")
        ex = self.execution
        if kind == "init":
            ex.id = event.get("text")
        elif kind == "stdout":
            line = str(event.get("text") or "")
            ex.logs.stdout.append(line)
            _call(self._on_stdout, line, self.pending)
        elif kind == "stderr":
            line = str(event.get("text") or "")
            ex.logs.stderr.append(line)
            _call(self._on_stderr, line, self.pending)
        elif kind == "result":
            data = event.get("results") or {}
            result = Result(data if isinstance(data, dict) else {"text": str(data)})
            ex.results.append(result)
            if event.get("execution_count") is not None:
                ex.execution_count = int(event["execution_count"])
            _call(self._on_result, result, self.pending)
        elif kind == "error":
            ex.error = _error(event)
            _call(self._on_error, ex.error, self.pending)
        elif kind == "execution_count":
            if event.get("execution_count") is not None:
                ex.execution_count = int(event["execution_count"])
        elif kind == "execution_complete":
            self.complete = True
            if event.get("execution_time") is not None:
                ex.execution_time_ms = float(event["execution_time"])
        elif kind == "status":
            if event.get("text"):
                ex.status.append(str(event["text"]))
        # "ping" and unknown types are ignored.

    def finish(self) -> Execution:
        mark_main_result(self.execution.results)
        return self.execution


class CommandBuilder:
    """Folds the events of one ``/command`` stream into a :class:`CommandResult`."""

    def __init__(self, on_stdout: OutputHandler | None = None, on_stderr: OutputHandler | None = None) -> None:
        self._stdout: list[str] = []
        self._stderr: list[str] = []
        self.result = CommandResult()
        self.complete = False
        self.pending: list[Any] = []
        self._on_stdout = on_stdout
        self._on_stderr = on_stderr

    def apply(self, event: Event) -> None:
        kind = event.get("type")
        if kind == "init":
            self.result.id = event.get("text")
        elif kind == "stdout":
            line = str(event.get("text") or "")
            self._stdout.append(line)
            _call(self._on_stdout, line, self.pending)
        elif kind == "stderr":
            line = str(event.get("text") or "")
            self._stderr.append(line)
            _call(self._on_stderr, line, self.pending)
        elif kind == "error":
            err = _error(event)
            self.result.error = err
            try:
                self.result.exit_code = int(err.value.strip())
            except ValueError:
                self.result.exit_code = None
        elif kind == "execution_complete":
            self.complete = True
            if event.get("execution_time") is not None:
                self.result.execution_time_ms = float(event["execution_time"])
        elif kind == "status":
            if event.get("text"):
                self.result.status.append(str(event["text"]))

    def finish(self, *, background: bool = False) -> CommandResult:
        r = self.result
        r.stdout = "\n".join(self._stdout) + ("\n" if self._stdout else "")
        r.stderr = "\n".join(self._stderr) + ("\n" if self._stderr else "")
        if r.error is None and not background:
            r.exit_code = 0 if self.complete else r.exit_code
        return r
