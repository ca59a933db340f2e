"""Authentication: bearer token, dashboard cookie via /login, ?token= only for the event stream, CSRF header for
cookie-authenticated writes, health without auth, and token resolution (env > config > generated file, 0600)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from yarl import URL

from gateway.api.auth import COOKIE, TOKEN_ENV, TokenError, resolve_token, session_value
from tests.api.conftest import TOKEN, ApiHarness

PROTECTED = [
    ("GET", "/api/v1/images"),
    ("POST", "/api/v1/images?file_name=x.ota"),
    ("GET", "/api/v1/images/0123456789abcdef"),
    ("DELETE", "/api/v1/images/0123456789abcdef"),
    ("GET", "/api/v1/images/0123456789abcdef/download"),
    ("POST", "/api/v1/images/0123456789abcdef/approve"),
    ("POST", "/api/v1/images/0123456789abcdef/revoke"),
    ("GET", "/api/v1/devices"),
    ("GET", "/api/v1/devices/zigbee:pan:1:aa:1"),
    ("PATCH", "/api/v1/devices/zigbee:pan:1:aa:1"),
    ("POST", "/api/v1/devices/zigbee:pan:1:aa:1/update"),
    ("POST", "/api/v1/devices/zigbee:pan:1:aa:1/retry"),
    ("POST", "/api/v1/devices/zigbee:pan:1:aa:1/notify"),
    ("GET", "/api/v1/plan"),
    ("GET", "/api/v1/rollouts"),
    ("POST", "/api/v1/rollouts"),
    ("GET", "/api/v1/rollouts/r1"),
    ("POST", "/api/v1/rollouts/r1/pause"),
    ("POST", "/api/v1/rollouts/r1/resume"),
    ("POST", "/api/v1/rollouts/r1/abort"),
    ("POST", "/api/v1/query"),
    ("POST", "/api/v1/status"),
    ("GET", "/api/v1/events"),
    ("GET", "/api/v1/openapi.json"),
    ("GET", "/metrics"),
    ("GET", "/api/v1/tokens"),
    ("POST", "/api/v1/tokens"),
    ("DELETE", "/api/v1/tokens/lamp"),
    ("GET", "/api/v1/sources"),
    ("POST", "/api/v1/sources/z2m/check"),
    ("POST", "/api/v1/sources/fetch"),
]


def test_every_documented_operation_is_in_the_auth_list(harness: ApiHarness) -> None:
    listed = {(m, harness.template(p)) for m, p in PROTECTED}
    documented = {
        (m.upper(), p)
        for p, item in harness.doc["paths"].items()
        for m, op in item.items()
        if op.get("security") != [] and p != "/"
    }
    assert documented == listed


@pytest.mark.parametrize(("method", "path"), PROTECTED)
async def test_missing_token_is_401(harness: ApiHarness, method: str, path: str) -> None:
    body = await harness.call(method, path, 401, auth=False)
    assert body["error"]["code"] == "unauthorized"
    assert body["error"]["field"] == "Authorization"


@pytest.mark.parametrize(("method", "path"), PROTECTED)
async def test_wrong_token_is_401(harness: ApiHarness, method: str, path: str) -> None:
    body = await harness.call(method, path, 401, headers={"Authorization": "Bearer " + TOKEN[:-1] + "X"})
    assert body["error"]["message"] == "invalid API token"


async def test_other_schemes_and_query_token_are_refused(harness: ApiHarness) -> None:
    await harness.call("GET", "/api/v1/images", 401, headers={"Authorization": f"Basic {TOKEN}"})
    # ?token= is only for the event stream
    await harness.call("GET", f"/api/v1/images?token={TOKEN}", 401, auth=False)
    resp = await harness.client.get("/api/v1/images", headers={"Authorization": f"Bearer {TOKEN}"})
    assert resp.status == 200


async def test_health_needs_no_token(harness: ApiHarness) -> None:
    body = await harness.call("GET", "/healthz", 503, auth=False)
    assert body["status"] == "degraded"  # matter enabled but unavailable in this harness
    assert body["adapters"]["matter"]["error"] == "not installed"
    assert body["adapters"]["zigbee"]["state"] == "disabled" and body["adapters"]["zigbee"]["error"] is None
    assert (await harness.call("GET", "/livez", 200, auth=False))["status"] == "alive"


async def test_dashboard_login_flow(harness: ApiHarness) -> None:
    c = harness.client
    resp = await c.get("/", allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"] == "/login"
    resp = await c.get("/login")
    assert resp.status == 200 and "API token" in await resp.text()
    resp = await c.get("/login?token=wrong", allow_redirects=False)
    assert resp.status == 401 and "not valid" in await resp.text()
    resp = await c.post("/login", data={"token": "wrong"}, allow_redirects=False)
    assert resp.status == 401
    resp = await c.get(f"/login?token={TOKEN}", allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"] == "/"
    cookie = resp.cookies[COOKIE]
    assert cookie.value == session_value(TOKEN) and TOKEN not in cookie.value
    assert cookie["httponly"] and cookie["samesite"] == "Strict"
    # the test client keeps the cookie: the page and the API now work without a header
    resp = await c.get("/")
    assert resp.status == 200 and "otagw dashboard" in await resp.text()
    resp = await c.get("/api/v1/images")
    assert resp.status == 200
    # a cookie-authenticated write needs the CSRF header
    resp = await c.post("/api/v1/rollouts", json={})
    assert resp.status == 403 and (await resp.json())["error"]["field"] == "X-OTAGW-CSRF"
    resp = await c.post("/api/v1/rollouts", json={}, headers={"X-OTAGW-CSRF": "1"})
    assert resp.status == 422


async def test_login_by_form(harness: ApiHarness) -> None:
    resp = await harness.client.post("/login", data={"token": TOKEN}, allow_redirects=False)
    assert resp.status == 303 and COOKIE in resp.cookies


async def test_event_stream_accepts_query_token(harness: ApiHarness) -> None:
    resp = await harness.client.get(f"/api/v1/events?token={TOKEN}")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    line = await resp.content.readline()
    assert line == b"retry: 2000\n"
    resp.close()


async def test_static_assets_are_public(harness: ApiHarness) -> None:
    for name in ("app.js", "style.css"):
        resp = await harness.client.get(f"/static/{name}")
        assert resp.status == 200
    for probe in ("/static/%2e%2e/auth.py", "/static/..%2fauth.py"):
        resp = await harness.client.get(URL(probe, encoded=True))
        assert resp.status in (403, 404), probe
        assert "hmac" not in await resp.text()


# ------------------------------------------------------------------------------------ token resolution
def test_generated_token_file_is_owner_only_and_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    token, where = resolve_token(None, tmp_path / "d")
    path = tmp_path / "d" / "api-token"
    assert where == str(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(token) >= 32 and path.read_text().strip() == token
    assert resolve_token(None, tmp_path / "d") == (token, str(path))


def test_token_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    assert resolve_token("from-config-1234567", tmp_path) == ("from-config-1234567", "config api.token")
    monkeypatch.setenv(TOKEN_ENV, "from-env-123456789")
    assert resolve_token("from-config-1234567", tmp_path)[0] == "from-env-123456789"
    assert not (tmp_path / "api-token").exists()


def test_token_file_readable_by_others_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    path = tmp_path / "api-token"
    path.write_text("x" * 40)
    os.chmod(path, 0o644)
    with pytest.raises(TokenError, match="readable by others"):
        resolve_token(None, tmp_path)
    os.chmod(path, 0o600)
    path.write_text("short")
    with pytest.raises(TokenError, match="shorter than 16"):
        resolve_token(None, tmp_path)
