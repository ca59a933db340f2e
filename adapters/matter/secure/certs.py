"""Matter operational certificates (Core spec §6.5): TLV decoding, byte-exact X.509 DER, and NOC chain validation.

A Matter certificate is a TLV structure whose signature is computed over the X.509 DER encoding of its
TBSCertificate; verifying one therefore means rebuilding that DER exactly as the issuer did (the SDK's
CHIPCertToX509 rules: one attribute per RDN, Matter ids as 16/8 uppercase hex UTF8Strings, UTCTime before 2050,
epoch 0 meaning 99991231235959Z, extensions in TLV order with basicConstraints/keyUsage/extKeyUsage critical).

Public API: `decode_certificate(tlv) -> MatterCertificate` (with `.tbs_der`, `.der`), `to_x509_der(tlv)`,
`validate_chain(noc, icac, rcac, now=...) -> ValidatedChain`, `build_certificate(...)` (issue a signed TLV
certificate; tests and tooling) and the `CertificateError` family. Decoders raise only `CertificateError`s.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from adapters.matter.secure import crypto
from gateway.formats import tlv

__all__ = [
    "CHIP_EPOCH_UNIX",
    "MAX_CERT_TLV_LENGTH",
    "CertificateChainError",
    "CertificateError",
    "CertificateFormatError",
    "CertificateSignatureError",
    "CertificateValidityError",
    "DNAttr",
    "KeyPurpose",
    "KeyUsage",
    "MatterCertificate",
    "ValidatedChain",
    "build_certificate",
    "decode_certificate",
    "key_identifier",
    "to_x509_der",
    "validate_chain",
]

CHIP_EPOCH_UNIX = 946_684_800  # 2000-01-01T00:00:00Z
MAX_CERT_TLV_LENGTH = 400  # kMaxCHIPCertLength: the SDK refuses anything longer in CASE
_MAX_RDN = 5  # CHIP_CONFIG_CERT_MAX_RDN_ATTRIBUTES


# ----------------------------------------------------------------------------------------------- errors


class CertificateError(ValueError):
    """Base of every certificate problem; `which` names the certificate (e.g. "NOC") when known."""

    def __init__(self, message: str, which: str = "") -> None:
        super().__init__(f"{which}: {message}" if which else message)
        self.which = which


class CertificateFormatError(CertificateError):
    """Malformed or unsupported TLV certificate encoding."""


class CertificateSignatureError(CertificateError):
    """A certificate's signature does not verify with its issuer's key."""


class CertificateValidityError(CertificateError):
    """The certificate is expired or not yet valid at the validation time."""


class CertificateChainError(CertificateError):
    """Chain structure problem: wrong issuer/root, CA flags, key usage, path length, identity attributes."""


# ----------------------------------------------------------------------------------------------- constants


class DNAttr(IntEnum):
    """TLV tag numbers of DN attributes (add 0x80 for the PrintableString form of the X.520 ones)."""

    COMMON_NAME = 1
    SURNAME = 2
    SERIAL_NUMBER = 3
    COUNTRY_NAME = 4
    LOCALITY_NAME = 5
    STATE_OR_PROVINCE_NAME = 6
    ORG_NAME = 7
    ORG_UNIT_NAME = 8
    TITLE = 9
    NAME = 10
    GIVEN_NAME = 11
    INITIALS = 12
    GEN_QUALIFIER = 13
    DN_QUALIFIER = 14
    PSEUDONYM = 15
    DOMAIN_COMPONENT = 16
    MATTER_NODE_ID = 17
    MATTER_FIRMWARE_SIGNING_ID = 18
    MATTER_ICAC_ID = 19
    MATTER_RCAC_ID = 20
    MATTER_FABRIC_ID = 21
    MATTER_NOC_CAT = 22


_ATTR_OID = {
    1: "2.5.4.3",
    2: "2.5.4.4",
    3: "2.5.4.5",
    4: "2.5.4.6",
    5: "2.5.4.7",
    6: "2.5.4.8",
    7: "2.5.4.10",
    8: "2.5.4.11",
    9: "2.5.4.12",
    10: "2.5.4.41",
    11: "2.5.4.42",
    12: "2.5.4.43",
    13: "2.5.4.44",
    14: "2.5.4.46",
    15: "2.5.4.65",
    16: "0.9.2342.19200300.100.1.25",
    17: "1.3.6.1.4.1.37244.1.1",
    18: "1.3.6.1.4.1.37244.1.2",
    19: "1.3.6.1.4.1.37244.1.3",
    20: "1.3.6.1.4.1.37244.1.4",
    21: "1.3.6.1.4.1.37244.1.5",
    22: "1.3.6.1.4.1.37244.1.6",
}
_MATTER_64 = {17, 18, 19, 20, 21}
_MATTER_32 = {22}
_PRINTABLE_FLAG = 0x80


class KeyUsage(IntEnum):
    """Key usage bits as carried in the TLV (same bit order as the X.509 BIT STRING)."""

    DIGITAL_SIGNATURE = 0x0001
    NON_REPUDIATION = 0x0002
    KEY_ENCIPHERMENT = 0x0004
    DATA_ENCIPHERMENT = 0x0008
    KEY_AGREEMENT = 0x0010
    KEY_CERT_SIGN = 0x0020
    CRL_SIGN = 0x0040
    ENCIPHER_ONLY = 0x0080


class KeyPurpose(IntEnum):
    """Extended key usage ids as carried in the TLV."""

    SERVER_AUTH = 1
    CLIENT_AUTH = 2
    CODE_SIGNING = 3
    EMAIL_PROTECTION = 4
    TIME_STAMPING = 5
    OCSP_SIGNING = 6


_PURPOSE_OID = {
    1: "1.3.6.1.5.5.7.3.1",
    2: "1.3.6.1.5.5.7.3.2",
    3: "1.3.6.1.5.5.7.3.3",
    4: "1.3.6.1.5.5.7.3.4",
    5: "1.3.6.1.5.5.7.3.8",
    6: "1.3.6.1.5.5.7.3.9",
}

_OID_ECDSA_SHA256 = "1.2.840.10045.4.3.2"
_OID_EC_PUBLIC_KEY = "1.2.840.10045.2.1"
_OID_PRIME256V1 = "1.2.840.10045.3.1.7"
_EXT_OID = {1: "2.5.29.19", 2: "2.5.29.15", 3: "2.5.29.37", 4: "2.5.29.14", 5: "2.5.29.35"}
_EXT_BASIC, _EXT_KEY_USAGE, _EXT_EKU, _EXT_SKI, _EXT_AKI, _EXT_FUTURE = 1, 2, 3, 4, 5, 6
_KNOWN_EXT_OIDS = set(_EXT_OID.values())

# Top-level certificate structure tags, in the order they must appear.
_TAG_SERIAL, _TAG_SIG_ALGO, _TAG_ISSUER, _TAG_NOT_BEFORE, _TAG_NOT_AFTER, _TAG_SUBJECT = 1, 2, 3, 4, 5, 6
_TAG_PK_ALGO, _TAG_CURVE, _TAG_PUBKEY, _TAG_EXTENSIONS, _TAG_SIGNATURE = 7, 8, 9, 10, 11
_CERT_TAGS = list(range(1, 12))


# ----------------------------------------------------------------------------------------------- minimal DER writer


def _der_len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def _der(tag: int, content: bytes) -> bytes:
    return bytes([tag]) + _der_len(len(content)) + content


def _der_seq(*parts: bytes) -> bytes:
    return _der(0x30, b"".join(parts))


def _der_oid(dotted: str) -> bytes:
    arcs = [int(a) for a in dotted.split(".")]
    body = bytearray([40 * arcs[0] + arcs[1]])
    for arc in arcs[2:]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        body += bytes(reversed(chunk))
    return _der(0x06, bytes(body))


def _der_uint(value: int) -> bytes:
    raw = value.to_bytes(max(1, (value.bit_length() + 8) // 8), "big")  # leading 0 keeps it positive
    return _der(0x02, raw)


def _der_bool_true() -> bytes:
    return b"\x01\x01\xff"


def _der_named_bits(value: int) -> bytes:
    """BIT STRING of named bits, bit 0 = first (most significant) bit, trailing zero bits dropped (DER)."""
    if value == 0:
        return b"\x03\x01\x00"
    nbytes = (value.bit_length() + 7) // 8
    body = bytes(int(f"{(value >> (8 * i)) & 0xFF:08b}"[::-1], 2) for i in range(nbytes))
    unused = 7 - ((value.bit_length() - 1) % 8)
    return _der(0x03, bytes([unused]) + body)


def _der_time(chip_epoch: int) -> bytes:
    if chip_epoch == 0:
        return _der(0x18, b"99991231235959Z")
    t = _dt.datetime(2000, 1, 1, tzinfo=_dt.UTC) + _dt.timedelta(seconds=chip_epoch)
    if t.year >= 2050:
        return _der(0x18, t.strftime("%Y%m%d%H%M%SZ").encode())
    return _der(0x17, t.strftime("%y%m%d%H%M%SZ").encode())


# ----------------------------------------------------------------------------------------------- model


@dataclass(frozen=True)
class BasicConstraints:
    is_ca: bool
    path_len: int | None = None


@dataclass(frozen=True)
class MatterCertificate:
    """A decoded Matter TLV certificate; `tbs_der`/`der` are its exact X.509 DER forms."""

    tlv: bytes
    serial: bytes
    issuer: tuple[tuple[int, int | str], ...]
    not_before: int  # Matter epoch seconds
    not_after: int  # Matter epoch seconds, 0 = no well-defined expiration
    subject: tuple[tuple[int, int | str], ...]
    public_key: bytes
    basic_constraints: BasicConstraints | None
    key_usage: int | None
    ext_key_usage: tuple[int, ...] | None
    subject_key_id: bytes | None
    authority_key_id: bytes | None
    future_extensions: tuple[bytes, ...]
    signature: bytes
    tbs_der: bytes = field(repr=False)

    @property
    def der(self) -> bytes:
        """The complete X.509 certificate in DER."""
        return _der_seq(
            self.tbs_der,
            _der_seq(_der_oid(_OID_ECDSA_SHA256)),
            _der(0x03, b"\x00" + crypto.ecdsa_raw_to_der(self.signature)),
        )

    def _subject_values(self, tag: int) -> list[int]:
        return [int(v) for t, v in self.subject if t == tag]

    @property
    def node_id(self) -> int | None:
        vals = self._subject_values(DNAttr.MATTER_NODE_ID)
        return vals[0] if vals else None

    @property
    def fabric_id(self) -> int | None:
        vals = self._subject_values(DNAttr.MATTER_FABRIC_ID)
        return vals[0] if vals else None

    @property
    def cats(self) -> tuple[int, ...]:
        return tuple(self._subject_values(DNAttr.MATTER_NOC_CAT))

    @property
    def rcac_id(self) -> int | None:
        vals = self._subject_values(DNAttr.MATTER_RCAC_ID)
        return vals[0] if vals else None

    @property
    def icac_id(self) -> int | None:
        vals = self._subject_values(DNAttr.MATTER_ICAC_ID)
        return vals[0] if vals else None

    @property
    def is_ca(self) -> bool:
        return self.basic_constraints is not None and self.basic_constraints.is_ca


@dataclass(frozen=True)
class ValidatedChain:
    """Identity extracted from a NOC chain that validated against a trusted root."""

    node_id: int
    fabric_id: int
    cats: tuple[int, ...]
    public_key: bytes  # the NOC subject's operational public key
    root_public_key: bytes


# ----------------------------------------------------------------------------------------------- decoding


def _fmt(msg: str, which: str) -> CertificateFormatError:
    return CertificateFormatError(msg, which)


def _uint(value: Any, what: str, which: str, bits: int) -> int:
    if not isinstance(value, tlv.UInt) or int(value) >= 1 << bits:
        raise _fmt(f"{what} must be an unsigned integer of at most {bits} bits, got {value!r}", which)
    return int(value)


def _bytes(value: Any, what: str, which: str, length: int | None = None) -> bytes:
    if not isinstance(value, bytes):
        raise _fmt(f"{what} must be an octet string, got {type(value).__name__}", which)
    if length is not None and len(value) != length:
        raise _fmt(f"{what} must be {length} bytes, got {len(value)}", which)
    return value


def _decode_dn(value: Any, what: str, which: str) -> tuple[tuple[int, int | str], ...]:
    if not isinstance(value, tlv.TLVList):
        raise _fmt(f"{what} must be a TLV list", which)
    if not value:
        raise _fmt(f"{what} is empty", which)
    if len(value) > _MAX_RDN:
        raise _fmt(f"{what} has {len(value)} attributes, at most {_MAX_RDN} are supported", which)
    out: list[tuple[int, int | str]] = []
    for tag, attr in value:
        if not isinstance(tag, int) or isinstance(tag, bool):
            raise _fmt(f"{what} attribute has a non-context tag {tag!r}", which)
        base = tag & 0x7F
        if base not in _ATTR_OID:
            raise _fmt(f"{what} attribute tag {tag} is unknown", which)
        if base in _MATTER_64 or base in _MATTER_32:
            if tag & _PRINTABLE_FLAG:
                raise _fmt(f"{what} Matter attribute tag {tag} cannot be a PrintableString", which)
            out.append(
                (
                    tag,
                    _uint(
                        attr, f"{what} attribute {DNAttr(base).name}", which, 64 if base in _MATTER_64 else 32
                    ),
                )
            )
        else:
            if not isinstance(attr, str):
                raise _fmt(f"{what} attribute {DNAttr(base).name} must be a UTF-8 string", which)
            out.append((tag, attr))
    return tuple(out)


def _dn_der(dn: Iterable[tuple[int, int | str]]) -> bytes:
    rdns = []
    for tag, value in dn:
        base = tag & 0x7F
        if base in _MATTER_64:
            enc = _der(0x0C, f"{int(value):016X}".encode())
        elif base in _MATTER_32:
            enc = _der(0x0C, f"{int(value):08X}".encode())
        else:
            raw = str(value).encode()
            if base == DNAttr.DOMAIN_COMPONENT:
                enc = _der(0x16, raw)
            elif tag & _PRINTABLE_FLAG:
                enc = _der(0x13, raw)
            else:
                enc = _der(0x0C, raw)
        rdns.append(_der(0x31, _der_seq(_der_oid(_ATTR_OID[base]), enc)))
    return _der_seq(*rdns)


def _read_der_head(data: bytes, off: int) -> tuple[int, int, int]:
    """(tag, content offset, content end) of the DER element at off; ValueError when malformed."""
    if off + 2 > len(data):
        raise ValueError("truncated")
    tag, first = data[off], data[off + 1]
    off += 2
    if first < 0x80:
        n = first
    else:
        k = first & 0x7F
        if k == 0 or k > 2 or off + k > len(data):
            raise ValueError("bad length")
        n = int.from_bytes(data[off : off + k], "big")
        off += k
    if off + n > len(data):
        raise ValueError("truncated content")
    return tag, off, off + n


def _check_future_extension(ext: bytes, which: str) -> None:
    """A future extension is a complete DER Extension SEQUENCE { OID, [critical], OCTET STRING } of unknown OID."""
    try:
        tag, start, end = _read_der_head(ext, 0)
        if tag != 0x30 or end != len(ext):
            raise ValueError("not one SEQUENCE")
        otag, _ostart, oend = _read_der_head(ext, start)
        if otag != 0x06:
            raise ValueError("no OID")
        if ext[start:oend] in {_der_oid(o) for o in _KNOWN_EXT_OIDS}:
            raise ValueError("known extension OID carried as a future extension")
        off = oend
        while off < end:
            _t, _s, off = _read_der_head(ext, off)
    except ValueError as exc:
        raise _fmt(f"future extension is not a valid DER Extension ({exc})", which) from None


def _decode_extensions(value: Any, which: str) -> dict[str, Any]:
    if not isinstance(value, tlv.TLVList):
        raise _fmt("extensions must be a TLV list", which)
    res: dict[str, Any] = {"basic": None, "ku": None, "eku": None, "ski": None, "aki": None, "future": []}
    seen: set[int] = set()
    parts: list[bytes] = []
    for tag, ext in value:
        if not isinstance(tag, int) or isinstance(tag, bool) or tag not in (1, 2, 3, 4, 5, 6):
            raise _fmt(f"unknown extension tag {tag!r}", which)
        if tag != _EXT_FUTURE and tag in seen:
            raise _fmt(f"duplicate extension tag {tag}", which)
        seen.add(tag)
        if tag == _EXT_FUTURE:
            raw = _bytes(ext, "future extension", which)
            _check_future_extension(raw, which)
            res["future"].append(raw)
            parts.append(raw)
            continue
        if tag == _EXT_BASIC:
            if not isinstance(ext, tlv.Struct) or list(ext.keys()) not in ([1], [1, 2]):
                raise _fmt("basic constraints must be a structure {1: is-ca[, 2: path-len]}", which)
            if not isinstance(ext[1], bool):
                raise _fmt("basic constraints is-ca must be a boolean", which)
            path_len = _uint(ext[2], "path length constraint", which, 8) if 2 in ext else None
            res["basic"] = BasicConstraints(ext[1], path_len)
            inner = _der_seq(
                (_der_bool_true() if ext[1] else b"") + (b"" if path_len is None else _der_uint(path_len))
            )
            critical = True
        elif tag == _EXT_KEY_USAGE:
            ku = _uint(ext, "key usage", which, 16)
            if ku & ~0x00FF:
                raise _fmt(f"key usage 0x{ku:04x} has unsupported bits", which)
            res["ku"] = ku
            inner = _der_named_bits(ku)
            critical = True
        elif tag == _EXT_EKU:
            if not isinstance(ext, tlv.Array) or not ext:
                raise _fmt("extended key usage must be a non-empty array", which)
            purposes = tuple(_uint(p, "key purpose", which, 8) for p in ext)
            if any(p not in _PURPOSE_OID for p in purposes):
                raise _fmt(f"unknown key purpose in {purposes}", which)
            res["eku"] = purposes
            inner = _der_seq(*(_der_oid(_PURPOSE_OID[p]) for p in purposes))
            critical = True
        elif tag == _EXT_SKI:
            res["ski"] = _bytes(ext, "subject key identifier", which, 20)
            inner = _der(0x04, res["ski"])
            critical = False
        else:
            res["aki"] = _bytes(ext, "authority key identifier", which, 20)
            inner = _der_seq(_der(0x80, res["aki"]))
            critical = False
        parts.append(
            _der_seq(_der_oid(_EXT_OID[tag]), _der_bool_true() if critical else b"", _der(0x04, inner))
        )
    res["der"] = _der(0xA3, _der_seq(*parts))
    return res


def decode_certificate(data: bytes, which: str = "") -> MatterCertificate:
    """Decode a Matter TLV certificate and build its DER TBSCertificate. Raises CertificateFormatError."""
    try:
        tag, value, end = tlv.decode_element(bytes(data), 0)
    except tlv.TLVError as exc:
        raise _fmt(f"malformed TLV: {exc}", which) from None
    if end != len(data):
        raise _fmt(f"{len(data) - end} trailing bytes after the certificate", which)
    if tag is not None or not isinstance(value, tlv.Struct):
        raise _fmt("certificate must be an anonymous TLV structure", which)
    if list(value.keys()) != _CERT_TAGS:
        raise _fmt(f"certificate fields must be tags 1..11 in order, got {list(value.keys())}", which)
    serial = _bytes(value[_TAG_SERIAL], "serial number", which)
    if not 1 <= len(serial) <= 20:
        raise _fmt(f"serial number must be 1..20 bytes, got {len(serial)}", which)
    if _uint(value[_TAG_SIG_ALGO], "signature algorithm", which, 8) != 1:
        raise _fmt("signature algorithm must be ecdsa-with-SHA256 (1)", which)
    issuer = _decode_dn(value[_TAG_ISSUER], "issuer", which)
    not_before = _uint(value[_TAG_NOT_BEFORE], "not-before", which, 32)
    not_after = _uint(value[_TAG_NOT_AFTER], "not-after", which, 32)
    if not_after != 0 and not_before >= not_after:
        raise _fmt("not-before is not earlier than not-after", which)
    subject = _decode_dn(value[_TAG_SUBJECT], "subject", which)
    if _uint(value[_TAG_PK_ALGO], "public key algorithm", which, 8) != 1:
        raise _fmt("public key algorithm must be EC (1)", which)
    if _uint(value[_TAG_CURVE], "elliptic curve", which, 8) != 1:
        raise _fmt("elliptic curve must be prime256v1 (1)", which)
    public_key = _bytes(value[_TAG_PUBKEY], "public key", which, 65)
    if public_key[0] != 0x04:
        raise _fmt("public key must be an uncompressed point", which)
    ext = _decode_extensions(value[_TAG_EXTENSIONS], which)
    signature = _bytes(value[_TAG_SIGNATURE], "signature", which, 64)
    tbs = _der_seq(
        _der(0xA0, _der_uint(2)),
        _der(0x02, serial),
        _der_seq(_der_oid(_OID_ECDSA_SHA256)),
        _dn_der(issuer),
        _der_seq(_der_time(not_before), _der_time(not_after)),
        _dn_der(subject),
        _der_seq(
            _der_seq(_der_oid(_OID_EC_PUBLIC_KEY), _der_oid(_OID_PRIME256V1)),
            _der(0x03, b"\x00" + public_key),
        ),
        ext["der"],
    )
    return MatterCertificate(
        tlv=bytes(data),
        serial=serial,
        issuer=issuer,
        not_before=not_before,
        not_after=not_after,
        subject=subject,
        public_key=public_key,
        basic_constraints=ext["basic"],
        key_usage=ext["ku"],
        ext_key_usage=ext["eku"],
        subject_key_id=ext["ski"],
        authority_key_id=ext["aki"],
        future_extensions=tuple(ext["future"]),
        signature=signature,
        tbs_der=tbs,
    )


def to_x509_der(data: bytes) -> bytes:
    """Convert a Matter TLV certificate to X.509 DER (byte-identical to the SDK's ConvertChipCertToX509Cert)."""
    return decode_certificate(data).der


# ----------------------------------------------------------------------------------------------- building


def key_identifier(public_key: bytes) -> bytes:
    """RFC 5280 method-1 key identifier (SHA-1 of the public key bits), as the SDK's issuers use."""
    return hashlib.sha1(public_key, usedforsecurity=False).digest()


def build_certificate(
    *,
    signer: ec.EllipticCurvePrivateKey,
    public_key: bytes,
    subject: Sequence[tuple[int, int | str]],
    issuer: Sequence[tuple[int, int | str]],
    serial: bytes = b"\x01",
    not_before: int = 0,
    not_after: int = 0,
    is_ca: bool = False,
    path_len: int | None = None,
    key_usage: int | None = None,
    ext_key_usage: Sequence[int] | None = None,
    subject_key_id: bytes | None = None,
    authority_key_id: bytes | None = None,
    future_extensions: Sequence[bytes] = (),
) -> bytes:
    """Encode and sign a Matter TLV certificate (times in Matter epoch seconds). Returns the TLV bytes.

    Key ids default to SHA-1 of the subject key (SKI) and of the signer's key (AKI).
    """

    def dn(attrs: Sequence[tuple[int, int | str]]) -> tlv.TLVList:
        return tlv.TLVList((t, v if isinstance(v, str) else tlv.UInt(v)) for t, v in attrs)

    basic = tlv.Struct({1: is_ca})
    if path_len is not None:
        basic[2] = tlv.UInt(path_len)
    if key_usage is None:
        key_usage = (KeyUsage.KEY_CERT_SIGN | KeyUsage.CRL_SIGN) if is_ca else KeyUsage.DIGITAL_SIGNATURE
    exts: list[tuple[int, Any]] = [(_EXT_BASIC, basic), (_EXT_KEY_USAGE, tlv.UInt(key_usage))]
    if ext_key_usage is not None:
        exts.append((_EXT_EKU, tlv.Array(tlv.UInt(p) for p in ext_key_usage)))
    exts.append((_EXT_SKI, subject_key_id if subject_key_id is not None else key_identifier(public_key)))
    aki = (
        authority_key_id if authority_key_id is not None else key_identifier(crypto.public_key_bytes(signer))
    )
    exts.append((_EXT_AKI, aki))
    exts.extend((_EXT_FUTURE, f) for f in future_extensions)
    body = tlv.Struct(
        {
            _TAG_SERIAL: serial,
            _TAG_SIG_ALGO: tlv.UInt(1),
            _TAG_ISSUER: dn(issuer),
            _TAG_NOT_BEFORE: tlv.UInt(not_before),
            _TAG_NOT_AFTER: tlv.UInt(not_after),
            _TAG_SUBJECT: dn(subject),
            _TAG_PK_ALGO: tlv.UInt(1),
            _TAG_CURVE: tlv.UInt(1),
            _TAG_PUBKEY: public_key,
            _TAG_EXTENSIONS: tlv.TLVList(exts),
            _TAG_SIGNATURE: bytes(64),
        }
    )
    unsigned = decode_certificate(tlv.encode(body))
    body[_TAG_SIGNATURE] = crypto.ecdsa_sign_raw(signer, unsigned.tbs_der)
    return tlv.encode(body)


# ----------------------------------------------------------------------------------------------- validation


def _check_time(cert: MatterCertificate, which: str, now_chip: int | None) -> None:
    if now_chip is None:
        return
    if now_chip < cert.not_before:
        raise CertificateValidityError(
            f"not valid before Matter epoch {cert.not_before} (now {now_chip})", which
        )
    if cert.not_after != 0 and now_chip > cert.not_after:
        raise CertificateValidityError(f"expired at Matter epoch {cert.not_after} (now {now_chip})", which)


def _check_signed_by(
    cert: MatterCertificate, issuer: MatterCertificate, which: str, issuer_name: str
) -> None:
    if cert.issuer != issuer.subject:
        raise CertificateChainError(f"issuer DN does not match the {issuer_name} subject", which)
    if cert.authority_key_id is None or cert.authority_key_id != issuer.subject_key_id:
        raise CertificateChainError(
            f"authority key id does not match the {issuer_name} subject key id", which
        )
    try:
        ok = crypto.ecdsa_verify_raw(issuer.public_key, cert.tbs_der, cert.signature)
    except crypto.CryptoError as exc:
        raise CertificateChainError(f"{issuer_name} public key unusable: {exc}", which) from None
    if not ok:
        raise CertificateSignatureError(f"signature does not verify with the {issuer_name} key", which)


def _check_ca(cert: MatterCertificate, which: str, certs_below: int) -> None:
    if not cert.is_ca:
        raise CertificateChainError("is not a CA certificate (basic constraints cA missing or false)", which)
    if cert.key_usage is None or not cert.key_usage & KeyUsage.KEY_CERT_SIGN:
        raise CertificateChainError("key usage lacks keyCertSign", which)
    if cert.subject_key_id is None:
        raise CertificateChainError("subject key id missing", which)
    bc = cert.basic_constraints
    # pathLen counts the intermediate CAs that may follow this one.
    if bc is not None and bc.path_len is not None and certs_below - 1 > bc.path_len:
        raise CertificateChainError(f"path length constraint {bc.path_len} exceeded", which)


def _single(cert: MatterCertificate, tag: int, which: str, required: bool) -> int | None:
    vals = [v for t, v in cert.subject if t == tag]
    if len(vals) > 1:
        raise CertificateChainError(f"subject has {len(vals)} {DNAttr(tag).name} attributes", which)
    if required and not vals:
        raise CertificateChainError(f"subject lacks {DNAttr(tag).name}", which)
    return int(vals[0]) if vals else None


def validate_chain(
    noc: bytes | MatterCertificate,
    icac: bytes | MatterCertificate | None,
    rcac: bytes | MatterCertificate,
    *,
    now: float | None,
) -> ValidatedChain:
    """Validate NOC [-> ICAC] -> RCAC, where `rcac` is the trusted root; `now` is Unix time (None skips times).

    Checks decoding, signatures, validity periods, CA flags, key usage, EKU of the NOC (clientAuth and
    serverAuth), path length, identity attributes (node id operational, fabric id non-zero and consistent
    across the chain, at most 3 CATs with non-zero versions and distinct identifiers). Returns the identity.
    """
    n = noc if isinstance(noc, MatterCertificate) else decode_certificate(noc, "NOC")
    i = icac if isinstance(icac, MatterCertificate) or icac is None else decode_certificate(icac, "ICAC")
    r = rcac if isinstance(rcac, MatterCertificate) else decode_certificate(rcac, "RCAC")
    now_chip = None if now is None else int(now) - CHIP_EPOCH_UNIX

    # Root: self-issued, self-signed, a CA.
    if r.issuer != r.subject:
        raise CertificateChainError("root is not self-issued", "RCAC")
    _single(r, DNAttr.MATTER_RCAC_ID, "RCAC", required=True)
    _check_ca(r, "RCAC", 2 if i is not None else 1)
    if r.authority_key_id is not None and r.authority_key_id != r.subject_key_id:
        raise CertificateChainError("root authority key id differs from its subject key id", "RCAC")
    if not crypto.ecdsa_verify_raw(r.public_key, r.tbs_der, r.signature):
        raise CertificateSignatureError("root self-signature does not verify", "RCAC")
    _check_time(r, "RCAC", now_chip)

    parent, parent_name = r, "RCAC"
    if i is not None:
        _single(i, DNAttr.MATTER_ICAC_ID, "ICAC", required=True)
        if any(t in (DNAttr.MATTER_NODE_ID, DNAttr.MATTER_RCAC_ID) for t, _ in i.subject):
            raise CertificateChainError("ICAC subject carries a node id or RCAC id", "ICAC")
        _check_ca(i, "ICAC", 1)
        _check_signed_by(i, r, "ICAC", "RCAC")
        _check_time(i, "ICAC", now_chip)
        parent, parent_name = i, "ICAC"

    # Leaf: an operational certificate.
    if n.is_ca or n.basic_constraints is None:
        raise CertificateChainError("NOC must carry basic constraints with cA false", "NOC")
    if n.key_usage is None or not n.key_usage & KeyUsage.DIGITAL_SIGNATURE:
        raise CertificateChainError("key usage lacks digitalSignature", "NOC")
    eku = set(n.ext_key_usage or ())
    if not {KeyPurpose.CLIENT_AUTH, KeyPurpose.SERVER_AUTH} <= eku:
        raise CertificateChainError("extended key usage must include clientAuth and serverAuth", "NOC")
    node_id = _single(n, DNAttr.MATTER_NODE_ID, "NOC", required=True)
    fabric_id = _single(n, DNAttr.MATTER_FABRIC_ID, "NOC", required=True)
    assert node_id is not None and fabric_id is not None
    if not 1 <= node_id <= 0xFFFF_FFEF_FFFF_FFFF:
        raise CertificateChainError(f"node id 0x{node_id:016X} is not an operational node id", "NOC")
    if fabric_id == 0:
        raise CertificateChainError("fabric id 0 is invalid", "NOC")
    if any(t in (DNAttr.MATTER_ICAC_ID, DNAttr.MATTER_RCAC_ID) for t, _ in n.subject):
        raise CertificateChainError("NOC subject carries an ICAC or RCAC id", "NOC")
    cats = n.cats
    if len(cats) > 3:
        raise CertificateChainError(f"{len(cats)} CASE Authenticated Tags, at most 3 allowed", "NOC")
    if any(c & 0xFFFF == 0 for c in cats):
        raise CertificateChainError("CASE Authenticated Tag with version 0", "NOC")
    if len({c >> 16 for c in cats}) != len(cats):
        raise CertificateChainError("CASE Authenticated Tags repeat an identifier", "NOC")
    _check_signed_by(n, parent, "NOC", parent_name)
    _check_time(n, "NOC", now_chip)

    for ca, name in ((i, "ICAC"), (r, "RCAC")):
        if ca is None:
            continue
        ca_fabric = _single(ca, DNAttr.MATTER_FABRIC_ID, name, required=False)
        if ca_fabric is not None and ca_fabric != fabric_id:
            raise CertificateChainError(
                f"fabric id 0x{ca_fabric:016X} differs from the NOC's 0x{fabric_id:016X}", name
            )
    return ValidatedChain(node_id, fabric_id, cats, n.public_key, r.public_key)
