"""sandbox.commands.* through the official SDK (execd /command, /session streams)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest

from osb_util import stderr_text, stdout_text


def _recent_ms(ts: int, tolerance_ms: int = 120_000) -> bool:
    return isinstance(ts, int) and abs(time.time() * 1000 - ts) <= tolerance_ms


def _handlers():
    from opensandbox.models.execd_sync import ExecutionHandlersSync

    seen = {"init": [], "stdout": [], "stderr": [], "complete": [], "error": [], "result": []}
    h = ExecutionHandlersSync(
        on_init=seen["init"].append,
        on_stdout=seen["stdout"].append,
        on_stderr=seen["stderr"].append,
        on_execution_complete=seen["complete"].append,
        on_error=seen["error"].append,
        on_result=seen["result"].append,
    )
    return h, seen


def test_echo_hello(sandbox):
    handlers, seen = _handlers()
    ex = sandbox.commands.run("echo hello", handlers=handlers)
    assert ex.error is None
    assert ex.exit_code == 0
    assert [m.text for m in ex.logs.stdout] == ["hello"]
    assert ex.logs.stdout[0].is_error is False
    assert _recent_ms(ex.logs.stdout[0].timestamp)
    assert ex.logs.stderr == []
    # event contract: one init whose id is the execution id, one completion, no error
    assert ex.id and len(seen["init"]) == 1 and seen["init"][0].id == ex.id
    assert _recent_ms(seen["init"][0].timestamp)
    assert len(seen["complete"]) == 1 and seen["complete"][0].execution_time_in_millis >= 0
    assert seen["error"] == []
    assert [m.text for m in seen["stdout"]] == ["hello"]


def test_multiline_stdout_and_stderr(sandbox):
    ex = sandbox.commands.run("printf 'a\\nb\\n\\nc\\n'; echo oops >&2")
    assert ex.error is None
    assert [m.text for m in ex.logs.stdout] == ["a", "b", "", "c"]
    assert [m.text for m in ex.logs.stderr] == ["oops"]
    assert all(m.is_error for m in ex.logs.stderr)


def test_failing_command_exit_code(sandbox):
    handlers, seen = _handlers()
    ex = sandbox.commands.run("echo partial; echo bad >&2; exit 3", handlers=handlers)
    assert ex.exit_code == 3
    assert ex.error is not None
    assert ex.error.name == "CommandExecError"
    assert ex.error.value == "3"
    assert stdout_text(ex) == "partial"
    assert stderr_text(ex) == "bad"
    assert len(seen["error"]) == 1


def test_failed_command_has_no_completion_event(sandbox):
    """execd contract (NOTES.md; the official e2e asserts it): a failed command ends with
    `error`, success with `execution_complete`, never both."""
    handlers, seen = _handlers()
    ex = sandbox.commands.run("exit 3", handlers=handlers)
    assert ex.exit_code == 3
    assert len(seen["error"]) == 1
    assert seen["complete"] == [] and ex.complete is None


def test_command_not_found(sandbox):
    ex = sandbox.commands.run("nonexistent-command-xyz-123")
    assert ex.error is not None and ex.error.name == "CommandExecError"
    assert ex.exit_code == 127
    assert "nonexistent-command-xyz-123" in stderr_text(ex)


def test_env_vars(sandbox):
    from opensandbox.models.execd import RunCommandOpts

    # env given at Sandbox.create(env=...)
    ex = sandbox.commands.run('echo "$RUNBOX_SUITE_ENV|$SPACED"')
    assert stdout_text(ex) == "from-create|a b  c"
    # per-command env (RunCommandOpts.envs), overriding a create-time one
    ex = sandbox.commands.run(
        'echo "$PER_CMD|$RUNBOX_SUITE_ENV"',
        opts=RunCommandOpts(envs={"PER_CMD": "x=1;y", "RUNBOX_SUITE_ENV": "overridden"}),
    )
    assert stdout_text(ex) == "x=1;y|overridden"
    # per-command env does not leak into the next command
    ex = sandbox.commands.run('echo "[$PER_CMD]"')
    assert stdout_text(ex) == "[]"


def test_set_env_persists(sandbox):
    """commands.set_env appends to the file named by $EXECD_ENVS; later commands see it."""
    sandbox.commands.set_env("RUNBOX_PERSISTED", "it's persisted")
    ex = sandbox.commands.run('echo "$RUNBOX_PERSISTED"')
    assert stdout_text(ex) == "it's persisted"


def test_working_directory(sandbox):
    from opensandbox.models.execd import RunCommandOpts

    ex = sandbox.commands.run("pwd", opts=RunCommandOpts(working_directory="/tmp"))
    assert ex.error is None and stdout_text(ex) == "/tmp"


def test_argv_command(sandbox):
    """A list is a native argv (no shell): `$HOME` must arrive literally."""
    ex = sandbox.commands.run(["printf", "%s|%s", "$HOME", "two words"])
    assert ex.error is None, ex.error
    assert stdout_text(ex) == "$HOME|two words"


def test_unicode_and_long_output(sandbox):
    ex = sandbox.commands.run("echo 'héllo wörld ✓'; seq 1 5000")
    assert ex.error is None
    lines = [m.text for m in ex.logs.stdout]
    assert lines[0] == "héllo wörld ✓"
    assert lines[1:] == [str(i) for i in range(1, 5001)]


def test_output_tail_is_never_lost(sandbox):
    """The last bytes a command writes before exiting must all arrive (repeat: it is a race
    between the agent draining the pipe and the SDK consuming events)."""
    short = []
    for _ in range(12):
        ex = sandbox.commands.run("seq 1 6000")
        n = len(ex.logs.stdout)
        if n != 6000 or ex.logs.stdout[-1].text != "6000":
            short.append(n)
    assert short == [], f"output truncated in {len(short)}/12 runs (lines received: {short})"


def test_command_timeout(sandbox):
    from opensandbox.models.execd import RunCommandOpts

    start = time.monotonic()
    ex = sandbox.commands.run("sleep 30", opts=RunCommandOpts(timeout=timedelta(seconds=1)))
    assert time.monotonic() - start < 15
    assert ex.error is not None, "a timed-out command must not report success"


def test_background_command_status_and_logs(sandbox):
    from opensandbox.models.execd import RunCommandOpts

    start = time.monotonic()
    ex = sandbox.commands.run(
        "echo log-line-1; echo log-line-2; sleep 2; exit 4", opts=RunCommandOpts(background=True)
    )
    assert time.monotonic() - start < 5, "background run must return at once"
    assert ex.id
    status = sandbox.commands.get_command_status(ex.id)
    assert status.id == ex.id
    assert isinstance(status.running, bool)

    text, cursor = "", None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        logs = sandbox.commands.get_background_command_logs(ex.id, cursor=cursor)
        text += logs.content
        cursor = logs.cursor if logs.cursor is not None else cursor
        if "log-line-2" in text:
            break
        time.sleep(0.3)
    assert "log-line-1" in text and "log-line-2" in text

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        status = sandbox.commands.get_command_status(ex.id)
        if status.running is False:
            break
        time.sleep(0.3)
    assert status.running is False
    assert status.exit_code == 4


def test_interrupt_command(sandbox):
    handlers, seen = _handlers()
    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=1) as pool:
        fut = pool.submit(sandbox.commands.run, "sleep 60", handlers=handlers)
        deadline = time.monotonic() + 15
        while not seen["init"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert seen["init"], "no init event within 15 s"
        sandbox.commands.interrupt(seen["init"][0].id)
        ex = fut.result(timeout=30)
    assert time.monotonic() - start < 20
    assert ex.id == seen["init"][0].id
    assert ex.error is not None or ex.logs.stderr, "an interrupted command must not look successful"
    if ex.error is not None:
        assert ex.error.name and ex.error.value


def test_streaming_is_incremental(sandbox):
    """stdout events must reach the handler while the command still runs."""
    from opensandbox.models.execd_sync import ExecutionHandlersSync

    arrivals = []
    t0 = time.monotonic()
    h = ExecutionHandlersSync(on_stdout=lambda m: arrivals.append((m.text, time.monotonic() - t0)))
    sandbox.commands.run("echo first; sleep 1.5; echo second", handlers=h)
    assert [a[0] for a in arrivals] == ["first", "second"]
    assert arrivals[1][1] - arrivals[0][1] > 1.0, arrivals


def test_sessions(sandbox):
    sid = sandbox.commands.create_session(working_directory="/tmp")
    try:
        ex = sandbox.commands.run_in_session(sid, "pwd; export SESS_VAR=kept; cd /")
        assert ex.error is None and stdout_text(ex) == "/tmp"
        ex = sandbox.commands.run_in_session(sid, 'pwd; echo "$SESS_VAR"')
        assert stdout_text(ex) == "/\nkept"
        ex = sandbox.commands.run_in_session(sid, "pwd", working_directory="/etc")
        assert stdout_text(ex) == "/etc"
        ex = sandbox.commands.run_in_session(sid, "false")
        assert ex.error is not None
    finally:
        sandbox.commands.delete_session(sid)


def test_concurrent_commands(sandbox):
    def one(i):
        return stdout_text(sandbox.commands.run(f"sleep 0.3; echo n{i}"))

    with ThreadPoolExecutor(max_workers=6) as pool:
        out = list(pool.map(one, range(6)))
    assert out == [f"n{i}" for i in range(6)]
