"""`otagw run` as a real process: it serves on the configured port, an image uploaded over HTTP is visible to
`otagw image list` (another process on the same data dir), SIGHUP reloads, SIGTERM ends it with exit code 0;
`otagw health` (the image's HEALTHCHECK) follows api.listen and fails while an enabled adapter is down."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

from gateway.formats import build_zigbee_image

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "subprocess-test-token-0123456789"


def otagw(*args: str, **kw: object) -> list[str]:
    return [sys.executable, "-m", "gateway", *args]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def request(
    url: str, *, data: bytes | None = None, method: str = "GET", auth: bool = True
) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=data, method=method)
    if auth:
        req.add_header("Authorization", f"Bearer {TOKEN}")
    if data is not None:
        req.add_header("Content-Type", "application/octet-stream")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_healthy(base: str, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, (
            f"otagw run exited early: {proc.stderr.read().decode() if proc.stderr else ''}"
        )
        try:
            status, body = request(base + "/healthz", auth=False)
            if status == 200:
                return json.loads(body)
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError("gateway did not become healthy")


def test_run_upload_list_sigterm(tmp_path: Path) -> None:
    port = free_port()
    cfg = tmp_path / "otagw.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "data_dir": str(tmp_path / "data"),
                "matter": {"enabled": False},
                "api": {"listen": f"127.0.0.1:{port}"},
            }
        )
    )
    env = {**os.environ, "OTAGW_API_TOKEN": TOKEN, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        otagw("--log-json", "-c", str(cfg), "run"),
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        health = wait_healthy(base, proc)
        assert health["status"] == "ok" and health["adapters"]["zigbee"]["state"] == "disabled"
        assert request(base + "/api/v1/images", auth=False)[0] == 401
        # the container HEALTHCHECK command probes the port of api.listen from the config
        probe = subprocess.run(otagw("-c", str(cfg), "health"), env=env, capture_output=True, timeout=60)
        assert probe.returncode == 0, probe.stderr.decode()
        assert json.loads(probe.stdout)["status"] == "ok"

        image = build_zigbee_image(
            b"\x42" * 4096, manufacturer_code=0x1135, image_type=7, file_version=0x0301
        )
        status, body = request(base + "/api/v1/images?file_name=lamp.zigbee", data=image, method="POST")
        assert status == 201, body
        image_id = json.loads(body)["image"]["image_id"]

        listed = subprocess.run(
            otagw("-c", str(cfg), "image", "list", "--json"),
            cwd=tmp_path,
            env=env,
            capture_output=True,
            timeout=60,
        )
        assert listed.returncode == 0, listed.stderr.decode()
        assert image_id in listed.stdout.decode()

        proc.send_signal(signal.SIGHUP)  # reload: must not stop the process
        time.sleep(0.5)
        assert proc.poll() is None
        assert request(base + "/healthz", auth=False)[0] == 200

        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err.decode()
    lines = [json.loads(line) for line in err.decode().splitlines() if line.startswith("{")]
    messages = [entry["msg"] for entry in lines]
    assert "SIGTERM received: shutting down" in messages and messages[-1] == "otagw stopped"
    assert "policy reloaded" in messages
    assert "Traceback" not in err.decode()


def test_run_reports_config_errors_in_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("api:\n  listen: nowhere\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        otagw("-c", str(cfg), "run"), cwd=tmp_path, env=env, capture_output=True, timeout=60
    )
    assert proc.returncode == 2
    err = proc.stderr.decode()
    assert err.startswith("error: ") and "api.listen" in err and "Traceback" not in err


def test_health_command_fails_while_an_enabled_adapter_is_down(tmp_path: Path) -> None:
    """Zigbee enabled with a radio that is not there: the gateway serves, /healthz is 503 naming the adapter,
    `otagw health` exits 1 and `otagw health --live` exits 0."""
    port = free_port()
    cfg = tmp_path / "otagw.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "data_dir": str(tmp_path / "data"),
                "matter": {"enabled": False},
                "zigbee": {"enabled": True, "radio": {"device": str(tmp_path / "no-such-ttyUSB9")}},
                "api": {"listen": f"127.0.0.1:{port}"},
            }
        )
    )
    env = {**os.environ, "OTAGW_API_TOKEN": TOKEN, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        otagw("--log-json", "-c", str(cfg), "run"),
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        body: dict = {}
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            try:
                status, raw = request(base + "/healthz", auth=False)
            except OSError:
                time.sleep(0.1)
                continue
            body = json.loads(raw)
            if body["adapters"]["zigbee"]["state"] == "failed":
                break
            time.sleep(0.1)
        assert status == 503 and body["status"] == "degraded"
        zigbee = body["adapters"]["zigbee"]
        assert zigbee["error"] and zigbee["attempts"] >= 1 and zigbee["next_retry_at"] > time.time() - 5
        ready = subprocess.run(otagw("-c", str(cfg), "health"), env=env, capture_output=True, timeout=60)
        assert ready.returncode == 1 and json.loads(ready.stdout)["adapters"]["zigbee"]["state"] == "failed"
        live = subprocess.run(
            otagw("-c", str(cfg), "health", "--live"), env=env, capture_output=True, timeout=60
        )
        assert live.returncode == 0 and json.loads(live.stdout)["status"] == "alive"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert err.decode().count("zigbee adapter could not start (attempt 1)") == 1
