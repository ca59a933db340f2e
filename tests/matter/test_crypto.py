"""Matter crypto primitives against the spec's and the SDK's published vectors, plus hostile-input behaviour."""

from __future__ import annotations

import contextlib
import random

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given
from hypothesis import strategies as st

from adapters.matter.secure import crypto

# Spec §4.3.2.2 (Operational Discovery) example, also in the SDK's TestCompressedFabricIdentifier.
ROOT_PUB = bytes.fromhex(
    "044a9f42b1ca4840d37292bbc7f6a7e11e22200c976fc900dbc98a7a383a641cb8"
    "254a2e56d4e295a847943b4e3897c4a773e930277b4d9fbede8a052686bfacfa"
)
FABRIC_ID = 0x2906C908D115D362
CFID = bytes.fromhex("87e1b004e235a130")


def test_compressed_fabric_id_spec_vector() -> None:
    assert crypto.compressed_fabric_id(ROOT_PUB, FABRIC_ID) == CFID
    assert crypto.compressed_fabric_id_int(ROOT_PUB, FABRIC_ID) == 0x87E1B004E235A130


@pytest.mark.parametrize(
    ("epoch", "expected"),
    [
        # SDK TestGroupOperationalCredentials kEpochKeys0 / kGroupKeys0 (salt = the spec's compressed fabric id)
        ("00000000000000000000000000000000", "c5f2690187115150c356ad93b385bb0f"),
        ("101112131415161718191a1b1c1d1e1f", "aed95695f375d2ce78556a41730c3f43"),
        ("202122232425262728292a2b2c2d2e2f", "35ca346e5e24bbbe889cf4d35c5e820a"),
        # Spec IPK example (SDK TestGroupDataProvider kIpkEpochKeyFromSpec / kExpectedIpkFromSpec)
        ("235bf7e62823d358dca4ba50b1535f4b", "a6f5306baf6d050af23ba4bd6b9dd960"),
    ],
)
def test_operational_group_key_vectors(epoch: str, expected: str) -> None:
    assert crypto.operational_group_key(bytes.fromhex(epoch), CFID).hex() == expected


def test_destination_id_spec_vector() -> None:
    # Spec §4.14.2 example, also the SDK's TestCASESession DestinationIdTest.
    ipk = bytes.fromhex("9bc61cd9c62a2df6d64dfcaa9dc472d4")
    rnd = bytes.fromhex("7e171231568dfa17206b3accf8faec2f4d21b580113196f47c7c4deb810a73dc")
    got = crypto.destination_id(ipk, rnd, ROOT_PUB, FABRIC_ID, 0xCD5544AA7B13EF14)
    assert got.hex() == "dc35dd5fc9134cc5544538c9c3fc4297c1ec3370c839136a80e10796451d4c53"
    # every input matters
    assert crypto.destination_id(ipk, rnd, ROOT_PUB, FABRIC_ID, 0xCD5544AA7B13EF15) != got
    assert crypto.destination_id(ipk, rnd, ROOT_PUB, FABRIC_ID + 1, 0xCD5544AA7B13EF14) != got


def test_hkdf_rfc5869_case1() -> None:
    ikm = bytes.fromhex("0b" * 22)
    salt = bytes.fromhex("000102030405060708090a0b0c")
    info = bytes.fromhex("f0f1f2f3f4f5f6f7f8f9")
    okm = crypto.hkdf_sha256(ikm, salt, info, 42)
    assert okm.hex() == (
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
    )


def test_ecdsa_raw_der_roundtrip_and_verify() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    sig = crypto.ecdsa_sign_raw(key, b"hello")
    assert len(sig) == 64
    assert crypto.ecdsa_der_to_raw(crypto.ecdsa_raw_to_der(sig)) == sig
    pub = crypto.public_key_bytes(key)
    assert crypto.ecdsa_verify_raw(pub, b"hello", sig)
    assert not crypto.ecdsa_verify_raw(pub, b"hellp", sig)
    bad = bytearray(sig)
    bad[10] ^= 1
    assert not crypto.ecdsa_verify_raw(pub, b"hello", bytes(bad))
    assert not crypto.ecdsa_verify_raw(pub, b"hello", bytes(64))  # r = s = 0
    assert not crypto.ecdsa_verify_raw(pub, b"hello", sig[:63])


def test_ecdh_agrees_and_rejects_off_curve_points() -> None:
    a, b = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    assert crypto.ecdh_shared_secret(a, crypto.public_key_bytes(b)) == crypto.ecdh_shared_secret(
        b, crypto.public_key_bytes(a)
    )
    off_curve = b"\x04" + bytes(31) + b"\x01" + bytes(31) + b"\x01"
    with pytest.raises(crypto.CryptoError, match="not a point"):
        crypto.ecdh_shared_secret(a, off_curve)
    with pytest.raises(crypto.CryptoError, match="65-byte"):
        crypto.load_public_key(b"\x02" + bytes(32))


def test_private_key_from_injected_randomness_is_deterministic() -> None:
    r1, r2 = random.Random(7), random.Random(7)
    k1 = crypto.private_key_from_random(r1.randbytes)
    k2 = crypto.private_key_from_random(r2.randbytes)
    assert crypto.public_key_bytes(k1) == crypto.public_key_bytes(k2)


def test_aes_ccm_roundtrip_and_tamper() -> None:
    key, nonce = bytes(range(16)), b"NCASE_Sigma2N"
    ct = crypto.aes_ccm_encrypt(key, nonce, b"payload")
    assert len(ct) == len(b"payload") + 16
    assert crypto.aes_ccm_decrypt(key, nonce, ct) == b"payload"
    with pytest.raises(crypto.CryptoError, match="authentication failed"):
        crypto.aes_ccm_decrypt(key, nonce, ct[:-1] + bytes([ct[-1] ^ 1]))
    with pytest.raises(crypto.CryptoError, match="shorter"):
        crypto.aes_ccm_decrypt(key, nonce, b"short")


@given(st.binary(max_size=80))
def test_der_signature_decoder_raises_only_crypto_error(data: bytes) -> None:
    try:
        raw = crypto.ecdsa_der_to_raw(data)
    except crypto.CryptoError:
        return
    assert len(raw) == 64


@given(st.binary(min_size=65, max_size=65))
def test_public_key_loader_raises_only_crypto_error(data: bytes) -> None:
    with contextlib.suppress(crypto.CryptoError):
        crypto.load_public_key(data)
