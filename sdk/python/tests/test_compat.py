"""SandboxSettings mapping, result values and error classification (no server)."""

from __future__ import annotations

import pytest

from runbox import ExecutionError, SandboxSettings, classify_error, result_value
from runbox._core import build_create_request
from runbox._events import ExecutionBuilder


def test_settings_map_to_the_create_request() -> None:
    s = SandboxSettings(
        max_memory_mb=100,
        max_cpu_percent=50,
        max_execution_time=5,
        allow_file_operations=False,
        network_access=False,
        allow_imports=True,
        allowed_modules=["math", "random"],
        allowed_directories=[],
    )
    body = build_create_request(**s.create_kwargs())
    assert body["image"] == {"uri": "default"}
    assert body["entrypoint"] == ["tail", "-f", "/dev/null"]
    assert body["resourceLimits"] == {"cpu": "0.5", "memory": "100Mi"}
    assert body["extensions"] == {"runbox.import_allow": "math,random", "runbox.network": "none"}
    assert "volumes" not in body  # nothing is mounted


@pytest.mark.parametrize(("percent", "cpu"), [(50, "0.5"), (100, "1"), (250, "2.5"), (5, "0.05"), (0, "0.01")])
def test_cpu_percent_to_cores(percent: int, cpu: str) -> None:
    assert SandboxSettings(max_cpu_percent=percent).cpu() == cpu


def test_imports_off_means_an_empty_allow_list_and_no_list_means_no_policy() -> None:
    off = build_create_request(**SandboxSettings(allow_imports=False).create_kwargs())
    assert off["extensions"]["runbox.import_allow"] == ""
    free = build_create_request(**SandboxSettings(allowed_modules=None, denied_modules=["socket"]).create_kwargs())
    assert "runbox.import_allow" not in free["extensions"]
    assert free["extensions"]["runbox.import_deny"] == "socket"


def test_create_request_options() -> None:
    body = build_create_request(
        timeout=None,
        memory=256,
        cpu=0.25,
        env={"A": "1"},
        metadata={"team": "x"},
        pids=64,
        allowed_modules="math, json",
        denied_modules=["socket", "ctypes"],
        extensions={"runbox.custom": "y"},
    )
    assert body["timeout"] is None
    assert body["resourceLimits"] == {"cpu": "0.25", "memory": "256Mi"}
    assert body["env"] == {"A": "1"} and body["metadata"] == {"team": "x"}
    assert body["extensions"] == {
        "runbox.pids": "64",
        "runbox.import_allow": "math,json",
        "runbox.import_deny": "socket,ctypes",
        "runbox.custom": "y",
    }
    assert build_create_request()["timeout"] == 600


def _execution(*results: dict[str, object]) -> ExecutionBuilder:
    b = ExecutionBuilder()
    for r in results:
        b.apply({"type": "result", "results": r, "timestamp": 1})
    return b


@pytest.mark.parametrize(
    ("data", "value"),
    [
        ({"text": "{'a': 1, 'b': [1, 2]}"}, {"a": 1, "b": [1, 2]}),
        ({"text": "42"}, 42),
        ({"text": "'str'"}, "str"),
        ({"text": "<object at 0x1>"}, "<object at 0x1>"),
        ({"text": "Timestamp('2024-01-01')", "application/json": {"iso": "2024-01-01"}}, {"iso": "2024-01-01"}),
        ({"text": "x", "application/json": '{"k": [1]}'}, {"k": [1]}),
    ],
)
def test_result_value(data: dict[str, object], value: object) -> None:
    assert result_value(_execution(data).finish()) == value


def test_result_value_without_results() -> None:
    assert result_value(_execution().finish()) is None


def err(name: str, value: str = "") -> ExecutionError:
    return ExecutionError(name=name, value=value)


@pytest.mark.parametrize(
    ("error", "timeout", "elapsed", "kind"),
    [
        (None, None, 0.1, None),
        (err("SyntaxError", "invalid syntax"), None, 0.1, "syntax_error"),
        (err("IndentationError"), None, 0.1, "syntax_error"),
        (err("TimeoutError", "the cell ran longer than 1000 ms and was interrupted"), 1.0, 1.2, "timeout"),
        (err("TimeoutError", "the cell ran longer than 1000 ms and did not stop when interrupted; the kernel was killed"), 1.0, 3.1, "timeout"),
        (err("KeyboardInterrupt"), 1.0, 1.05, "timeout"),
        (err("KeyboardInterrupt"), None, 0.2, "runtime_exception"),
        (err("TimeoutError", "user code raised it"), None, 0.2, "runtime_exception"),
        (err("MemoryError"), None, 0.2, "resource_exhaustion"),
        (err("RecursionError", "maximum recursion depth exceeded"), None, 0.2, "resource_exhaustion"),
        (err("KernelDied", "kernel was killed by signal 9; its state is lost"), None, 0.2, "resource_exhaustion"),
        (err("KernelDied", "kernel exited with code 1; its state is lost"), None, 0.2, "system_error"),
        (err("KernelStartError", "cannot start"), None, 0.2, "system_error"),
        (err("ZeroDivisionError", "division by zero"), None, 0.2, "runtime_exception"),
        (err("ImportBlockedError", "import of 'socket' is blocked"), None, 0.2, "runtime_exception"),
    ],
)
def test_classify(error: ExecutionError | None, timeout: float | None, elapsed: float, kind: str | None) -> None:
    assert classify_error(error, timeout=timeout, elapsed=elapsed) == kind
