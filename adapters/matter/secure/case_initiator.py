"""CASE initiator (Core spec §4.14.2), sans-I/O: for unit tests and the benchmark, the other half of case.py.

`CASEInitiator(fabric, peer_node_id, local_session_id, now=..., random_bytes=...)`; `start()` returns the
Sigma1 `(opcode, payload)`; `receive(opcode, payload)` takes Sigma2 (returns Sigma3) and the final StatusReport.
On success `session` is an `EstablishedSession` seen from the initiator (same keys as the responder's; here
`local_session_id` is ours and `peer_node_id` the responder's). The key schedule is written out here rather than
imported from case.py so that a mistake on one side shows up as a failed handshake; the message codecs are shared.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable

from adapters.matter.secure import certs, crypto
from adapters.matter.secure.case import (
    DEFAULT_SESSION_PARAMETERS,
    OPCODE_SIGMA1,
    OPCODE_SIGMA2,
    OPCODE_SIGMA3,
    OPCODE_STATUS_REPORT,
    CASEError,
    EstablishedSession,
    SessionParameters,
    Sigma1,
    Sigma2,
    Sigma3,
    TBEData,
    sigma_status_report,
    tbs_data,
)
from adapters.matter.secure.credentials import OperationalCredentials
from adapters.matter.transport.status_report import SecureChannelCode, StatusReport, StatusReportError

__all__ = ["CASEInitiator"]


class CASEInitiator:
    """Initiator side of one CASE handshake towards `peer_node_id` on `fabric`."""

    def __init__(
        self,
        fabric: OperationalCredentials,
        peer_node_id: int,
        local_session_id: int,
        *,
        now: Callable[[], float],
        random_bytes: Callable[[int], bytes] = os.urandom,
        session_params: SessionParameters | None = DEFAULT_SESSION_PARAMETERS,
        resumption: tuple[bytes, bytes] | None = None,
    ) -> None:
        self.fabric = fabric
        self.peer_node_id = peer_node_id
        self.local_session_id = local_session_id
        self._now = now
        self._random = random_bytes
        self._params = session_params
        self._resumption = resumption  # (resumption id, MIC) to exercise the responder's decline path
        self._hash = hashlib.sha256()
        self.done = False
        self.session: EstablishedSession | None = None
        self.error: CASEError | None = None
        self.peer_status: StatusReport | None = None
        self._state = "init"

    def start(self) -> tuple[int, bytes]:
        """Build Sigma1."""
        f = self.fabric
        self._eph = crypto.private_key_from_random(self._random)
        self._eph_pub = crypto.public_key_bytes(self._eph)
        rnd = self._random(32)
        self._ipk = crypto.hkdf_sha256(
            f.ipk_epoch_key, crypto.compressed_fabric_id(f.root_public_key, f.fabric_id), b"GroupKey v1.0", 16
        )
        dest = crypto.hmac_sha256(
            self._ipk,
            rnd
            + f.root_public_key
            + f.fabric_id.to_bytes(8, "little")
            + self.peer_node_id.to_bytes(8, "little"),
        )
        rid, mic = self._resumption if self._resumption else (None, None)
        payload = Sigma1(rnd, self.local_session_id, dest, self._eph_pub, self._params, rid, mic).encode()
        self._hash.update(payload)
        self._state = "await_sigma2"
        return OPCODE_SIGMA1, payload

    def receive(self, opcode: int, payload: bytes) -> list[tuple[int, bytes]]:
        if self.done:
            return []
        try:
            if opcode == OPCODE_SIGMA2 and self._state == "await_sigma2":
                return self._on_sigma2(payload)
            if opcode == OPCODE_STATUS_REPORT:
                return self._on_status(payload)
            raise CASEError(f"unexpected opcode 0x{opcode:02x} in state {self._state}")
        except (certs.CertificateError, crypto.CryptoError) as exc:
            return self._fail(CASEError(f"{type(exc).__name__}: {exc}"))
        except CASEError as exc:
            return self._fail(exc)

    def _fail(self, exc: CASEError) -> list[tuple[int, bytes]]:
        self.done, self.error = True, exc
        return [(OPCODE_STATUS_REPORT, sigma_status_report(exc.protocol_code))]

    def _on_sigma2(self, payload: bytes) -> list[tuple[int, bytes]]:
        f = self.fabric
        s2 = Sigma2.decode(payload)
        self._shared = crypto.ecdh_shared_secret(self._eph, s2.responder_eph_pub_key)
        h1 = self._hash.copy().digest()
        s2k = crypto.hkdf_sha256(
            self._shared, self._ipk + s2.responder_random + s2.responder_eph_pub_key + h1, b"Sigma2", 16
        )
        try:
            plain = crypto.aes_ccm_decrypt(s2k, b"NCASE_Sigma2N", s2.encrypted2)
        except crypto.CryptoError:
            raise CASEError("Sigma2: encrypted2 does not authenticate") from None
        tbe = TBEData.decode(plain, "TBEData2", with_resumption=True)
        chain = certs.validate_chain(tbe.noc, tbe.icac, f.rcac, now=self._now())
        if chain.node_id != self.peer_node_id or chain.fabric_id != f.fabric_id:
            raise CASEError(f"responder is node 0x{chain.node_id:X}, expected 0x{self.peer_node_id:X}")
        signed = tbs_data(tbe.noc, tbe.icac, s2.responder_eph_pub_key, self._eph_pub)
        if not crypto.ecdsa_verify_raw(chain.public_key, signed, tbe.signature):
            raise CASEError("Sigma2: TBSData2 signature does not verify")
        self._hash.update(payload)
        s3k = crypto.hkdf_sha256(self._shared, self._ipk + self._hash.copy().digest(), b"Sigma3", 16)
        my_sig = crypto.ecdsa_sign_raw(
            f.private_key, tbs_data(f.noc, f.icac, self._eph_pub, s2.responder_eph_pub_key)
        )
        enc3 = crypto.aes_ccm_encrypt(s3k, b"NCASE_Sigma3N", TBEData(f.noc, f.icac, my_sig).encode())
        sigma3 = Sigma3(enc3).encode()
        self._hash.update(sigma3)
        keys = crypto.hkdf_sha256(self._shared, self._ipk + self._hash.digest(), b"SessionKeys", 48)
        self._pending = EstablishedSession(
            local_session_id=self.local_session_id,
            peer_session_id=s2.responder_session_id,
            i2r_key=keys[:16],
            r2i_key=keys[16:32],
            attestation_challenge=keys[32:],
            peer_node_id=chain.node_id,
            peer_cats=chain.cats,
            fabric_index=f.fabric_index,
            peer_mrp_params=s2.session_params.mrp_params() if s2.session_params else None,
            local_node_id=f.node_id,
            peer_session_params=s2.session_params,
            resumption_id=tbe.resumption_id,
        )
        self._state = "await_status"
        return [(OPCODE_SIGMA3, sigma3)]

    def _on_status(self, payload: bytes) -> list[tuple[int, bytes]]:
        try:
            report = StatusReport.decode(payload)
        except StatusReportError as exc:
            return self._fail(CASEError(f"malformed StatusReport: {exc}"))
        self.peer_status = report
        self.done = True
        if (
            self._state == "await_status"
            and report.protocol_code == SecureChannelCode.SESSION_ESTABLISHMENT_SUCCESS
            and report.is_success
        ):
            self.session = self._pending
        else:
            self.error = CASEError(f"responder reported {report}", report.protocol_code)
        return []
