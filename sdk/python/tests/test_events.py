"""The execd event stream parser and the folding of events into results (no server)."""

from __future__ import annotations

import json

import pytest

from runbox import ExecutionError, ProtocolError
from runbox._events import CommandBuilder, EventParser, ExecutionBuilder, parse_events


def ev(kind: str, **fields: object) -> dict[str, object]:
    return {"type": kind, "timestamp": 1700000000000, **fields}


def wire(*events: dict[str, object], data_prefix: bool = False, crlf: bool = False) -> bytes:
    nl = "\r\n" if crlf else "\n"
    out = ""
    for e in events:
        line = json.dumps(e, ensure_ascii=False)
        out += ("data: " + line if data_prefix else line) + nl + nl
    return out.encode()


EVENTS = [
    ev("init", text="exec-1"),
    ev("execution_count", execution_count=3),
    ev("stdout", text="hello"),
    ev("stderr", text="warn: ünïcode"),
    ev("result", results={"text": "42"}, execution_count=3),
    ev("execution_complete", execution_time=12),
]


@pytest.mark.parametrize("data_prefix", [False, True])
@pytest.mark.parametrize("crlf", [False, True])
def test_parser_whole_stream(data_prefix: bool, crlf: bool) -> None:
    assert list(parse_events([wire(*EVENTS, data_prefix=data_prefix, crlf=crlf)])) == EVENTS


@pytest.mark.parametrize("data_prefix", [False, True])
def test_parser_byte_by_byte(data_prefix: bool) -> None:
    raw = wire(*EVENTS, data_prefix=data_prefix)
    parser = EventParser()
    got = []
    for i in range(len(raw)):
        got.extend(parser.feed(raw[i : i + 1]))
    got.extend(parser.close())
    assert got == EVENTS


def test_parser_multibyte_utf8_split_across_chunks() -> None:
    raw = wire(ev("stdout", text="€uro"))
    cut = raw.index("€".encode()) + 1  # in the middle of the euro sign
    assert list(parse_events([raw[:cut], raw[cut:]])) == [ev("stdout", text="€uro")]


def test_parser_ignores_sse_fields_and_comments() -> None:
    raw = b": keep-alive\n\nevent: message\nid: 7\nretry: 100\ndata: " + json.dumps(EVENTS[0]).encode() + b"\n\n"
    assert list(parse_events([raw])) == [EVENTS[0]]


def test_parser_multiline_data_event() -> None:
    raw = b'data: {"type": "stdout",\ndata:  "text": "x", "timestamp": 1}\n\n'
    assert list(parse_events([raw])) == [{"type": "stdout", "text": "x", "timestamp": 1}]


def test_parser_without_blank_lines_and_without_final_newline() -> None:
    raw = (json.dumps(EVENTS[0]) + "\n" + json.dumps(EVENTS[1])).encode()
    assert list(parse_events([raw])) == EVENTS[:2]


def test_parser_rejects_garbage() -> None:
    with pytest.raises(ProtocolError):
        list(parse_events([b"this is not json\n\n"]))
    with pytest.raises(ProtocolError):
        list(parse_events([b"[1, 2]\n\n"]))


def test_execution_builder_collects_everything_and_calls_back() -> None:
    out: list[str] = []
    err: list[str] = []
    b = ExecutionBuilder(on_stdout=out.append, on_stderr=err.append)
    for e in EVENTS:
        b.apply(e)
    ex = b.finish()
    assert b.complete
    assert ex.id == "exec-1"
    assert ex.execution_count == 3
    assert ex.logs.stdout == ["hello"] and out == ["hello"]
    assert ex.logs.stderr == ["warn: ünïcode"] and err == ["warn: ünïcode"]
    assert ex.text == "42"
    assert ex.results[0].is_main_result
    assert ex.execution_time_ms == 12
    assert ex.error is None and ex.success


def test_main_result_is_the_value_not_the_figure() -> None:
    b = ExecutionBuilder()
    b.apply(ev("result", results={"text": "[<matplotlib.lines.Line2D at 0x1>]"}))
    b.apply(ev("result", results={"text": "{'a': 1}"}))  # __result__
    b.apply(ev("result", results={"image/png": "iVBORw0KGgo=", "text": "<Figure size 640x480 with 1 Axes>"}))
    ex = b.finish()
    assert [r.is_main_result for r in ex.results] == [False, True, False]
    assert ex.text == "{'a': 1}"
    fig = ex.results[2]
    assert fig.is_figure and fig.png == "iVBORw0KGgo=" and fig.formats() == ["text", "png"]


def test_only_figures_means_no_main_result() -> None:
    b = ExecutionBuilder()
    b.apply(ev("result", results={"image/png": "AA==", "text": "<Figure size 1x1>"}))
    assert b.finish().main_result is None


def test_result_formats() -> None:
    b = ExecutionBuilder()
    b.apply(
        ev(
            "result",
            results={
                "text": "df",
                "text/html": "<table></table>",
                "text/markdown": "| a |",
                "image/svg+xml": "<svg/>",
                "application/json": {"a": 1},
                "application/x-custom": "?",
            },
        )
    )
    r = b.finish().results[0]
    assert r.html == "<table></table>" and r.markdown == "| a |" and r.svg == "<svg/>"
    assert r.json == {"a": 1}
    assert r.formats() == ["text", "html", "markdown", "svg", "json", "application/x-custom"]
    assert r["text/html"] == "<table></table>" and "image/png" not in r


def test_execution_error() -> None:
    seen: list[ExecutionError] = []
    b = ExecutionBuilder(on_error=seen.append)
    tb = ["Traceback (most recent call last):", '  File "<cell-1>", line 1, in <module>', "ZeroDivisionError: division by zero"]
    b.apply(ev("error", error={"ename": "ZeroDivisionError", "evalue": "division by zero", "traceback": tb}))
    b.apply(ev("execution_complete"))
    ex = b.finish()
    assert ex.error is not None and seen == [ex.error]
    assert ex.error.name == "ZeroDivisionError" and ex.error.value == "division by zero"
    assert ex.error.traceback == tb and "ZeroDivisionError" in ex.error.traceback_text
    assert not ex.success and ex.text is None


def test_command_builder_exit_codes() -> None:
    ok = CommandBuilder()
    for e in [ev("init", text="c1"), ev("stdout", text="a"), ev("stdout", text="b"), ev("execution_complete", execution_time=5)]:
        ok.apply(e)
    r = ok.finish()
    assert (r.id, r.stdout, r.stderr, r.exit_code, r.error, r.success) == ("c1", "a\nb\n", "", 0, None, True)

    bad = CommandBuilder()
    for e in [
        ev("stderr", text="nope"),
        ev("error", error={"ename": "CommandExecError", "evalue": "3", "traceback": []}),
        ev("execution_complete"),
    ]:
        bad.apply(e)
    r = bad.finish()
    assert r.exit_code == 3 and r.error is not None and r.error.name == "CommandExecError"
    assert r.stderr == "nope\n" and not r.success

    bg = CommandBuilder()
    for e in [ev("init", text="bg1"), ev("execution_complete")]:
        bg.apply(e)
    r = bg.finish(background=True)
    assert r.id == "bg1" and r.exit_code is None
