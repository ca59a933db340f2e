"""Matter TLV certificates: byte-exact DER against the chip SDK's converter, chain validation, mutations."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID, ObjectIdentifier
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.matter.fabric.controller import ControllerRunner, runner_unavailable_reason
from adapters.matter.fabric.identity import make_csr
from adapters.matter.secure import certs, crypto
from adapters.matter.secure.certs import (
    CHIP_EPOCH_UNIX,
    CertificateChainError,
    CertificateError,
    CertificateFormatError,
    CertificateSignatureError,
    CertificateValidityError,
    DNAttr,
    KeyPurpose,
)
from adapters.matter.secure.devca import DevCA

NOW = 1_750_000_000.0  # a fixed "now" (2025-06-15) for validity checks
_SKIP = runner_unavailable_reason()
needs_sdk = pytest.mark.skipif(_SKIP is not None, reason=f"chip SDK oracle unavailable: {_SKIP}")


@pytest.fixture(scope="module")
def sdk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControllerRunner]:
    """One chip SDK worker (maximized cert chains: ICAC plus future extensions) for minting and as oracle."""
    if _SKIP:
        pytest.skip(_SKIP)
    with ControllerRunner(tmp_path_factory.mktemp("sdk")) as runner:
        runner.init_fabric(fabric_id=0x2906C908D115D362, maximize_cert_chains=True)
        yield runner


def _sdk_chain(runner: ControllerRunner, node_id: int) -> tuple[bytes, bytes | None, bytes]:
    chain = runner.issue_noc_chain(make_csr(ec.generate_private_key(ec.SECP256R1())), node_id)
    return chain.noc, chain.icac, chain.rcac


# ----------------------------------------------------------------------------------------------- SDK oracle


@needs_sdk
def test_sdk_issued_chain_converts_byte_exact_and_validates(sdk: ControllerRunner) -> None:
    noc, icac, rcac = _sdk_chain(sdk, 0x0102030405060708)
    assert icac is not None
    for cert in (noc, icac, rcac):
        mine = certs.to_x509_der(cert)
        assert mine == sdk.chip_to_x509(cert)
        parsed = x509.load_der_x509_certificate(mine)  # also well-formed for an independent X.509 parser
        assert parsed.tbs_certificate_bytes == certs.decode_certificate(cert).tbs_der
    assert certs.decode_certificate(noc).future_extensions  # maximized chains carry a future extension
    chain = certs.validate_chain(noc, icac, rcac, now=NOW)
    assert (chain.node_id, chain.fabric_id, chain.cats) == (0x0102030405060708, 0x2906C908D115D362, ())


@needs_sdk
def test_devca_certificates_match_sdk_conversion_both_ways(sdk: ControllerRunner) -> None:
    ca = DevCA(fabric_id=7, not_before=100, not_after=(2060 - 2000) * 365 * 86400)  # not-after beyond 2050
    creds = ca.credentials(0x1234, cats=(0x00010002, 0xABCD0001))
    for cert in (creds.noc, creds.icac, creds.rcac):
        assert cert is not None
        der = certs.to_x509_der(cert)
        assert der == sdk.chip_to_x509(cert)
        assert sdk.x509_to_chip(der) == cert  # the SDK re-encodes our TLV identically
    assert certs.validate_chain(creds.noc, creds.icac, creds.rcac, now=NOW).cats == (0x00010002, 0xABCD0001)


def _x509_with(subject: x509.Name, not_after: dt.datetime) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    pub = key.public_key()
    ski = x509.SubjectKeyIdentifier.from_public_key(pub)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(pub)
        .serial_number(0x0123456789)
        .not_valid_before(dt.datetime(2021, 1, 1, tzinfo=dt.UTC))
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier(ski.digest, None, None), critical=False)
        .sign(key, hashes.SHA256())
    )
    from cryptography.hazmat.primitives import serialization

    return cert.public_bytes(serialization.Encoding.DER)


@needs_sdk
@pytest.mark.parametrize(
    "attrs",
    [
        [x509.NameAttribute(ObjectIdentifier("1.3.6.1.4.1.37244.1.4"), "CACACACA00000001")],
        [
            x509.NameAttribute(NameOID.COMMON_NAME, "Ünïcode root"),
            x509.NameAttribute(NameOID.COUNTRY_NAME, "DE"),  # PrintableString
            x509.NameAttribute(NameOID.DOMAIN_COMPONENT, "example"),  # IA5String
            x509.NameAttribute(ObjectIdentifier("1.3.6.1.4.1.37244.1.4"), "0000000000000002"),
            x509.NameAttribute(ObjectIdentifier("1.3.6.1.4.1.37244.1.5"), "FAB000000000001D"),
        ],
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "otagw"),
            x509.NameAttribute(NameOID.COMMON_NAME, "Printable", _type=x509.name._ASN1Type.PrintableString),
            x509.NameAttribute(NameOID.SERIAL_NUMBER, "42"),
            x509.NameAttribute(ObjectIdentifier("1.3.6.1.4.1.37244.1.4"), "0000000000000003"),
        ],
    ],
)
@pytest.mark.parametrize(
    "not_after",
    [
        dt.datetime(2049, 12, 31, 23, 59, 59, tzinfo=dt.UTC),
        dt.datetime(2050, 1, 1, tzinfo=dt.UTC),
        dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=dt.UTC),
    ],
)
def test_x509_roundtrip_through_sdk_tlv(
    sdk: ControllerRunner, attrs: list[x509.NameAttribute], not_after: dt.datetime
) -> None:
    der = _x509_with(x509.Name(attrs), not_after)
    tlv_cert = sdk.x509_to_chip(der)
    assert certs.to_x509_der(tlv_cert) == der
    cert = certs.decode_certificate(tlv_cert)
    if not_after.year == 9999:
        assert cert.not_after == 0


# ----------------------------------------------------------------------------------------------- validation


@pytest.fixture(scope="module")
def ca() -> DevCA:
    return DevCA(fabric_id=0x11, not_before=600_000_000, not_after=900_000_000)


def test_valid_chain_with_and_without_icac(ca: DevCA) -> None:
    creds = ca.credentials(0x55, cats=(0x00020003,))
    chain = certs.validate_chain(creds.noc, creds.icac, creds.rcac, now=NOW)
    assert (chain.node_id, chain.fabric_id, chain.cats) == (0x55, 0x11, (0x00020003,))
    assert chain.root_public_key == crypto.public_key_bytes(ca.root_key)
    flat = DevCA(fabric_id=3, with_icac=False).credentials(9)
    assert certs.validate_chain(flat.noc, None, flat.rcac, now=NOW).node_id == 9


def test_flipped_signature_is_rejected(ca: DevCA) -> None:
    creds = ca.credentials(0x55)
    noc = bytearray(creds.noc)
    noc[-5] ^= 0x01  # inside the 64-byte signature, just before the end-of-container
    with pytest.raises(CertificateSignatureError, match="NOC"):
        certs.validate_chain(bytes(noc), creds.icac, creds.rcac, now=NOW)


def test_tampered_tbs_is_rejected(ca: DevCA) -> None:
    creds = ca.credentials(0x55)
    other = ca.credentials(0x56)
    # Splice the other NOC's public key into this one: decodes fine, signature no longer covers it.
    cert = certs.decode_certificate(creds.noc)
    tampered = creds.noc.replace(cert.public_key, certs.decode_certificate(other.noc).public_key)
    with pytest.raises(CertificateSignatureError):
        certs.validate_chain(tampered, creds.icac, creds.rcac, now=NOW)


def test_validity_window_uses_injected_time(ca: DevCA) -> None:
    creds = ca.credentials(0x55, not_before=700_000_000, not_after=800_000_000)
    certs.validate_chain(creds.noc, creds.icac, creds.rcac, now=CHIP_EPOCH_UNIX + 750_000_000)
    with pytest.raises(CertificateValidityError, match="expired"):
        certs.validate_chain(creds.noc, creds.icac, creds.rcac, now=CHIP_EPOCH_UNIX + 800_000_001)
    with pytest.raises(CertificateValidityError, match="not valid before"):
        certs.validate_chain(creds.noc, creds.icac, creds.rcac, now=CHIP_EPOCH_UNIX + 699_999_999)


def test_wrong_root_is_rejected(ca: DevCA) -> None:
    creds = ca.credentials(0x55)
    stranger = DevCA(fabric_id=0x11)  # same DNs (rcac/icac ids), different keys
    with pytest.raises(CertificateChainError, match="authority key id"):
        certs.validate_chain(creds.noc, creds.icac, stranger.rcac, now=NOW)


def test_root_must_be_self_signed(ca: DevCA) -> None:
    creds = ca.credentials(0x55)
    with pytest.raises(CertificateChainError, match="self-issued"):
        certs.validate_chain(creds.noc, None, creds.icac, now=NOW)  # the ICAC is no root


def test_noc_constraints() -> None:
    ca = DevCA(fabric_id=5)
    key = crypto.public_key_bytes(ec.generate_private_key(ec.SECP256R1()))
    no_client = ca.issue_noc(key, 1, ext_key_usage=(KeyPurpose.SERVER_AUTH,))
    with pytest.raises(CertificateChainError, match="clientAuth"):
        certs.validate_chain(no_client, ca.icac, ca.rcac, now=NOW)
    with pytest.raises(CertificateFormatError, match="at most 5"):  # node + fabric + 4 CATs: too many RDNs
        ca.issue_noc(key, 1, cats=(0x10001, 0x20001, 0x30001, 0x40001))
    same_cat_id = ca.issue_noc(key, 1, cats=(0x10001, 0x10002))
    with pytest.raises(CertificateChainError, match="repeat an identifier"):
        certs.validate_chain(same_cat_id, ca.icac, ca.rcac, now=NOW)
    cat_v0 = ca.issue_noc(key, 1, cats=(0x10000,))
    with pytest.raises(CertificateChainError, match="version 0"):
        certs.validate_chain(cat_v0, ca.icac, ca.rcac, now=NOW)
    group_node = ca.issue_noc(key, 0xFFFF_FFFF_FFFF_0001)
    with pytest.raises(CertificateChainError, match="operational node id"):
        certs.validate_chain(group_node, ca.icac, ca.rcac, now=NOW)
    ca_noc = certs.build_certificate(
        signer=ca.icac_key,
        public_key=key,
        issuer=ca.icac_dn,
        is_ca=True,
        subject=[(DNAttr.MATTER_NODE_ID, 1), (DNAttr.MATTER_FABRIC_ID, 5)],
    )
    with pytest.raises(CertificateChainError, match="cA false"):
        certs.validate_chain(ca_noc, ca.icac, ca.rcac, now=NOW)


def test_ca_constraints() -> None:
    ca = DevCA(fabric_id=5)
    icac_key = ec.generate_private_key(ec.SECP256R1())
    no_cert_sign = certs.build_certificate(
        signer=ca.root_key,
        public_key=crypto.public_key_bytes(icac_key),
        subject=ca.icac_dn,
        issuer=ca.root_dn,
        is_ca=True,
        key_usage=certs.KeyUsage.CRL_SIGN,
    )
    noc = certs.build_certificate(
        signer=icac_key,
        public_key=crypto.public_key_bytes(ec.generate_private_key(ec.SECP256R1())),
        issuer=ca.icac_dn,
        subject=[(DNAttr.MATTER_NODE_ID, 1), (DNAttr.MATTER_FABRIC_ID, 5)],
        ext_key_usage=(1, 2),
    )
    with pytest.raises(CertificateChainError, match="keyCertSign"):
        certs.validate_chain(noc, no_cert_sign, ca.rcac, now=NOW)
    # Root with pathLen 0 may not have an intermediate below it.
    root_key = ec.generate_private_key(ec.SECP256R1())
    root_dn = [(DNAttr.MATTER_RCAC_ID, 9)]
    strict_root = certs.build_certificate(
        signer=root_key,
        public_key=crypto.public_key_bytes(root_key),
        subject=root_dn,
        issuer=root_dn,
        is_ca=True,
        path_len=0,
    )
    icac = certs.build_certificate(
        signer=root_key,
        public_key=crypto.public_key_bytes(icac_key),
        subject=ca.icac_dn,
        issuer=root_dn,
        is_ca=True,
    )
    with pytest.raises(CertificateChainError, match="path length"):
        certs.validate_chain(noc, icac, strict_root, now=NOW)


def test_fabric_id_must_be_consistent() -> None:
    root_key, icac_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    root_dn = [(DNAttr.MATTER_RCAC_ID, 1), (DNAttr.MATTER_FABRIC_ID, 0xAA)]
    rcac = certs.build_certificate(
        signer=root_key,
        public_key=crypto.public_key_bytes(root_key),
        subject=root_dn,
        issuer=root_dn,
        is_ca=True,
    )
    noc = certs.build_certificate(
        signer=root_key,
        public_key=crypto.public_key_bytes(icac_key),
        issuer=root_dn,
        subject=[(DNAttr.MATTER_NODE_ID, 1), (DNAttr.MATTER_FABRIC_ID, 0xBB)],
        ext_key_usage=(1, 2),
    )
    with pytest.raises(CertificateChainError, match="fabric id"):
        certs.validate_chain(noc, None, rcac, now=NOW)


# ----------------------------------------------------------------------------------------------- malformed input


def test_malformed_tlv_is_a_format_error(ca: DevCA) -> None:
    good = ca.credentials(0x55).noc
    with pytest.raises(CertificateFormatError, match="malformed TLV"):
        certs.decode_certificate(good[:-3])
    with pytest.raises(CertificateFormatError, match="trailing"):
        certs.decode_certificate(good + b"\x00")
    with pytest.raises(CertificateFormatError, match="anonymous TLV structure"):
        certs.decode_certificate(b"\x04\x01")
    with pytest.raises(CertificateFormatError, match=r"tags 1\.\.11"):
        certs.decode_certificate(b"\x15\x30\x01\x01\x01\x18")
    with pytest.raises(CertificateFormatError, match="NOC"):
        certs.validate_chain(good[:40], ca.icac, ca.rcac, now=NOW)


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_certificates_raise_only_certificate_errors(ca: DevCA, data: st.DataObject) -> None:
    creds = ca.credentials(0x55) if not hasattr(ca, "_fuzz") else ca._fuzz  # type: ignore[attr-defined]
    ca._fuzz = creds  # type: ignore[attr-defined]
    noc = bytearray(creds.noc)
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(noc) - 1))
        op = data.draw(st.sampled_from(["flip", "delete", "insert"]))
        if op == "flip":
            noc[pos] ^= data.draw(st.integers(1, 255))
        elif op == "delete":
            del noc[pos]
        else:
            noc.insert(pos, data.draw(st.integers(0, 255)))
    with contextlib.suppress(CertificateError):
        certs.validate_chain(bytes(noc), creds.icac, creds.rcac, now=NOW)


@given(st.binary(max_size=300))
def test_random_bytes_raise_only_format_errors(blob: bytes) -> None:
    with contextlib.suppress(CertificateFormatError):
        certs.decode_certificate(blob)
