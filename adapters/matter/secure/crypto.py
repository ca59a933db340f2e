"""Matter cryptographic primitives (Core spec §3, §4.3.2.2, §4.14): P-256, HKDF, AES-CCM and the fabric derivations.

Everything here is a pure function over bytes built on `cryptography`. Public keys travel as 65-byte uncompressed
SEC1 points (0x04 || X || Y), ECDSA signatures as raw 64-byte r || s (the form Matter puts on the wire), and every
failure caused by input bytes raises `CryptoError`.
"""

from __future__ import annotations

import hashlib
import hmac as _hmac
import struct
from collections.abc import Callable

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature
from cryptography.hazmat.primitives.ciphers.aead import AESCCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = [
    "AEAD_MIC_LENGTH",
    "P256_ORDER",
    "PUBLIC_KEY_LENGTH",
    "SIGNATURE_LENGTH",
    "CryptoError",
    "aes_ccm_decrypt",
    "aes_ccm_encrypt",
    "compressed_fabric_id",
    "compressed_fabric_id_int",
    "destination_id",
    "ecdh_shared_secret",
    "ecdsa_der_to_raw",
    "ecdsa_raw_to_der",
    "ecdsa_sign_raw",
    "ecdsa_verify_raw",
    "hkdf_sha256",
    "hmac_sha256",
    "load_public_key",
    "operational_group_key",
    "private_key_from_random",
    "public_key_bytes",
    "sha256",
]

PUBLIC_KEY_LENGTH = 65  # uncompressed P-256 point
SIGNATURE_LENGTH = 64  # raw r || s
AEAD_MIC_LENGTH = 16  # Matter always uses a 128-bit CCM tag
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551

_CURVE = ec.SECP256R1()


class CryptoError(ValueError):
    """Input bytes that are not a valid key, signature or ciphertext (names the item concerned)."""


# ----------------------------------------------------------------------------------------------- hashes / KDF


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def hmac_sha256(key: bytes, data: bytes) -> bytes:
    return _hmac.new(key, data, hashlib.sha256).digest()


def hkdf_sha256(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    """RFC 5869 HKDF-SHA256 (an empty salt means the RFC's all-zero salt, as in the SDK)."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt or None, info=info).derive(ikm)


# ----------------------------------------------------------------------------------------------- fabric derivations


def compressed_fabric_id(root_public_key: bytes, fabric_id: int) -> bytes:
    """8-byte compressed fabric identifier (§4.3.2.2): HKDF(root key X||Y, salt = fabric id BE, "CompressedFabric")."""
    _check_point_bytes(root_public_key, "root public key")
    if not 0 <= fabric_id <= 0xFFFF_FFFF_FFFF_FFFF:
        raise CryptoError(f"fabric id out of 64-bit range: {fabric_id}")
    return hkdf_sha256(root_public_key[1:], struct.pack(">Q", fabric_id), b"CompressedFabric", 8)


def compressed_fabric_id_int(root_public_key: bytes, fabric_id: int) -> int:
    """The compressed fabric id as the integer the SDK and DNS-SD names use (big-endian reading)."""
    return int.from_bytes(compressed_fabric_id(root_public_key, fabric_id), "big")


def operational_group_key(epoch_key: bytes, compressed_fabric_id: bytes) -> bytes:
    """Operational group key (§4.17.2): HKDF(epoch key, salt = compressed fabric id, "GroupKey v1.0", 16).

    Applied to the fabric's IPK epoch key this yields the operational IPK that CASE uses.
    """
    if len(epoch_key) != 16:
        raise CryptoError(f"epoch key must be 16 bytes, got {len(epoch_key)}")
    if len(compressed_fabric_id) != 8:
        raise CryptoError(f"compressed fabric id must be 8 bytes, got {len(compressed_fabric_id)}")
    return hkdf_sha256(epoch_key, compressed_fabric_id, b"GroupKey v1.0", 16)


def destination_id(
    ipk: bytes, initiator_random: bytes, root_public_key: bytes, fabric_id: int, node_id: int
) -> bytes:
    """CASE destination identifier (§4.14.2.4): HMAC-SHA256(IPK, random || root key || fabric id LE || node id LE)."""
    _check_point_bytes(root_public_key, "root public key")
    msg = initiator_random + root_public_key + struct.pack("<QQ", fabric_id, node_id)
    return hmac_sha256(ipk, msg)


# ----------------------------------------------------------------------------------------------- P-256


def _check_point_bytes(data: bytes, what: str) -> None:
    if len(data) != PUBLIC_KEY_LENGTH or data[0] != 0x04:
        raise CryptoError(
            f"{what} must be a 65-byte uncompressed P-256 point (0x04 prefix), got {len(data)} bytes"
        )


def load_public_key(data: bytes, what: str = "public key") -> ec.EllipticCurvePublicKey:
    """Parse and validate (on-curve) an uncompressed P-256 point."""
    _check_point_bytes(data, what)
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(_CURVE, bytes(data))
    except ValueError:
        raise CryptoError(f"{what} is not a point on P-256") from None


def public_key_bytes(key: ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) -> bytes:
    """65-byte uncompressed encoding of a P-256 public key."""
    pub = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key
    nums = pub.public_numbers()
    return b"\x04" + nums.x.to_bytes(32, "big") + nums.y.to_bytes(32, "big")


def private_key_from_random(random_bytes: Callable[[int], bytes]) -> ec.EllipticCurvePrivateKey:
    """A P-256 private key whose scalar comes from an injected randomness source (deterministic in tests)."""
    seed = int.from_bytes(random_bytes(40), "big")  # 320 bits reduced mod n: negligible bias
    return ec.derive_private_key(seed % (P256_ORDER - 1) + 1, _CURVE)


def ecdh_shared_secret(private_key: ec.EllipticCurvePrivateKey, peer_public_key: bytes) -> bytes:
    """32-byte ECDH shared secret (X coordinate) with a peer's uncompressed public key."""
    return private_key.exchange(ec.ECDH(), load_public_key(peer_public_key, "peer ephemeral public key"))


def ecdsa_raw_to_der(signature: bytes) -> bytes:
    """Raw r || s (64 bytes) to the DER Ecdsa-Sig-Value used by X.509."""
    if len(signature) != SIGNATURE_LENGTH:
        raise CryptoError(f"raw ECDSA signature must be 64 bytes, got {len(signature)}")
    return encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big"))


def ecdsa_der_to_raw(der: bytes) -> bytes:
    """DER Ecdsa-Sig-Value to raw r || s (64 bytes)."""
    try:
        r, s = decode_dss_signature(der)
    except ValueError:
        raise CryptoError("malformed DER ECDSA signature") from None
    if not (0 < r < P256_ORDER and 0 < s < P256_ORDER):
        raise CryptoError("ECDSA signature component out of range")
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def ecdsa_sign_raw(private_key: ec.EllipticCurvePrivateKey, message: bytes) -> bytes:
    """ECDSA-SHA256 over message, returned as raw r || s."""
    return ecdsa_der_to_raw(private_key.sign(message, ec.ECDSA(hashes.SHA256())))


def ecdsa_verify_raw(public_key: bytes | ec.EllipticCurvePublicKey, message: bytes, signature: bytes) -> bool:
    """True when `signature` (raw r || s) is a valid ECDSA-SHA256 signature of `message`."""
    if len(signature) != SIGNATURE_LENGTH:
        return False
    r = int.from_bytes(signature[:32], "big")
    s = int.from_bytes(signature[32:], "big")
    if not (0 < r < P256_ORDER and 0 < s < P256_ORDER):
        return False
    key = public_key if isinstance(public_key, ec.EllipticCurvePublicKey) else load_public_key(public_key)
    try:
        key.verify(encode_dss_signature(r, s), message, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


# ----------------------------------------------------------------------------------------------- AES-CCM


def aes_ccm_encrypt(key: bytes, nonce: bytes, plaintext: bytes, aad: bytes = b"") -> bytes:
    """AES-128-CCM with a 16-byte tag appended (13-byte nonce in Matter)."""
    return AESCCM(key, tag_length=AEAD_MIC_LENGTH).encrypt(nonce, plaintext, aad or None)


def aes_ccm_decrypt(key: bytes, nonce: bytes, ciphertext: bytes, aad: bytes = b"") -> bytes:
    """Inverse of aes_ccm_encrypt; CryptoError when the tag does not verify or the input is too short."""
    if len(ciphertext) < AEAD_MIC_LENGTH:
        raise CryptoError(f"ciphertext shorter than the {AEAD_MIC_LENGTH}-byte MIC")
    try:
        return AESCCM(key, tag_length=AEAD_MIC_LENGTH).decrypt(nonce, ciphertext, aad or None)
    except InvalidTag:
        raise CryptoError("AES-CCM authentication failed") from None
