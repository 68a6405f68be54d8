# runbox python kernel: one interpreter per code context, driven by the agent.
#
# Protocol. fd 0 is, at start, a unix socket to the agent (std's Command can only place fds
# 0-2 without unsafe code); the driver moves it to a private close-on-exec fd and puts
# /dev/null on fd 0. Requests arrive as "<id> <byte length>\n<utf-8 code>"; events go back as
# JSON lines: ready, result, error, done (the agent numbers the cells itself). fds 1 and 2 are pipes the agent reads itself,
# so output of subprocesses arrives too; the driver flushes them before every event so that
# output precedes the event that follows it.
#
# Start-up cost matters (a context is created per request in the common case), so only
# builtin modules are imported eagerly; json, traceback, base64, asyncio, etc. are imported
# when a cell first needs them.
import sys
import os
import _ast
import _signal
import builtins as _builtins_module

# Functions defined below capture this copy, so user code that deletes or replaces builtins
# cannot break the driver.
__builtins__ = dict(_builtins_module.__dict__)
_saved_builtins = dict(__builtins__)

_DRIVER_FILE = sys._getframe().f_code.co_filename
_PyCF_ONLY_AST = 0x400
_PyCF_ALLOW_TOP_LEVEL_AWAIT = 0x2000
_CO_COROUTINE = 0x80

_driver_pid = os.getpid()
_ctl = os.dup(0)  # non-inheritable: user subprocesses never see the channel
_null = os.open(os.devnull, os.O_RDONLY)
os.dup2(_null, 0)
os.close(_null)
os.environ.setdefault("MPLBACKEND", "Agg")


def _policy_list(var):
    raw = os.environ.pop(var, None)
    if raw is None:
        return None
    return frozenset(m.strip() for m in raw.split(",") if m.strip())


_allow = _policy_list("RUNBOX_IMPORT_ALLOW")
_deny = _policy_list("RUNBOX_IMPORT_DENY") or frozenset()

_main = type(sys)("__main__")
_user_ns = _main.__dict__
_user_ns["__builtins__"] = _builtins_module
_driver_module = sys.modules.get("__main__")
sys.modules["__main__"] = _main
_sources = {}
_running = [False]
_asyncio_loop = [None]


# ---- JSON out (the json package costs ~10 ms to import; _json is builtin and enough) ----

try:
    from _json import encode_basestring_ascii as _enc_str
except ImportError:  # pragma: no cover - every CPython has _json
    def _enc_str(s):
        return '"' + s.replace("\\", "\\\\").replace('"', '\\"').encode("unicode_escape").decode("ascii") + '"'


def _enc(o, out):
    if o is None or o is True or o is False:
        out.append("null" if o is None else ("true" if o else "false"))
    elif isinstance(o, str):
        out.append(_enc_str(o))
    elif isinstance(o, int):
        out.append(int.__repr__(o))
    elif isinstance(o, float):
        out.append(float.__repr__(o) if o == o and o not in (float("inf"), float("-inf")) else "null")
    elif isinstance(o, dict):
        out.append("{")
        first = True
        for k, v in o.items():
            if not first:
                out.append(",")
            first = False
            out.append(_enc_str(k if isinstance(k, str) else str(k)))
            out.append(":")
            _enc(v, out)
        out.append("}")
    elif isinstance(o, (list, tuple)):
        out.append("[")
        for i, v in enumerate(o):
            if i:
                out.append(",")
            _enc(v, out)
        out.append("]")
    else:
        out.append(_enc_str(str(o)))


# Events a cell produces without running user code on the way (a plain result, the error
# after it was formatted, done) are queued and written together with the next event, so a
# plain cell costs one write and one wake-up of the agent. Anything that may run user code
# (a rich repr, str() of an exception, figures) writes the queue first, so output it prints
# still follows the events before it.
_queued = []


def _queue(event):
    if os.getpid() != _driver_pid:
        # A child of os.fork() that returned out of the cell: it must not act as the kernel.
        os._exit(0)
    _flush_streams()
    _enc(event, _queued)
    _queued.append("\n")


def _send(event):
    _queue(event)
    _flush_events()


def _queue_done(rid):
    if os.getpid() != _driver_pid:
        os._exit(0)
    _flush_streams()
    _queued.append('{"ev":"done","id":%d}\n' % rid)


_unsent = [b""]


def _flush_events():
    if _queued:
        _unsent[0] += "".join(_queued).encode("utf-8", "surrogatepass")
        _queued.clear()
    while _unsent[0]:
        try:
            n = os.write(_ctl, _unsent[0])
        except InterruptedError:
            continue
        _unsent[0] = _unsent[0][n:]


def _flush_streams():
    for s in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            s.flush()
        except BaseException:
            pass


# ---- requests in ----

_inbuf = bytearray()


def _read_more():
    while True:
        try:
            chunk = os.read(_ctl, 1 << 16)
        except InterruptedError:
            continue
        except KeyboardInterrupt:
            continue
        if not chunk:
            os._exit(0)  # the agent closed the channel: shut down
        _inbuf.extend(chunk)
        return


def _read_request():
    while b"\n" not in _inbuf:
        _read_more()
    head, _, _ = bytes(_inbuf).partition(b"\n")
    del _inbuf[: len(head) + 1]
    rid, length = head.split()
    length = int(length)
    while len(_inbuf) < length:
        _read_more()
    code = bytes(_inbuf[:length]).decode("utf-8", "replace")
    del _inbuf[:length]
    return int(rid), code


# ---- interrupts: SIGINT raises only while user code runs ----

def _on_sigint(signum, frame):
    if _running[0]:
        raise KeyboardInterrupt


_signal.signal(_signal.SIGINT, _on_sigint)


# Compiled on first use: compiling them with the rest at every start would cost milliseconds
# that a kernel running plain code never needs back.
_EXTRAS = r"""
# ---- import policy (PEP 578 audit hook + __import__ guard for already-loaded modules) ----

class ImportBlockedError(ModuleNotFoundError):
    pass


def _matches(name, names):
    parts = name.split(".")
    return any(".".join(parts[: i + 1]) in names for i in range(len(parts)))


def _check_import(name):
    if _matches(name, _deny):
        rule = "denied modules: " + ", ".join(sorted(_deny))
    elif _allow is not None and not _matches(name, _allow):
        rule = "allowed modules: " + (", ".join(sorted(_allow)) or "none")
    else:
        return
    raise ImportBlockedError("import of '%s' is blocked by the sandbox's import policy (%s)" % (name, rule), name=name)


def _audit(event, args):
    # Only imports written in cell code are checked: the modules an allowed module needs
    # (random needs _random, hashlib, ...) are imported from library frames and pass.
    if event == "import" and sys._getframe(1).f_globals is _user_ns:
        _check_import(args[0])


_original_import = _builtins_module.__import__


def _guarded_import(name, globals=None, locals=None, fromlist=(), level=0):
    # The audit event fires only when a module is first loaded; `import os` from a cell must
    # be refused although os is already in sys.modules.
    if level == 0 and globals is _user_ns:
        _check_import(name)
    return _original_import(name, globals, locals, fromlist, level)


def _install_policy():
    sys.addaudithook(_audit)
    _builtins_module.__import__ = _guarded_import


# ---- rich results ----

_REPR_METHODS = (
    ("_repr_html_", "text/html"),
    ("_repr_markdown_", "text/markdown"),
    ("_repr_svg_", "image/svg+xml"),
    ("_repr_png_", "image/png"),
    ("_repr_jpeg_", "image/jpeg"),
    ("_repr_json_", "application/json"),
    ("_repr_latex_", "text/latex"),
)


def _b64(data):
    import binascii

    return binascii.b2a_base64(data, newline=False).decode("ascii")


def _rich_bundle(obj):
    data = {}
    if not isinstance(obj, type):
        try:
            method = getattr(obj, "_repr_mimebundle_", None)
            if callable(method):
                got = method()
                if isinstance(got, tuple):
                    got = got[0]
                if isinstance(got, dict):
                    data.update(got)
        except Exception:
            pass
        for attr, mime in _REPR_METHODS:
            if mime in data:
                continue
            try:
                method = getattr(obj, attr, None)
                if not callable(method):
                    continue
                got = method()
                if isinstance(got, tuple):
                    got = got[0]
                if got is not None:
                    data[mime] = got
            except Exception:
                pass
    for mime in ("image/png", "image/jpeg"):
        if isinstance(data.get(mime), (bytes, bytearray)):
            data[mime] = _b64(data[mime])
    if "text/plain" in data:
        data["text"] = data.pop("text/plain")
    else:
        try:
            data["text"] = repr(obj)
        except Exception as e:
            data["text"] = "<unrepresentable %s: %s>" % (type(obj).__name__, e)
    return data


def _send_figures_now():
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is None:
        return
    if plt.show is not _show:
        plt.show = _show
    import io

    for num in plt.get_fignums():
        fig = plt.figure(num)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", bbox_inches="tight")
        _send({"ev": "result", "data": {"image/png": _b64(buf.getvalue()), "text": repr(fig)}})
    plt.close("all")


# plt.show(): send the open figures now instead of opening a window.
def _show(*args, **kwargs):
    _send_figures()


def _quiet_matplotlib_now():
    # With the Agg backend, plt.show() in the first cell that imports pyplot (before _show is
    # installed) would warn that it cannot show; the figure is sent at the end of the cell.
    import warnings

    warnings.filterwarnings("ignore", message=".*non-interactive, and thus cannot be shown")


# ---- errors ----

_last_registered = [None, None]


def _register_sources(only=None):
    # With `only` (the new cell), the earlier cells are registered again only if the cache
    # lost them (linecache.clearcache()), so a cell does not cost more the more cells ran.
    import linecache

    cache = linecache.cache
    name, entry = _last_registered
    if only is not None and name is not None and cache.get(name) is entry:
        items = ((only, _sources[only]),)
    else:
        items = _sources.items()
    for name, src in items:
        entry = (len(src), None, src.splitlines(True), name)
        cache[name] = entry
    _last_registered[:] = [name, entry]


# The traceback chain minus the driver's own frames (the cell runner, the SIGINT handler,
# the import guard), so users see only their code and the libraries it called.
def _without_driver_frames(tb):
    kept = []
    while tb is not None:
        if tb.tb_frame.f_code.co_filename != _DRIVER_FILE:
            kept.append(tb)
        tb = tb.tb_next
    for a, b in zip(kept, kept[1:] + [None]):
        a.tb_next = b
    return kept[0] if kept else None


def _send_error_now(exc):
    tb = _without_driver_frames(exc.__traceback__)
    name = type(exc).__name__
    try:
        value = str(exc)
    except Exception:
        value = "<unprintable %s>" % name
    try:
        import traceback

        _register_sources()
        lines = "".join(traceback.format_exception(type(exc), exc, tb)).splitlines()
    except BaseException:
        lines = ["%s: %s" % (name, value)]
    _queue({"ev": "error", "ename": name, "evalue": value, "traceback": lines})
"""
_extras_loaded = [False]


def _extras():
    if not _extras_loaded[0]:
        exec(compile(_EXTRAS, _DRIVER_FILE, "exec"), globals())
        _extras_loaded[0] = True


_PLAIN = (int, float, complex, bool, str, bytes, list, tuple, dict, set, frozenset)


def _bundle(obj):
    if type(obj) in _PLAIN:
        return {"text": repr(obj)}
    _flush_events()
    _extras()
    return _rich_bundle(obj)


def _send_result(obj):
    if type(obj) in _PLAIN:
        # The common case, encoded directly.
        if os.getpid() != _driver_pid:
            os._exit(0)
        _flush_streams()
        _queued.append('{"ev":"result","data":{"text":%s}}\n' % _enc_str(repr(obj)))
        return
    _queue({"ev": "result", "data": _bundle(obj)})


def _send_error(exc):
    _flush_events()
    _extras()
    _send_error_now(exc)


def _send_figures():
    _flush_events()
    _extras()
    _send_figures_now()


def _quiet_matplotlib():
    _extras()
    _quiet_matplotlib_now()


if _allow is not None or _deny:
    _extras()
    _install_policy()


# ---- cells ----

def _compile(code, filename):
    # (statements or None, last expression or None); a cell that is one expression is
    # compiled once.
    flags = _PyCF_ALLOW_TOP_LEVEL_AWAIT
    tree = compile(code, filename, "exec", _PyCF_ONLY_AST | flags)
    body = tree.body
    last = None
    if body and isinstance(body[-1], _ast.Expr):
        last = compile(_ast.Expression(body.pop().value), filename, "eval", flags)
        if not body:
            return None, last
    return compile(tree, filename, "exec", flags), last


def _execute(code_obj):
    result = eval(code_obj, _user_ns)
    if code_obj.co_flags & _CO_COROUTINE:
        if _asyncio_loop[0] is None:
            import asyncio

            _asyncio_loop[0] = asyncio.new_event_loop()
        result = _asyncio_loop[0].run_until_complete(result)
    return result


def _restore_builtins():
    # Library code (and the traceback module the driver uses) needs the builtins a cell may
    # have deleted; names the cell replaced are left as they are.
    current = _builtins_module.__dict__
    if _saved_builtins.keys() <= current.keys():
        return
    for name, value in _saved_builtins.items():
        if name not in current:
            current[name] = value


def _run_cell(count, code):
    # The agent sends the execution count itself when it hands over the cell (it counts
    # cells per kernel process, as this loop does), so no event precedes the cell's output.
    filename = "<cell-%d>" % count
    _sources[filename] = code
    if "linecache" in sys.modules:  # for inspect.getsource and the user's own tracebacks
        _extras()
        _register_sources(filename)
    had_pyplot = "matplotlib.pyplot" in sys.modules
    try:
        body, last = _compile(code, filename)
        _running[0] = True
        try:
            if body is not None:
                _execute(body)
            value = _execute(last) if last is not None else None
        finally:
            _running[0] = False
            _restore_builtins()
    except BaseException as exc:  # noqa: B902 - SystemExit and KeyboardInterrupt included
        _running[0] = False
        _send_error(exc)
        value = None
        failed = True
    else:
        failed = False
    if value is not None:
        _user_ns["_"] = value
        _send_result(value)
    if "__result__" in _user_ns:
        _send_result(_user_ns.pop("__result__"))
    if "matplotlib.pyplot" in sys.modules:
        if not had_pyplot:
            _quiet_matplotlib()
        try:
            _send_figures()
        except Exception as exc:
            if not failed:
                _send_error(exc)


def _serve():
    count = 0
    _send({"ev": "ready"})
    while True:
        rid, code = _read_request()
        count += 1
        try:
            _run_cell(count, code)
        except BaseException as exc:  # a failure of the driver itself (or a late interrupt)
            try:
                _send_error(exc)
            except BaseException:
                pass
        while True:
            try:
                _queue_done(rid)
                break
            except KeyboardInterrupt:
                continue
        while True:
            try:
                _flush_events()
                break
            except KeyboardInterrupt:
                continue


_serve()
