"""`otagw matter commission --ip ADDR [--port N]`: the address forms, and precise errors before any controller runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from adapters.matter.fabric.address import parse_device_address

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("ip", "port", "want"),
    [
        ("fd00::2", None, ("fd00::2", 5540)),
        ("fd00::2", 5541, ("fd00::2", 5541)),
        ("[fd00::2]:5542", None, ("fd00::2", 5542)),
        ("[fd00::2]:5542", 5542, ("fd00::2", 5542)),
        ("[fd00::2]", 5543, ("fd00::2", 5543)),
        ("fe80::1%veth0", None, ("fe80::1%veth0", 5540)),
        ("[fe80::1%veth0]:6000", None, ("fe80::1%veth0", 6000)),
        ("192.168.1.5", None, ("192.168.1.5", 5540)),
        ("192.168.1.5:5541", None, ("192.168.1.5", 5541)),
        (" 10.0.0.1 ", 1, ("10.0.0.1", 1)),
    ],
)
def test_address_forms(ip: str, port: int | None, want: tuple[str, int]) -> None:
    assert parse_device_address(ip, port) == want


@pytest.mark.parametrize(
    ("ip", "port", "msg"),
    [
        ("[fd00::2]:5541", 5542, "says port 5541 but --port says 5542"),
        ("[fd00::2", None, "missing ']'"),
        ("[fd00::2]5541", None, "expected ':PORT'"),
        ("[fd00::2]:http", None, "port 'http' is not a number"),
        ("fd00::2", 0, "--port: port 0 is outside 1..65535"),
        ("1.2.3.4:70000", None, "port 70000 is outside"),
        ("device.local", None, "'device.local' is not an IPv4 or IPv6 address"),
        ("[1.2.3.4]:5540", None, None),  # brackets around IPv4 are tolerated
    ],
)
def test_address_errors(ip: str, port: int | None, msg: str | None) -> None:
    if msg is None:
        assert parse_device_address(ip, port) == ("1.2.3.4", 5540)
        return
    with pytest.raises(ValueError, match=msg.replace("[", r"\[").replace("]", r"\]")):
        parse_device_address(ip, port)


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cfg = tmp_path / "otagw.yaml"
    cfg.write_text(f"data_dir: {tmp_path / 'data'}\n")
    return subprocess.run(
        [sys.executable, "-m", "gateway", "-c", str(cfg), "matter", "commission", "34970112332", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_cli_rejects_bad_addresses_precisely(tmp_path: Path) -> None:
    r = _cli(tmp_path, "--ip", "[fd00::2]:5541", "--port", "5542")
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "says port 5541 but --port says 5542" in r.stderr
    r = _cli(tmp_path, "--port", "5541")
    assert r.returncode != 0 and "--port needs --ip" in r.stderr
    # nothing was created: the error came before the fabric was touched
    assert not (tmp_path / "data" / "matter").exists()
