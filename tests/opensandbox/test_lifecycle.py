"""Sandbox lifecycle through the official SDK: create / get_info / renew / metadata /
list with filters / pause-resume / metrics / kill, and the SDK's telemetry call."""

from __future__ import annotations

import json
import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from osb_util import IMAGE, READY_TIMEOUT, stdout_text


def test_create_default_entrypoint_and_info(make_sandbox, http_spy):
    """Sandbox.create("python:3.11") with the SDK defaults; get_info echoes what was sent."""
    before = datetime.now(timezone.utc)
    sb = make_sandbox(timeout=timedelta(minutes=7), metadata={"suite": "osb", "case": "create"})
    info = sb.get_info()

    assert info.id == sb.id
    assert info.status.state == "Running", info.status
    # The SDK's default entrypoint is sent and must come back (their e2e suite checks it).
    assert info.entrypoint[-3:] == ["tail", "-f", "/dev/null"], info.entrypoint
    assert info.image is not None and info.image.image == IMAGE, info.image
    assert info.metadata == {"suite": "osb", "case": "create"}
    assert before - timedelta(seconds=5) <= info.created_at <= datetime.now(timezone.utc) + timedelta(seconds=5)
    assert info.expires_at is not None
    expected = info.created_at + timedelta(minutes=7)
    assert abs((info.expires_at - expected).total_seconds()) < 10, (info.created_at, info.expires_at)

    # The exact call sequence the SDK used against runbox (all must have succeeded).
    assert [e.status for e in http_spy.find("POST", "/v1/sandboxes")
            if e.url.endswith("/v1/sandboxes")] == [202]
    for port in ("44772",):
        eps = http_spy.find("GET", f"/v1/sandboxes/{sb.id}/endpoints/{port}")
        assert eps and all(e.status == 200 for e in eps), http_spy.dump()
    pings = http_spy.find("GET", "/ping")
    assert pings and pings[-1].status == 200, http_spy.dump()


def test_create_with_none_timeout_has_no_expiry(make_sandbox):
    sb = make_sandbox(timeout=None)
    info = sb.get_info()
    assert info.expires_at is None
    assert info.status.state == "Running"


def test_env_var_configuration_and_telemetry(sdk_env, http_spy):
    """No ConnectionConfig at all: OPEN_SANDBOX_DOMAIN / OPEN_SANDBOX_API_KEY (set by the
    sdk_env fixture). Telemetry on: the SDK fires POST /v1/metrics/events -> 204."""
    from opensandbox import SandboxSync

    sb = SandboxSync.create(IMAGE, ready_timeout=READY_TIMEOUT)
    try:
        assert f"http://{sdk_env.domain}/" in http_spy.find("POST", "/v1/sandboxes")[0].url
        mine = []
        deadline = time.monotonic() + 15
        while not mine and time.monotonic() < deadline:
            mine = [e for e in http_spy.find("POST", "/v1/metrics/events")
                    if json.loads(e.body or b"{}").get("sandboxId") == sb.id]
            time.sleep(0.05)
        assert mine, "SDK did not send its telemetry event:\n" + http_spy.dump()
        assert mine[0].status == 204, http_spy.dump()
        assert json.loads(mine[0].body)["eventType"] == "sandbox.create"
        assert stdout_text(sb.commands.run("echo env-config")) == "env-config"
    finally:
        sb.kill()
        sb.close()


def test_telemetry_disabled(conn, http_spy, monkeypatch):
    """OPENSANDBOX_DISABLE_METRICS=1: no POST /v1/metrics/events at all."""
    from opensandbox import SandboxSync

    monkeypatch.setenv("OPENSANDBOX_DISABLE_METRICS", "1")
    sb = SandboxSync.create(IMAGE, connection_config=conn(), ready_timeout=READY_TIMEOUT)
    try:
        assert stdout_text(sb.commands.run("echo quiet")) == "quiet"
        time.sleep(0.5)  # the SDK posts telemetry from a background thread
        mine = [e for e in http_spy.find("POST", "/v1/metrics/events")
                if json.loads(e.body or b"{}").get("sandboxId") == sb.id]
        assert mine == [], http_spy.dump()
    finally:
        sb.kill()
        sb.close()


def test_renew(make_sandbox):
    sb = make_sandbox(timeout=timedelta(minutes=5))
    before = sb.get_info().expires_at
    resp = sb.renew(timedelta(minutes=30))
    target = datetime.now(timezone.utc) + timedelta(minutes=30)
    assert abs((resp.expires_at - target).total_seconds()) < 10, resp
    after = sb.get_info().expires_at
    assert after > before
    assert abs((after - resp.expires_at).total_seconds()) < 1


def test_patch_metadata(make_sandbox):
    sb = make_sandbox(metadata={"keep": "1", "drop": "2"})
    info = sb.patch_metadata({"drop": None, "new": "3"})
    assert info.metadata == {"keep": "1", "new": "3"}
    assert sb.get_info().metadata == {"keep": "1", "new": "3"}


def test_list_sandboxes_with_metadata_filter(make_sandbox, conn):
    from opensandbox import SandboxManagerSync
    from opensandbox.models.sandboxes import SandboxFilter

    tag = uuid.uuid4().hex[:12]
    a = make_sandbox(metadata={"listtag": tag, "role": "a"})
    b = make_sandbox(metadata={"listtag": tag, "role": "b"})
    make_sandbox(metadata={"listtag": "other-" + tag})

    mgr = SandboxManagerSync.create(connection_config=conn())
    try:
        page = mgr.list_sandbox_infos(SandboxFilter(metadata={"listtag": tag}))
        assert sorted(i.id for i in page.sandbox_infos) == sorted([a.id, b.id])
        assert page.pagination.total_items == 2

        page = mgr.list_sandbox_infos(SandboxFilter(metadata={"listtag": tag, "role": "b"}))
        assert [i.id for i in page.sandbox_infos] == [b.id]
        assert page.sandbox_infos[0].metadata == {"listtag": tag, "role": "b"}

        page = mgr.list_sandbox_infos(
            SandboxFilter(states=["Running"], metadata={"listtag": tag}, page=1, page_size=1)
        )
        assert len(page.sandbox_infos) == 1
        assert page.pagination.page_size == 1
        assert page.pagination.total_items == 2
        assert page.pagination.has_next_page is True

        page = mgr.list_sandbox_infos(SandboxFilter(states=["Paused"], metadata={"listtag": tag}))
        assert page.sandbox_infos == []

        info = mgr.get_sandbox_info(a.id)
        assert info.id == a.id and info.metadata["role"] == "a"
    finally:
        mgr.close()


def test_pause_resume(make_sandbox, conn):
    from opensandbox import SandboxSync

    sb = make_sandbox()
    sb.commands.run("echo before > /tmp/pause-marker")
    sb.pause()
    assert sb.get_info().status.state == "Paused"
    resumed = SandboxSync.resume(sb.id, connection_config=conn(), resume_timeout=READY_TIMEOUT)
    try:
        assert resumed.get_info().status.state == "Running"
        assert stdout_text(resumed.commands.run("cat /tmp/pause-marker")) == "before"
    finally:
        resumed.close()


def test_connect_to_existing(sandbox, conn):
    from opensandbox import SandboxSync

    other = SandboxSync.connect(sandbox.id, connection_config=conn(), connect_timeout=READY_TIMEOUT)
    try:
        assert other.id == sandbox.id
        assert stdout_text(other.commands.run("echo connected")) == "connected"
    finally:
        other.close()


def test_metrics_and_endpoint(sandbox):
    m = sandbox.get_metrics()
    assert m.cpu_count > 0
    assert m.memory_total_in_mib > 0
    assert 0 <= m.memory_used_in_mib <= m.memory_total_in_mib
    assert m.timestamp > 0
    ep = sandbox.get_endpoint(44772)
    assert "://" not in ep.endpoint and ep.endpoint
    assert sandbox.is_healthy()


@pytest.mark.sdk_errors_expected
def test_kill_then_calls_fail_cleanly(make_sandbox, conn):
    from opensandbox import SandboxManagerSync
    from opensandbox.exceptions import SandboxApiException, SandboxException
    from opensandbox.models.sandboxes import SandboxFilter

    tag = uuid.uuid4().hex[:12]
    sb = make_sandbox(metadata={"killtag": tag})
    sid = sb.id
    sb.kill()

    # The spec lets a deleted sandbox either vanish (404) or linger as Stopping/Terminated.
    try:
        state = sb.get_info().status.state
    except SandboxApiException as e:
        assert e.status_code == 404, e
    else:
        assert state in ("Stopping", "Terminated"), state

    mgr = SandboxManagerSync.create(connection_config=conn())
    try:
        running = mgr.list_sandbox_infos(SandboxFilter(states=["Running"], metadata={"killtag": tag}))
        assert running.sandbox_infos == []
        with pytest.raises(SandboxApiException) as ei:
            mgr.kill_sandbox("0" * 32)
        assert ei.value.status_code == 404, ei.value
        with pytest.raises(SandboxApiException) as ei:
            mgr.get_sandbox_info("0" * 32)
        assert ei.value.status_code == 404, ei.value
    finally:
        mgr.close()

    # execd calls on the dead sandbox: a clean SDK exception, not a hang or a crash.
    with pytest.raises(SandboxException):
        sb.commands.run("echo should-not-run")
    with pytest.raises(SandboxException):
        sb.files.read_file("/etc/hostname")
    assert sb.is_healthy() is False
    with pytest.raises(SandboxException):
        sb.renew(timedelta(minutes=5))


@pytest.mark.sdk_errors_expected
def test_expiry_terminates_sandbox(make_sandbox):
    """Once expiresAt passes, the server ends the sandbox. (create() requires timeout >= 60 s
    per the spec; renew() may shorten the lifetime, as the SDK documents.)"""
    from opensandbox.exceptions import SandboxApiException, SandboxException

    sb = make_sandbox(timeout=timedelta(seconds=60))
    assert stdout_text(sb.commands.run("echo alive")) == "alive"
    sb.renew(timedelta(seconds=2))
    state = "Running"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            state = sb.get_info().status.state
        except SandboxApiException as e:
            assert e.status_code == 404
            state = "gone"
        if state != "Running":
            break
        time.sleep(0.5)
    assert state in ("Stopping", "Terminated", "gone"), state
    with pytest.raises(SandboxException):
        sb.commands.run("echo should-not-run")


@pytest.mark.sdk_errors_expected
def test_wrong_api_key_is_rejected(conn):
    from opensandbox import SandboxSync
    from opensandbox.exceptions import SandboxApiException

    with pytest.raises(SandboxApiException) as ei:
        SandboxSync.create(IMAGE, connection_config=conn(api_key="not-the-key-xxxxxxxx"),
                           ready_timeout=READY_TIMEOUT)
    assert ei.value.status_code == 401, ei.value
