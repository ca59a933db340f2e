"""mqtts:// against mosquitto with TLS and a required client certificate: the CA, client certificate and key
from the mqtt section are used, and a wrong CA never gets a connection."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.clock import ManualClock
from gateway.config import parse_config
from gateway.core.service import UpdateCore
from gateway.integrations.mqtt.client import MqttIntegration, MqttSetupError, tls_context
from tests.core.conftest import FakeStore
from tests.mqtt.conftest import Broker


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[str, ec.EllipticCurvePrivateKey] | None,
    ca: bool,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    issuer_name, issuer_key = issuer if issuer else (subject, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _write(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey | None = None) -> None:
    path.with_suffix(".crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        path.with_suffix(".key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    for p in (path.with_suffix(".crt"), path.with_suffix(".key")):
        if p.exists():
            p.chmod(0o644)  # mosquitto reads them as its own unprivileged user


@pytest.fixture
def pki() -> Iterator[Path]:
    # outside pytest's 0700 base temp dir: mosquitto, dropped to its own user, must read the server's files
    with tempfile.TemporaryDirectory(prefix="otagw-mqtt-pki-") as tmp:
        d = Path(tmp)
        d.chmod(0o755)
        yield _make_pki(d)


def _make_pki(d: Path) -> Path:
    ca_key, other_key, srv_key, cli_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(4))
    ca = _cert("otagw test CA", ca_key, None, True)
    _write(d / "ca", ca, ca_key)
    _write(d / "other-ca", _cert("another CA", other_key, None, True))
    _write(d / "server", _cert("localhost", srv_key, ("otagw test CA", ca_key), False), srv_key)
    _write(d / "client", _cert("otagw", cli_key, ("otagw test CA", ca_key), False), cli_key)
    (d / "client.key").chmod(0o600)
    return d


async def _connects(tmp_path: Path, **mqtt: object) -> bool:
    cfg = parse_config({"data_dir": str(tmp_path / "d"), "mqtt": {"enabled": True, **mqtt}})
    clock = ManualClock()
    core = UpdateCore(cfg, FakeStore(), clock, auto_sweep=False)
    await core.start()
    mq = MqttIntegration(cfg.mqtt, core, core.store, clock, policy=lambda: cfg.policy)
    await mq.start()
    try:

        async def outcome() -> bool:
            while True:
                await mq.attempted.wait()
                mq.attempted.clear()
                if mq.connected.is_set():
                    return True
                if mq.failures >= 1:
                    return False
                await clock.advance(cfg.mqtt.reconnect_max_s)  # wake the back-off sleep

        return await asyncio.wait_for(outcome(), 30)
    finally:
        await mq.stop()
        await core.stop()


async def test_mqtts_with_a_client_certificate(tmp_path: Path, pki: Path) -> None:
    broker = Broker(tmp_path)
    broker.conf.write_text(
        f"listener {broker.port} 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest stderr\n"
        f"cafile {pki / 'ca.crt'}\ncertfile {pki / 'server.crt'}\nkeyfile {pki / 'server.key'}\n"
        "require_certificate true\n"
    )
    broker.start()
    try:
        url = f"mqtts://localhost:{broker.port}"
        good = {"broker": url, "tls_ca_file": str(pki / "ca.crt"), "connect_timeout_s": 2.0}
        client = {"tls_cert_file": str(pki / "client.crt"), "tls_key_file": str(pki / "client.key")}
        assert await _connects(tmp_path, **good, **client)
        # no client certificate: the broker refuses; a CA that did not sign the server: we refuse
        assert not await _connects(tmp_path, **good)
        assert not await _connects(
            tmp_path, broker=url, tls_ca_file=str(pki / "other-ca.crt"), connect_timeout_s=2.0, **client
        )
    finally:
        broker.stop()


def test_unreadable_tls_files_are_named(tmp_path: Path) -> None:
    cfg = parse_config({"mqtt": {"broker": "mqtts://h", "tls_ca_file": str(tmp_path / "missing.pem")}}).mqtt
    with pytest.raises(MqttSetupError, match="mqtt TLS files"):
        tls_context(cfg)
