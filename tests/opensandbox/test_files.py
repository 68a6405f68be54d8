"""sandbox.files.* through the official SDK (execd /files/*, /directories/*)."""

from __future__ import annotations

import hashlib
import os
import uuid
from io import BytesIO

import pytest

from osb_util import stdout_text


@pytest.fixture
def d(sandbox):
    """A fresh directory for one test."""
    path = f"/tmp/osb-{uuid.uuid4().hex[:10]}"
    ex = sandbox.commands.run(f"mkdir -p {path}")
    assert ex.error is None
    return path


def test_write_read_text(sandbox, d):
    text = "Hello Filesystem!\nLine 2 with special chars: åäö ✓\nLine 3"
    path = f"{d}/hello.txt"
    sandbox.files.write_file(path, text)
    assert sandbox.files.read_file(path) == text
    # visible to commands too
    assert stdout_text(sandbox.commands.run(f"cat {path}")) == text
    # overwrite with shorter content truncates
    sandbox.files.write_file(path, "short")
    assert sandbox.files.read_file(path) == "short"


def test_write_files_several_kinds_of_data(sandbox, d):
    from opensandbox.models.filesystem import WriteEntry

    content = "same content\n"
    sandbox.files.write_files([
        WriteEntry(path=f"{d}/a.txt", data=content, mode=644),
        WriteEntry(path=f"{d}/b.txt", data=content.encode(), mode=755),
        WriteEntry(path=f"{d}/c.txt", data=BytesIO(content.encode()), mode=600),
    ])
    for name in ("a", "b", "c"):
        assert sandbox.files.read_file(f"{d}/{name}.txt") == content
    info = sandbox.files.get_file_info([f"{d}/a.txt", f"{d}/b.txt", f"{d}/c.txt"])
    assert info[f"{d}/a.txt"].mode == 644
    assert info[f"{d}/b.txt"].mode == 755
    assert info[f"{d}/c.txt"].mode == 600


def test_write_creates_parent_directories(sandbox, d):
    path = f"{d}/deep/er/file.txt"
    sandbox.files.write_file(path, "nested")
    assert sandbox.files.read_file(path) == "nested"


def test_binary_file_roundtrip(sandbox, d):
    data = bytes(range(256)) * 16 + b"\x00\xff\r\n\x00"
    path = f"{d}/blob.bin"
    sandbox.files.write_file(path, data)
    assert sandbox.files.read_bytes(path) == data
    # and it is the same file the sandbox sees
    out = stdout_text(sandbox.commands.run(f"sha256sum {path}"))
    assert out.split()[0] == hashlib.sha256(data).hexdigest()


def test_large_file_5mb(sandbox, d):
    data = os.urandom(5 * 1024 * 1024 + 123)
    path = f"{d}/big.bin"
    sandbox.files.write_file(path, data)
    # Cross-checks use python rather than coreutils' stat/ls: those fail with EINVAL on the
    # gvisor backend's runsc (docs/threat-model.md), and a failing ls prints nothing.
    out = stdout_text(
        sandbox.commands.run(f"python3 -c 'import os; print(os.stat(\"{path}\").st_size)'; sha256sum {path}")
    ).split()
    assert int(out[0]) == len(data)
    assert out[1] == hashlib.sha256(data).hexdigest()
    back = sandbox.files.read_bytes(path)
    assert len(back) == len(data) and back == data
    streamed = b"".join(sandbox.files.read_bytes_stream(path, chunk_size=256 * 1024))
    assert streamed == data


def test_read_range(sandbox, d):
    path = f"{d}/lines.txt"
    sandbox.files.write_file(path, "0123456789\nline2\nline3\nline4\n")
    assert sandbox.files.read_file(path, range_header="bytes=0-9") == "0123456789"
    assert sandbox.files.read_bytes(path, range_header="bytes=11-15") == b"line2"


def test_read_lines_offset_limit(sandbox, d):
    path = f"{d}/lines.txt"
    sandbox.files.write_file(path, "0123456789\nline2\nline3\nline4\n")
    # line-based: offset is the 1-based first line, limit the number of lines
    part = sandbox.files.read_file(path, offset=2, limit=2)
    assert "line2" in part and "line3" in part, part
    assert "0123456789" not in part and "line4" not in part, part


def test_get_file_info(sandbox, d):
    path = f"{d}/info.txt"
    sandbox.files.write_file(path, "12345", mode=640)
    info = sandbox.files.get_file_info([path, d])
    f = info[path]
    assert f.path == path
    assert f.size == 5
    assert f.mode == 640
    assert f.owner and f.group
    assert abs((f.modified_at - f.created_at).total_seconds()) < 5
    assert info[d].path == d


def test_list_directory(sandbox, d):
    from opensandbox.models.filesystem import DirectoryListEntry

    sandbox.files.write_file(f"{d}/top.txt", "t")
    sandbox.files.write_file(f"{d}/sub/inner.txt", "i")
    entries = sandbox.files.list_directory(DirectoryListEntry(path=d, depth=1))
    paths = {e.path for e in entries}
    assert f"{d}/top.txt" in paths and f"{d}/sub" in paths, paths
    assert f"{d}/sub/inner.txt" not in paths
    by_path = {e.path: e for e in entries}
    assert by_path[f"{d}/top.txt"].size == 1
    assert by_path[f"{d}/top.txt"].entry_type in ("file", "regular", None), by_path[f"{d}/top.txt"]
    assert by_path[f"{d}/sub"].entry_type in ("directory", "dir", None)

    deep = {e.path for e in sandbox.files.list_directory(DirectoryListEntry(path=d, depth=2))}
    assert f"{d}/sub/inner.txt" in deep, deep


def test_search(sandbox, d):
    from opensandbox.models.filesystem import SearchEntry

    for name in ("a.py", "b.py", "c.txt"):
        sandbox.files.write_file(f"{d}/{name}", name)
    found = {e.path for e in sandbox.files.search(SearchEntry(path=d, pattern="*.py"))}
    assert found == {f"{d}/a.py", f"{d}/b.py"}
    everything = sandbox.files.search(SearchEntry(path=d, pattern="*"))
    assert {e.path for e in everything} == {f"{d}/a.py", f"{d}/b.py", f"{d}/c.txt"}


def test_delete_files(sandbox, d):
    from opensandbox.exceptions import SandboxException

    p1, p2 = f"{d}/gone1.txt", f"{d}/gone2.txt"
    sandbox.files.write_file(p1, "x")
    sandbox.files.write_file(p2, "y")
    sandbox.files.delete_files([p1, p2])
    with pytest.raises(SandboxException):
        sandbox.files.read_file(p1)
    assert stdout_text(sandbox.commands.run(f"python3 -c 'import os; print(len(os.listdir(\"{d}\")))'")) == "0"


@pytest.mark.sdk_errors_expected
def test_read_missing_file_is_404(sandbox, d):
    from opensandbox.exceptions import SandboxApiException

    with pytest.raises(SandboxApiException) as ei:
        sandbox.files.read_file(f"{d}/does-not-exist")
    assert ei.value.status_code == 404, ei.value


def test_directories_create_and_delete(sandbox, d):
    from opensandbox.models.filesystem import WriteEntry

    a, b = f"{d}/dir_a", f"{d}/dir_b/nested"
    sandbox.files.create_directories([WriteEntry(path=a, mode=755), WriteEntry(path=b, mode=700)])
    info = sandbox.files.get_file_info([a, b])
    assert info[a].mode == 755
    assert info[b].mode == 700
    sandbox.files.write_file(f"{a}/file.txt", "content")
    sandbox.files.delete_directories([a, f"{d}/dir_b"])
    ex = sandbox.commands.run(f"test ! -e {a} && test ! -e {d}/dir_b && echo OK")
    assert stdout_text(ex) == "OK"


def test_move_files(sandbox, d):
    from opensandbox.exceptions import SandboxException
    from opensandbox.models.filesystem import MoveEntry

    sandbox.files.write_file(f"{d}/src.txt", "moving")
    sandbox.files.move_files([MoveEntry(src=f"{d}/src.txt", dest=f"{d}/moved/dst.txt")])
    assert sandbox.files.read_file(f"{d}/moved/dst.txt") == "moving"
    with pytest.raises(SandboxException):
        sandbox.files.read_file(f"{d}/src.txt")


def test_set_permissions(sandbox, d):
    from opensandbox.models.filesystem import SetPermissionEntry

    path = f"{d}/perm.txt"
    sandbox.files.write_file(path, "p", mode=644)
    sandbox.files.set_permissions([SetPermissionEntry(path=path, mode=600)])
    assert sandbox.files.get_file_info([path])[path].mode == 600
    mode = f"python3 -c 'import os; print(oct(os.stat(\"{path}\").st_mode & 0o777)[2:])'"
    assert stdout_text(sandbox.commands.run(mode)) == "600"


def test_replace_contents(sandbox, d):
    from opensandbox.models.filesystem import ContentReplaceEntry

    path = f"{d}/replace.txt"
    sandbox.files.write_file(path, "foo bar foo\n")
    results = sandbox.files.replace_contents_detailed(
        [ContentReplaceEntry(path=path, old_content="foo", new_content="baz")]
    )
    assert sandbox.files.read_file(path) == "baz bar baz\n"
    assert [(r.path, r.replaced_count) for r in results] == [(path, 2)]


@pytest.mark.xfail(strict=True, reason="runbox gap: chown to owner/group `nobody`/`nogroup` "
                   "fails with 400 EINVAL (ids not mapped in the sandbox's user namespace)")
def test_owner_and_group(sandbox, d):
    """WriteEntry/SetPermissionEntry owner+group (the official e2e uses nobody/nogroup)."""
    from opensandbox.models.filesystem import SetPermissionEntry, WriteEntry

    p1, p2 = f"{d}/owned1.txt", f"{d}/owned2.txt"
    sandbox.files.write_files([WriteEntry(path=p1, data="o", owner="nobody", group="nogroup", mode=644)])
    sandbox.files.write_file(p2, "o")
    sandbox.files.set_permissions([SetPermissionEntry(path=p2, owner="nobody", group="nogroup", mode=600)])
    info = sandbox.files.get_file_info([p1, p2])
    assert (info[p1].owner, info[p1].group, info[p1].mode) == ("nobody", "nogroup", 644)
    assert (info[p2].owner, info[p2].group, info[p2].mode) == ("nobody", "nogroup", 600)


def test_many_small_uploads(sandbox, d):
    """The SDK streams uploads as chunked multipart; every one of them must land."""
    failures = []
    for i in range(40):
        try:
            sandbox.files.write_file(f"{d}/n{i}.txt", "x" * (i * 97))
        except Exception as e:  # collect, to report the rate rather than the first one
            failures.append(f"{i}: {e}"[:200])
    assert failures == [], f"{len(failures)}/40 uploads failed:\n" + "\n".join(failures[:5])
