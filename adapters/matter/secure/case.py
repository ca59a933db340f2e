"""CASE responder (Core spec §4.14.2): a sans-I/O state machine turning Sigma1/Sigma3 into Sigma2/StatusReport.

One `CASEResponder` per unsecured exchange that starts with Sigma1. Feed it `(opcode, payload)` pairs with
`receive()`; it returns the `(opcode, payload)` messages to send on that exchange. When `done` is true the
handshake is over: `session` holds the `EstablishedSession` on success (after Sigma3 validated; the success
StatusReport is among the returned messages), otherwise `error` says why (a StatusReport carrying
NO_SHARED_TRUST_ROOTS or INVALID_PARAMETER was returned, or the initiator reported a failure) and nothing else
happened. Time (`now`, Unix seconds) and randomness (`random_bytes`) are injected.

Message layout (TLV, anonymous structure, context tags):
  Sigma1 {1 initiatorRandom[32], 2 initiatorSessionId u16, 3 destinationId[32], 4 initiatorEphPubKey[65],
          5 initiatorSessionParams?, 6 resumptionID[16]?, 7 initiatorResumeMIC[16]?}
  Sigma2 {1 responderRandom[32], 2 responderSessionId u16, 3 responderEphPubKey[65], 4 encrypted2,
          5 responderSessionParams?}      TBEData2 {1 NOC, 2 ICAC?, 3 signature[64], 4 resumptionID[16]}
  Sigma3 {1 encrypted3}                   TBEData3 {1 NOC, 2 ICAC?, 3 signature[64]}
  TBSData{2,3} {1 senderNOC, 2 senderICAC?, 3 senderEphPubKey, 4 receiverEphPubKey} (signed, never sent)
  Session parameters {1 idle ms u32, 2 active ms u32, 3 active threshold ms u16, 4 data model rev,
          5 interaction model rev, 6 specification version, 7 max paths per invoke}
Keys: S2K = HKDF(ECDH, IPK || responderRandom || responderEphPubKey || H(Sigma1), "Sigma2");
S3K = HKDF(ECDH, IPK || H(Sigma1 || Sigma2), "Sigma3"); session keys = HKDF(ECDH, IPK || H(Sigma1..3),
"SessionKeys", 48) -> I2R | R2I | attestation challenge. AES-CCM nonces "NCASE_Sigma2N" / "NCASE_Sigma3N".

Session resumption is not offered: a Sigma1 carrying resumption fields gets a full Sigma2 (spec-allowed).
Integration (M1's node): `handler = CASEResponder(fabrics, table.allocate_session_id(), now=clock, ...)`;
`out = handler.receive(opcode, payload)`; send `out` on the exchange; when `handler.done`, add
`handler.session` to the session table or release the session id.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from adapters.matter.secure import certs, crypto
from adapters.matter.secure.credentials import OperationalCredentials
from adapters.matter.transport.status_report import (
    GeneralCode,
    SecureChannelCode,
    StatusReport,
    StatusReportError,
)
from gateway.formats import tlv

__all__ = [
    "DEFAULT_SESSION_PARAMETERS",
    "OPCODE_SIGMA1",
    "OPCODE_SIGMA2",
    "OPCODE_SIGMA2_RESUME",
    "OPCODE_SIGMA3",
    "OPCODE_STATUS_REPORT",
    "CASEError",
    "CASEResponder",
    "EstablishedSession",
    "SessionParameters",
    "Sigma1",
    "Sigma2",
    "Sigma3",
    "SigmaFormatError",
    "TBEData",
    "sigma_status_report",
    "tbs_data",
]

OPCODE_SIGMA1 = 0x30
OPCODE_SIGMA2 = 0x31
OPCODE_SIGMA3 = 0x32
OPCODE_SIGMA2_RESUME = 0x33
OPCODE_STATUS_REPORT = 0x40
SECURE_CHANNEL_PROTOCOL_ID = 0x0000

NONCE_SIGMA2 = b"NCASE_Sigma2N"
NONCE_SIGMA3 = b"NCASE_Sigma3N"
RANDOM_LENGTH = 32
RESUMPTION_ID_LENGTH = 16
MAX_ENCRYPTED_LENGTH = 2 * certs.MAX_CERT_TLV_LENGTH + 64 + 128 + 32  # certs + signature + SDK's slack + TLV


class CASEError(Exception):
    """Handshake failure; `protocol_code` is the secure channel code reported to the peer."""

    def __init__(self, message: str, protocol_code: int = SecureChannelCode.INVALID_PARAMETER) -> None:
        super().__init__(message)
        self.protocol_code = protocol_code


class SigmaFormatError(CASEError):
    """A Sigma message or TBE payload that is not well-formed (the only error the decoders raise)."""


# ----------------------------------------------------------------------------------------------- messages


def _decode_struct(payload: bytes, what: str) -> tlv.Struct:
    try:
        tag, value, end = tlv.decode_element(bytes(payload), 0)
    except tlv.TLVError as exc:
        raise SigmaFormatError(f"{what}: malformed TLV: {exc}") from None
    if end != len(payload):
        raise SigmaFormatError(f"{what}: {len(payload) - end} trailing bytes")
    if tag is not None or not isinstance(value, tlv.Struct):
        raise SigmaFormatError(f"{what}: not an anonymous TLV structure")
    return value


def _req_bytes(
    s: tlv.Struct, tag: int, what: str, length: int | None = None, max_len: int | None = None
) -> bytes:
    if tag not in s:
        raise SigmaFormatError(f"{what}: field {tag} missing")
    v = s[tag]
    if not isinstance(v, bytes):
        raise SigmaFormatError(f"{what}: field {tag} must be an octet string")
    if length is not None and len(v) != length:
        raise SigmaFormatError(f"{what}: field {tag} must be {length} bytes, got {len(v)}")
    if max_len is not None and len(v) > max_len:
        raise SigmaFormatError(f"{what}: field {tag} longer than {max_len} bytes")
    return v


def _req_uint(s: tlv.Struct, tag: int, what: str, bits: int) -> int:
    if tag not in s:
        raise SigmaFormatError(f"{what}: field {tag} missing")
    v = s[tag]
    if not isinstance(v, tlv.UInt) or int(v) >= 1 << bits:
        raise SigmaFormatError(f"{what}: field {tag} must be an unsigned {bits}-bit integer")
    return int(v)


@dataclass(frozen=True)
class SessionParameters:
    """Session parameters exchanged in Sigma1/Sigma2 (every field optional)."""

    idle_interval_ms: int | None = None
    active_interval_ms: int | None = None
    active_threshold_ms: int | None = None
    data_model_revision: int | None = None
    interaction_model_revision: int | None = None
    specification_version: int | None = None
    max_paths_per_invoke: int | None = None

    _FIELDS = (
        (1, "idle_interval_ms", 32),
        (2, "active_interval_ms", 32),
        (3, "active_threshold_ms", 16),
        (4, "data_model_revision", 16),
        (5, "interaction_model_revision", 16),
        (6, "specification_version", 32),
        (7, "max_paths_per_invoke", 16),
    )

    def to_tlv(self) -> tlv.Struct:
        out = tlv.Struct()
        for tag, name, _bits in self._FIELDS:
            v = getattr(self, name)
            if v is not None:
                out[tag] = tlv.UInt(v)
        return out

    @classmethod
    def from_tlv(cls, value: Any, what: str) -> SessionParameters:
        if not isinstance(value, tlv.Struct):
            raise SigmaFormatError(f"{what}: session parameters must be a structure")
        kw = {}
        for tag, name, bits in cls._FIELDS:
            if tag in value:
                kw[name] = _req_uint(value, tag, f"{what} session parameters", bits)
        return cls(**kw)  # unknown tags are tolerated (future parameters)

    def mrp_params(self) -> dict[str, int]:
        """The MRP subset, keyed like transport.session.MRPParams (absent values left out)."""
        out = {}
        for key, v in (
            ("idle_retrans_ms", self.idle_interval_ms),
            ("active_retrans_ms", self.active_interval_ms),
            ("active_threshold_ms", self.active_threshold_ms),
        ):
            if v is not None:
                out[key] = v
        return out


DEFAULT_SESSION_PARAMETERS = SessionParameters(
    idle_interval_ms=500,
    active_interval_ms=300,
    active_threshold_ms=4000,
    data_model_revision=18,
    interaction_model_revision=12,
    specification_version=0x01040000,
    max_paths_per_invoke=1,
)


@dataclass(frozen=True)
class Sigma1:
    initiator_random: bytes
    initiator_session_id: int
    destination_id: bytes
    initiator_eph_pub_key: bytes
    session_params: SessionParameters | None = None
    resumption_id: bytes | None = None
    initiator_resume_mic: bytes | None = None

    def encode(self) -> bytes:
        s = tlv.Struct(
            {
                1: self.initiator_random,
                2: tlv.UInt(self.initiator_session_id),
                3: self.destination_id,
                4: self.initiator_eph_pub_key,
            }
        )
        if self.session_params is not None:
            s[5] = self.session_params.to_tlv()
        if self.resumption_id is not None and self.initiator_resume_mic is not None:
            s[6] = self.resumption_id
            s[7] = self.initiator_resume_mic
        return tlv.encode(s)

    @classmethod
    def decode(cls, payload: bytes) -> Sigma1:
        s = _decode_struct(payload, "Sigma1")
        rid = s.get(6)
        mic = s.get(7)
        if (rid is None) != (mic is None):
            raise SigmaFormatError("Sigma1: resumptionID and initiatorResumeMIC must come together")
        if rid is not None:
            _req_bytes(s, 6, "Sigma1", RESUMPTION_ID_LENGTH)
            _req_bytes(s, 7, "Sigma1", crypto.AEAD_MIC_LENGTH)
        return cls(
            initiator_random=_req_bytes(s, 1, "Sigma1", RANDOM_LENGTH),
            initiator_session_id=_req_uint(s, 2, "Sigma1", 16),
            destination_id=_req_bytes(s, 3, "Sigma1", 32),
            initiator_eph_pub_key=_req_bytes(s, 4, "Sigma1", crypto.PUBLIC_KEY_LENGTH),
            session_params=SessionParameters.from_tlv(s[5], "Sigma1") if 5 in s else None,
            resumption_id=rid,
            initiator_resume_mic=mic,
        )


@dataclass(frozen=True)
class Sigma2:
    responder_random: bytes
    responder_session_id: int
    responder_eph_pub_key: bytes
    encrypted2: bytes
    session_params: SessionParameters | None = None

    def encode(self) -> bytes:
        s = tlv.Struct(
            {
                1: self.responder_random,
                2: tlv.UInt(self.responder_session_id),
                3: self.responder_eph_pub_key,
                4: self.encrypted2,
            }
        )
        if self.session_params is not None:
            s[5] = self.session_params.to_tlv()
        return tlv.encode(s)

    @classmethod
    def decode(cls, payload: bytes) -> Sigma2:
        s = _decode_struct(payload, "Sigma2")
        enc = _req_bytes(s, 4, "Sigma2", max_len=MAX_ENCRYPTED_LENGTH)
        if len(enc) <= crypto.AEAD_MIC_LENGTH:
            raise SigmaFormatError("Sigma2: encrypted2 not longer than its MIC")
        return cls(
            responder_random=_req_bytes(s, 1, "Sigma2", RANDOM_LENGTH),
            responder_session_id=_req_uint(s, 2, "Sigma2", 16),
            responder_eph_pub_key=_req_bytes(s, 3, "Sigma2", crypto.PUBLIC_KEY_LENGTH),
            encrypted2=enc,
            session_params=SessionParameters.from_tlv(s[5], "Sigma2") if 5 in s else None,
        )


@dataclass(frozen=True)
class Sigma3:
    encrypted3: bytes

    def encode(self) -> bytes:
        return tlv.encode(tlv.Struct({1: self.encrypted3}))

    @classmethod
    def decode(cls, payload: bytes) -> Sigma3:
        s = _decode_struct(payload, "Sigma3")
        enc = _req_bytes(s, 1, "Sigma3", max_len=MAX_ENCRYPTED_LENGTH)
        if len(enc) <= crypto.AEAD_MIC_LENGTH:
            raise SigmaFormatError("Sigma3: encrypted3 not longer than its MIC")
        return cls(enc)


@dataclass(frozen=True)
class TBEData:
    """Decrypted Sigma2/Sigma3 payload: sender's NOC, optional ICAC, signature, resumption id (Sigma2 only)."""

    noc: bytes
    icac: bytes | None
    signature: bytes
    resumption_id: bytes | None = None

    def encode(self) -> bytes:
        s = tlv.Struct({1: self.noc})
        if self.icac is not None:
            s[2] = self.icac
        s[3] = self.signature
        if self.resumption_id is not None:
            s[4] = self.resumption_id
        return tlv.encode(s)

    @classmethod
    def decode(cls, plaintext: bytes, what: str, *, with_resumption: bool) -> TBEData:
        s = _decode_struct(plaintext, what)
        icac = _req_bytes(s, 2, what, max_len=certs.MAX_CERT_TLV_LENGTH) if 2 in s else None
        rid = _req_bytes(s, 4, what, RESUMPTION_ID_LENGTH) if with_resumption else None
        return cls(
            noc=_req_bytes(s, 1, what, max_len=certs.MAX_CERT_TLV_LENGTH),
            icac=icac,
            signature=_req_bytes(s, 3, what, crypto.SIGNATURE_LENGTH),
            resumption_id=rid,
        )


def tbs_data(noc: bytes, icac: bytes | None, sender_eph_pub: bytes, receiver_eph_pub: bytes) -> bytes:
    """The TBSData2/TBSData3 structure that the sender signs."""
    s = tlv.Struct({1: noc})
    if icac is not None:
        s[2] = icac
    s[3] = sender_eph_pub
    s[4] = receiver_eph_pub
    return tlv.encode(s)


def sigma_status_report(protocol_code: int) -> bytes:
    """Secure channel StatusReport body: SUCCESS for code 0, FAILURE otherwise (as the SDK sends)."""
    general = (
        GeneralCode.SUCCESS
        if protocol_code == SecureChannelCode.SESSION_ESTABLISHMENT_SUCCESS
        else GeneralCode.FAILURE
    )
    return StatusReport(general, SECURE_CHANNEL_PROTOCOL_ID, protocol_code).encode()


# ----------------------------------------------------------------------------------------------- result


@dataclass(frozen=True)
class EstablishedSession:
    """A CASE session ready for the session table (we are the responder: decrypt I2R, encrypt R2I)."""

    local_session_id: int
    peer_session_id: int
    i2r_key: bytes
    r2i_key: bytes
    attestation_challenge: bytes
    peer_node_id: int
    peer_cats: tuple[int, ...]
    fabric_index: int
    peer_mrp_params: dict[str, int] | None
    local_node_id: int = 0
    peer_session_params: SessionParameters | None = None
    resumption_id: bytes | None = None


def derive_session_keys(
    shared_secret: bytes, ipk: bytes, transcript_hash: bytes
) -> tuple[bytes, bytes, bytes]:
    """(I2R key, R2I key, attestation challenge) from the final transcript hash."""
    keys = crypto.hkdf_sha256(shared_secret, ipk + transcript_hash, b"SessionKeys", 48)
    return keys[:16], keys[16:32], keys[32:]


# ----------------------------------------------------------------------------------------------- responder


class CASEResponder:
    """The responder side of one CASE handshake (see the module docstring)."""

    def __init__(
        self,
        fabrics: Sequence[OperationalCredentials],
        local_session_id: int,
        *,
        now: Callable[[], float],
        random_bytes: Callable[[int], bytes] = os.urandom,
        session_params: SessionParameters = DEFAULT_SESSION_PARAMETERS,
    ) -> None:
        if not 1 <= local_session_id <= 0xFFFF:
            raise ValueError(f"local session id must be 1..65535, got {local_session_id}")
        self._fabrics = list(fabrics)
        self._local_session_id = local_session_id
        self._now = now
        self._random = random_bytes
        self._params = session_params
        self._state = "await_sigma1"
        self._transcript = hashlib.sha256()
        self.done = False
        self.session: EstablishedSession | None = None
        self.error: CASEError | None = None
        self.peer_status: StatusReport | None = None
        # Filled by Sigma1 processing
        self._fabric: OperationalCredentials | None = None
        self._ipk = b""
        self._shared = b""
        self._eph: ec.EllipticCurvePrivateKey | None = None
        self._eph_pub = b""
        self._peer_eph_pub = b""
        self._sigma1: Sigma1 | None = None
        self._resumption_id = b""

    @property
    def fabric(self) -> OperationalCredentials | None:
        """The fabric the initiator addressed (known after Sigma1)."""
        return self._fabric

    def receive(self, opcode: int, payload: bytes) -> list[tuple[int, bytes]]:
        """Process one message of the handshake exchange; return the messages to send back."""
        if self.done:
            return []
        try:
            if opcode == OPCODE_STATUS_REPORT:
                return self._on_status_report(payload)
            if opcode == OPCODE_SIGMA1 and self._state == "await_sigma1":
                return self._on_sigma1(payload)
            if opcode == OPCODE_SIGMA3 and self._state == "await_sigma3":
                return self._on_sigma3(payload)
            raise CASEError(f"unexpected opcode 0x{opcode:02x} in state {self._state}")
        except (certs.CertificateError, crypto.CryptoError, tlv.TLVError) as exc:
            return self._fail(CASEError(f"{type(exc).__name__}: {exc}"))
        except CASEError as exc:
            return self._fail(exc)

    def _fail(self, exc: CASEError) -> list[tuple[int, bytes]]:
        self._finish(error=exc)
        return [(OPCODE_STATUS_REPORT, sigma_status_report(exc.protocol_code))]

    def _finish(self, error: CASEError | None = None) -> None:
        self.done = True
        self.error = error
        self._state = "done" if error is None else "failed"
        self._eph = None  # drop secrets early
        self._shared = b""

    def _on_status_report(self, payload: bytes) -> list[tuple[int, bytes]]:
        try:
            report = StatusReport.decode(payload)
        except StatusReportError as exc:
            self._finish(CASEError(f"malformed StatusReport from initiator: {exc}"))
            return []
        self.peer_status = report
        self._finish(CASEError(f"initiator aborted the handshake: {report}", report.protocol_code))
        return []

    def _match_fabric(self, s1: Sigma1) -> OperationalCredentials:
        for fabric in self._fabrics:
            ipk = fabric.ipk
            candidate = crypto.destination_id(
                ipk, s1.initiator_random, fabric.root_public_key, fabric.fabric_id, fabric.node_id
            )
            if candidate == s1.destination_id:
                self._ipk = ipk
                return fabric
        raise CASEError("destination id matches none of our fabrics", SecureChannelCode.NO_SHARED_TRUST_ROOTS)

    def _on_sigma1(self, payload: bytes) -> list[tuple[int, bytes]]:
        s1 = Sigma1.decode(payload)
        if s1.initiator_session_id == 0:
            raise SigmaFormatError("Sigma1: initiator session id 0 is reserved")
        self._transcript.update(payload)
        fabric = self._match_fabric(s1)
        self._peer_eph_pub = s1.initiator_eph_pub_key
        crypto.load_public_key(self._peer_eph_pub, "initiator ephemeral public key")  # on-curve check
        self._fabric, self._sigma1 = fabric, s1

        self._eph = crypto.private_key_from_random(self._random)
        self._eph_pub = crypto.public_key_bytes(self._eph)
        self._shared = crypto.ecdh_shared_secret(self._eph, self._peer_eph_pub)
        responder_random = self._random(RANDOM_LENGTH)
        self._resumption_id = self._random(RESUMPTION_ID_LENGTH)

        signature = crypto.ecdsa_sign_raw(
            fabric.private_key, tbs_data(fabric.noc, fabric.icac, self._eph_pub, self._peer_eph_pub)
        )
        tbe = TBEData(fabric.noc, fabric.icac, signature, self._resumption_id).encode()
        salt = self._ipk + responder_random + self._eph_pub + self._transcript.copy().digest()
        s2k = crypto.hkdf_sha256(self._shared, salt, b"Sigma2", 16)
        sigma2 = Sigma2(
            responder_random=responder_random,
            responder_session_id=self._local_session_id,
            responder_eph_pub_key=self._eph_pub,
            encrypted2=crypto.aes_ccm_encrypt(s2k, NONCE_SIGMA2, tbe),
            session_params=self._params,
        ).encode()
        self._transcript.update(sigma2)
        self._state = "await_sigma3"
        return [(OPCODE_SIGMA2, sigma2)]

    def _on_sigma3(self, payload: bytes) -> list[tuple[int, bytes]]:
        fabric, s1 = self._fabric, self._sigma1
        assert fabric is not None and s1 is not None
        s3 = Sigma3.decode(payload)
        s3k = crypto.hkdf_sha256(self._shared, self._ipk + self._transcript.copy().digest(), b"Sigma3", 16)
        try:
            plain = crypto.aes_ccm_decrypt(s3k, NONCE_SIGMA3, s3.encrypted3)
        except crypto.CryptoError:
            raise CASEError("Sigma3: encrypted3 does not authenticate") from None
        tbe = TBEData.decode(plain, "TBEData3", with_resumption=False)
        chain = certs.validate_chain(tbe.noc, tbe.icac, fabric.rcac_cert, now=self._now())
        if chain.fabric_id != fabric.fabric_id:
            raise CASEError(f"initiator NOC is on fabric 0x{chain.fabric_id:X}, not 0x{fabric.fabric_id:X}")
        signed = tbs_data(tbe.noc, tbe.icac, self._peer_eph_pub, self._eph_pub)
        if not crypto.ecdsa_verify_raw(chain.public_key, signed, tbe.signature):
            raise CASEError("Sigma3: TBSData3 signature does not verify with the initiator's NOC key")
        self._transcript.update(payload)
        i2r, r2i, challenge = derive_session_keys(self._shared, self._ipk, self._transcript.digest())
        self.session = EstablishedSession(
            local_session_id=self._local_session_id,
            peer_session_id=s1.initiator_session_id,
            i2r_key=i2r,
            r2i_key=r2i,
            attestation_challenge=challenge,
            peer_node_id=chain.node_id,
            peer_cats=chain.cats,
            fabric_index=fabric.fabric_index,
            peer_mrp_params=s1.session_params.mrp_params() if s1.session_params else None,
            local_node_id=fabric.node_id,
            peer_session_params=s1.session_params,
            resumption_id=self._resumption_id,
        )
        self._finish()
        return [(OPCODE_STATUS_REPORT, sigma_status_report(SecureChannelCode.SESSION_ESTABLISHMENT_SUCCESS))]
