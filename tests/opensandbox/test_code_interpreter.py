"""opensandbox-code-interpreter (CodeInterpreterSync) through the official SDK
(execd /code, /code/context(s), and the Jupyter-port health check)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from osb_util import READY_TIMEOUT, stderr_text, stdout_text


@pytest.fixture(scope="module")
def interp(sandbox):
    """CodeInterpreterSync.create(sandbox) WITH its default strict health check (execd
    /ping + something listening on ${JUPYTER_PORT:-44771} inside the sandbox)."""
    from code_interpreter import CodeInterpreterSync

    ci = CodeInterpreterSync.create(sandbox, ready_timeout=READY_TIMEOUT)
    yield ci
    ci.close()


def _result_text(ex) -> str | None:
    return ex.result[0].text if ex.result else None


def test_create_and_health(interp, sandbox):
    assert interp.id == sandbox.id
    assert interp.is_healthy() is True
    assert interp.codes.ping() is True


def test_python_state_persists_default_context(interp):
    ex = interp.codes.run("x = 1")
    assert ex.error is None, ex.error
    assert ex.result == []
    ex = interp.codes.run("x + 1")
    assert ex.error is None, ex.error
    assert _result_text(ex) == "2"


def test_execution_count(interp):
    """The SDK fills Execution.execution_count from `execution_count` stream events."""
    from code_interpreter import SupportedLanguage

    ctx = interp.codes.create_context(SupportedLanguage.PYTHON)
    try:
        first = interp.codes.run("a = 1", context=ctx)
        second = interp.codes.run("a + 1", context=ctx)
        assert first.execution_count is not None, "no execution_count event"
        assert second.execution_count == first.execution_count + 1
    finally:
        interp.codes.delete_context(ctx.id)


def test_python_stdout_and_stderr(interp):
    ex = interp.codes.run("import sys\nprint('out-line')\nprint('err-line', file=sys.stderr)")
    assert ex.error is None
    assert stdout_text(ex) == "out-line"
    assert stderr_text(ex) == "err-line"
    assert ex.result == []


def test_python_context(interp):
    from code_interpreter import SupportedLanguage

    ctx = interp.codes.create_context(SupportedLanguage.PYTHON)
    assert ctx.id and ctx.language == "python"
    other = interp.codes.create_context(SupportedLanguage.PYTHON)
    try:
        assert interp.codes.run("y = 41", context=ctx).error is None
        assert _result_text(interp.codes.run("y + 1", context=ctx)) == "42"
        # contexts are isolated from each other
        ex = interp.codes.run("y", context=other)
        assert ex.error is not None and ex.error.name == "NameError"

        got = interp.codes.get_context(ctx.id)
        assert got.id == ctx.id and got.language == "python"
        ids = {c.id for c in interp.codes.list_contexts(SupportedLanguage.PYTHON)}
        assert {ctx.id, other.id} <= ids
    finally:
        interp.codes.delete_context(ctx.id)
        interp.codes.delete_context(other.id)
    ids = {c.id for c in interp.codes.list_contexts(SupportedLanguage.PYTHON)}
    assert ctx.id not in ids and other.id not in ids


def test_bash_context(interp):
    from code_interpreter import SupportedLanguage

    ctx = interp.codes.create_context(SupportedLanguage.BASH)
    assert ctx.language == "bash"
    try:
        assert interp.codes.run("FOO=bar; cd /tmp", context=ctx).error is None
        ex = interp.codes.run('echo "$FOO"; pwd', context=ctx)
        assert ex.error is None
        assert stdout_text(ex) == "bar\n/tmp"
        # language= shortcut: default bash context
        ex = interp.codes.run("echo via-language", language=SupportedLanguage.BASH)
        assert stdout_text(ex) == "via-language"
    finally:
        interp.codes.delete_context(ctx.id)


def test_javascript_context(interp):
    from code_interpreter import SupportedLanguage

    ctx = interp.codes.create_context(SupportedLanguage.JAVASCRIPT)
    try:
        assert interp.codes.run("var z = 20;", context=ctx).error is None
        ex = interp.codes.run("console.log('js', z + 1)", context=ctx)
        assert ex.error is None, ex.error
        assert stdout_text(ex) == "js 21"
    finally:
        interp.codes.delete_context(ctx.id)


def test_delete_contexts_by_language(interp):
    from code_interpreter import SupportedLanguage

    a = interp.codes.create_context(SupportedLanguage.BASH)
    b = interp.codes.create_context(SupportedLanguage.BASH)
    interp.codes.delete_contexts(SupportedLanguage.BASH)
    ids = {c.id for c in interp.codes.list_contexts(SupportedLanguage.BASH)}
    assert a.id not in ids and b.id not in ids


def test_python_error_with_traceback(interp):
    from opensandbox.models.execd_sync import ExecutionHandlersSync

    errors = []
    ex = interp.codes.run(
        "def boom():\n    return 1 / 0\nprint('before')\nboom()",
        handlers=ExecutionHandlersSync(on_error=errors.append),
    )
    assert stdout_text(ex) == "before"
    assert ex.error is not None
    assert ex.error.name == "ZeroDivisionError"
    assert "division by zero" in ex.error.value
    assert ex.error.traceback, "traceback must be a non-empty list of lines"
    tb = "\n".join(ex.error.traceback)
    assert "boom" in tb
    assert len(errors) == 1
    # the interpreter is still usable afterwards
    assert _result_text(interp.codes.run("40 + 2")) == "42"


def test_rich_result_repr(interp):
    """Jupyter `text/plain` arrives as `text`. (SDK 1.1.1 keeps only `text`: the other MIME
    types runbox sends, e.g. text/html, are dropped by the SDK's EventNode conversion.)"""
    ex = interp.codes.run(
        "class H:\n"
        "    def _repr_html_(self): return '<b>hi</b>'\n"
        "    def __repr__(self): return 'H()'\n"
        "H()"
    )
    assert ex.error is None, ex.error
    assert _result_text(ex) == "H()"
    assert len(ex.result) == 1


def test_interrupt(interp):
    from code_interpreter import SupportedLanguage
    from opensandbox.models.execd_sync import ExecutionHandlersSync

    ctx = interp.codes.create_context(SupportedLanguage.PYTHON)
    try:
        inits = []
        h = ExecutionHandlersSync(on_init=inits.append)
        start = time.monotonic()
        with ThreadPoolExecutor(max_workers=1) as pool:
            fut = pool.submit(
                interp.codes.run, "import time\nfor i in range(600):\n    time.sleep(0.1)",
                context=ctx, handlers=h,
            )
            deadline = time.monotonic() + 15
            while not inits and time.monotonic() < deadline:
                time.sleep(0.05)
            assert inits, "no init event"
            time.sleep(0.3)
            interp.codes.interrupt(inits[0].id)
            ex = fut.result(timeout=30)
        assert time.monotonic() - start < 20
        assert ex.error is not None and ex.error.name == "KeyboardInterrupt", ex.error
        # the context survives an interrupt
        assert _result_text(interp.codes.run("1 + 1", context=ctx)) == "2"
    finally:
        interp.codes.delete_context(ctx.id)


def test_code_sees_files_written_by_sdk(interp):
    interp.files.write_file("/tmp/ci-shared.txt", "shared-by-files-api")
    ex = interp.codes.run("open('/tmp/ci-shared.txt').read()")
    assert _result_text(ex) == "'shared-by-files-api'"
