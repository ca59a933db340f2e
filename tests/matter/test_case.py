"""CASE responder against the independent in-process initiator: success, every rejection path, fuzzed decoders."""

from __future__ import annotations

import contextlib
import random

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.matter.secure import certs, crypto
from adapters.matter.secure.case import (
    OPCODE_SIGMA1,
    OPCODE_SIGMA2,
    OPCODE_SIGMA3,
    OPCODE_STATUS_REPORT,
    CASEResponder,
    SessionParameters,
    Sigma1,
    Sigma2,
    Sigma3,
    SigmaFormatError,
    TBEData,
)
from adapters.matter.secure.case_initiator import CASEInitiator
from adapters.matter.secure.credentials import OperationalCredentials
from adapters.matter.secure.devca import DevCA
from adapters.matter.transport.status_report import GeneralCode, SecureChannelCode, StatusReport
from gateway.formats import tlv

NOW = 1_750_000_000.0
SERVER_NODE = 0x0000_0000_0000_0ABC
CLIENT_NODE = 0x0000_0000_0001_B669


def clock() -> float:
    return NOW


@pytest.fixture(scope="module")
def ca() -> DevCA:
    return DevCA(fabric_id=0x2906C908D115D362)


@pytest.fixture(scope="module")
def server(ca: DevCA) -> OperationalCredentials:
    return ca.credentials(SERVER_NODE)


@pytest.fixture(scope="module")
def client(ca: DevCA) -> OperationalCredentials:
    return ca.credentials(CLIENT_NODE, cats=(0xFFFF0001,))


def run(responder: CASEResponder, initiator: CASEInitiator) -> list[tuple[str, int, bytes]]:
    """Shuttle messages until both sides are quiet; return the transcript as (sender, opcode, payload)."""
    log: list[tuple[str, int, bytes]] = []
    pending = [("I", *initiator.start())]
    while pending:
        sender, op, payload = pending.pop(0)
        log.append((sender, op, payload))
        target = responder if sender == "I" else initiator
        pending += [("R" if sender == "I" else "I", o, p) for o, p in target.receive(op, payload)]
    return log


def status_of(payload: bytes) -> StatusReport:
    return StatusReport.decode(payload)


def assert_rejected(responder: CASEResponder, log: list[tuple[str, int, bytes]], code: int) -> None:
    assert responder.done and responder.session is None and responder.error is not None
    sent = [(op, p) for s, op, p in log if s == "R"]
    assert sent[-1][0] == OPCODE_STATUS_REPORT
    report = status_of(sent[-1][1])
    assert (report.general_code, report.protocol_id, report.protocol_code) == (GeneralCode.FAILURE, 0, code)


# ----------------------------------------------------------------------------------------------- success


@pytest.mark.parametrize("with_icac", [True, False])
def test_handshake_establishes_matching_sessions(with_icac: bool) -> None:
    ca = DevCA(fabric_id=0x42, with_icac=with_icac)
    srv, cli = ca.credentials(SERVER_NODE), ca.credentials(CLIENT_NODE, cats=(0x00120003,))
    r = CASEResponder([srv], 0x1234, now=clock)
    i = CASEInitiator(cli, SERVER_NODE, 0x4321, now=clock)
    log = run(r, i)
    assert [(s, op) for s, op, _ in log] == [
        ("I", OPCODE_SIGMA1),
        ("R", OPCODE_SIGMA2),
        ("I", OPCODE_SIGMA3),
        ("R", OPCODE_STATUS_REPORT),
    ]
    assert status_of(log[-1][2]) == StatusReport(GeneralCode.SUCCESS, 0, 0)
    rs, is_ = r.session, i.session
    assert rs is not None and is_ is not None and r.error is None and i.error is None
    assert (rs.i2r_key, rs.r2i_key, rs.attestation_challenge) == (
        is_.i2r_key,
        is_.r2i_key,
        is_.attestation_challenge,
    )
    assert len({rs.i2r_key, rs.r2i_key, rs.attestation_challenge}) == 3
    assert (rs.local_session_id, rs.peer_session_id) == (0x1234, 0x4321)
    assert (rs.peer_node_id, rs.peer_cats, rs.fabric_index, rs.local_node_id) == (
        CLIENT_NODE,
        (0x00120003,),
        1,
        SERVER_NODE,
    )
    assert rs.peer_mrp_params == {
        "idle_retrans_ms": 500,
        "active_retrans_ms": 300,
        "active_threshold_ms": 4000,
    }
    assert is_.peer_node_id == SERVER_NODE and is_.resumption_id == rs.resumption_id


def test_handshake_is_deterministic_under_injected_randomness(
    server: OperationalCredentials, client: OperationalCredentials
) -> None:
    def sigma2_fields() -> tuple[bytes, bytes, bytes]:
        r = CASEResponder([server], 7, now=clock, random_bytes=random.Random(1).randbytes)
        i = CASEInitiator(client, SERVER_NODE, 9, now=clock, random_bytes=random.Random(2).randbytes)
        log = run(r, i)
        assert r.session is not None
        s2 = Sigma2.decode(log[1][2])
        return s2.responder_random, s2.responder_eph_pub_key, r.session.resumption_id or b""

    assert sigma2_fields() == sigma2_fields()


def test_matches_the_right_fabric_among_several(ca: DevCA, server: OperationalCredentials) -> None:
    other = DevCA(fabric_id=0x99)
    srv2 = other.credentials(0x77, fabric_index=2)
    cli2 = other.credentials(0x88)
    r = CASEResponder([server, srv2], 5, now=clock)
    run(r, CASEInitiator(cli2, 0x77, 6, now=clock))
    assert r.session is not None and r.session.fabric_index == 2 and r.session.local_node_id == 0x77
    assert r.fabric is srv2


def test_resumption_request_is_declined_with_full_sigma2(
    server: OperationalCredentials, client: OperationalCredentials
) -> None:
    r = CASEResponder([server], 5, now=clock)
    i = CASEInitiator(client, SERVER_NODE, 6, now=clock, resumption=(bytes(16), bytes(16)))
    log = run(r, i)
    assert Sigma1.decode(log[0][2]).resumption_id == bytes(16)
    assert log[1][1] == OPCODE_SIGMA2 and r.session is not None and i.session is not None


def test_sigma1_without_session_parameters(
    server: OperationalCredentials, client: OperationalCredentials
) -> None:
    r = CASEResponder([server], 5, now=clock)
    run(r, CASEInitiator(client, SERVER_NODE, 6, now=clock, session_params=None))
    assert r.session is not None and r.session.peer_mrp_params is None


# ----------------------------------------------------------------------------------------------- rejections


def test_unknown_fabric_gets_no_shared_trust_roots(server: OperationalCredentials) -> None:
    stranger = DevCA(fabric_id=0x2906C908D115D362).credentials(CLIENT_NODE)
    r = CASEResponder([server], 5, now=clock)
    i = CASEInitiator(stranger, SERVER_NODE, 6, now=clock)
    assert_rejected(r, run(r, i), SecureChannelCode.NO_SHARED_TRUST_ROOTS)
    assert i.done and i.session is None


def test_wrong_node_id_or_ipk_gets_no_shared_trust_roots(
    ca: DevCA, server: OperationalCredentials, client: OperationalCredentials
) -> None:
    r = CASEResponder([server], 5, now=clock)
    assert_rejected(
        r,
        run(r, CASEInitiator(client, SERVER_NODE + 1, 6, now=clock)),
        SecureChannelCode.NO_SHARED_TRUST_ROOTS,
    )
    other_ipk = ca.credentials(CLIENT_NODE)
    other_ipk.ipk_epoch_key = b"another ipk 0002"
    r = CASEResponder([server], 5, now=clock)
    assert_rejected(
        r,
        run(r, CASEInitiator(other_ipk, SERVER_NODE, 6, now=clock)),
        SecureChannelCode.NO_SHARED_TRUST_ROOTS,
    )


def test_initiator_noc_from_foreign_ca_is_invalid_parameter(server: OperationalCredentials) -> None:
    # The attacker knows our root key, fabric id and IPK (so Sigma1 matches) but its NOC is from another CA.
    foreign = DevCA(fabric_id=server.fabric_id)
    key = ec.generate_private_key(ec.SECP256R1())
    forged = OperationalCredentials(
        fabric_index=1,
        fabric_id=server.fabric_id,
        node_id=CLIENT_NODE,
        vendor_id=0xFFF1,
        private_key=key,
        noc=foreign.issue_noc(crypto.public_key_bytes(key), CLIENT_NODE),
        icac=foreign.icac,
        rcac=server.rcac,
    )
    r = CASEResponder([server], 5, now=clock)
    log = run(r, CASEInitiator(forged, SERVER_NODE, 6, now=clock))
    assert_rejected(r, log, SecureChannelCode.INVALID_PARAMETER)
    assert "CertificateChainError" in str(r.error)


def test_expired_initiator_noc_is_invalid_parameter(ca: DevCA, server: OperationalCredentials) -> None:
    expired = ca.credentials(CLIENT_NODE, not_before=1, not_after=10_000)
    r = CASEResponder([server], 5, now=clock)
    assert_rejected(
        r,
        run(r, CASEInitiator(expired, SERVER_NODE, 6, now=lambda: 946_684_800 + 5_000)),
        SecureChannelCode.INVALID_PARAMETER,
    )
    assert "CertificateValidityError" in str(r.error)


def test_bad_sigma3_signature_is_invalid_parameter(ca: DevCA, server: OperationalCredentials) -> None:
    liar = ca.credentials(CLIENT_NODE)
    liar.private_key = ec.generate_private_key(ec.SECP256R1())  # signs with a key its NOC doesn't certify
    r = CASEResponder([server], 5, now=clock)
    assert_rejected(
        r, run(r, CASEInitiator(liar, SERVER_NODE, 6, now=clock)), SecureChannelCode.INVALID_PARAMETER
    )
    assert "signature" in str(r.error)


def test_tampered_sigma3_is_invalid_parameter(
    server: OperationalCredentials, client: OperationalCredentials
) -> None:
    r = CASEResponder([server], 5, now=clock)
    i = CASEInitiator(client, SERVER_NODE, 6, now=clock)
    ((op2, sigma2),) = r.receive(*i.start())
    ((op3, sigma3),) = i.receive(op2, sigma2)
    enc = bytearray(Sigma3.decode(sigma3).encrypted3)
    enc[3] ^= 0x40
    out = r.receive(op3, Sigma3(bytes(enc)).encode())
    assert out[0][0] == OPCODE_STATUS_REPORT
    assert status_of(out[0][1]).protocol_code == SecureChannelCode.INVALID_PARAMETER
    assert r.done and r.session is None and "authenticate" in str(r.error)
    assert r.receive(op3, sigma3) == []  # finished: the genuine Sigma3 no longer helps


def test_out_of_order_and_malformed_messages(
    server: OperationalCredentials, client: OperationalCredentials
) -> None:
    r = CASEResponder([server], 5, now=clock)
    out = r.receive(OPCODE_SIGMA3, Sigma3(bytes(40)).encode())
    assert status_of(out[0][1]).protocol_code == SecureChannelCode.INVALID_PARAMETER and r.done
    r = CASEResponder([server], 5, now=clock)
    out = r.receive(OPCODE_SIGMA1, b"\x15\x18")
    assert status_of(out[0][1]).protocol_code == SecureChannelCode.INVALID_PARAMETER and "field 1" in str(
        r.error
    )
    # zero initiator session id
    i = CASEInitiator(client, SERVER_NODE, 0, now=clock)
    r = CASEResponder([server], 5, now=clock)
    out = r.receive(*i.start())
    assert status_of(out[0][1]).protocol_code == SecureChannelCode.INVALID_PARAMETER
    # off-curve ephemeral key in an otherwise valid Sigma1
    i = CASEInitiator(client, SERVER_NODE, 6, now=clock)
    s1 = Sigma1.decode(i.start()[1])
    bad = Sigma1(s1.initiator_random, 6, s1.destination_id, b"\x04" + bytes(64), s1.session_params)
    r = CASEResponder([server], 5, now=clock)
    out = r.receive(OPCODE_SIGMA1, bad.encode())
    assert status_of(out[0][1]).protocol_code == SecureChannelCode.INVALID_PARAMETER and r.session is None


def test_initiator_status_report_ends_handshake_silently(
    ca: DevCA, server: OperationalCredentials, client: OperationalCredentials
) -> None:
    # The initiator expects another node id behind this destination (its check of Sigma2 fails).
    r = CASEResponder([server], 5, now=clock)
    i = CASEInitiator(client, SERVER_NODE, 6, now=clock)
    ((op2, sigma2),) = r.receive(*i.start())
    i.peer_node_id = SERVER_NODE + 1
    ((op, report),) = i.receive(op2, sigma2)
    assert op == OPCODE_STATUS_REPORT
    assert r.receive(op, report) == []
    assert r.done and r.session is None and r.peer_status is not None
    assert r.peer_status.protocol_code == SecureChannelCode.INVALID_PARAMETER


def test_session_parameters_roundtrip_and_unknown_tags() -> None:
    p = SessionParameters(
        idle_interval_ms=5000,
        active_interval_ms=300,
        active_threshold_ms=4000,
        data_model_revision=17,
        interaction_model_revision=11,
        specification_version=0x01030000,
        max_paths_per_invoke=1,
    )
    s = p.to_tlv()
    s[200] = tlv.UInt(1)  # a future parameter
    assert SessionParameters.from_tlv(s, "x") == p
    with pytest.raises(SigmaFormatError):
        SessionParameters.from_tlv(tlv.Struct({1: -1}), "x")


# ----------------------------------------------------------------------------------------------- fuzz


DECODERS = [
    Sigma1.decode,
    Sigma2.decode,
    Sigma3.decode,
    lambda b: TBEData.decode(b, "TBEData2", with_resumption=True),
    lambda b: TBEData.decode(b, "TBEData3", with_resumption=False),
]


@given(st.binary(max_size=200), st.sampled_from(range(len(DECODERS))))
def test_decoders_raise_only_sigma_format_error_on_random_bytes(blob: bytes, which: int) -> None:
    with contextlib.suppress(SigmaFormatError):
        DECODERS[which](blob)


def _mutate(data: st.DataObject, msg: bytes) -> bytes:
    buf = bytearray(msg)
    for _ in range(data.draw(st.integers(1, 3))):
        pos = data.draw(st.integers(0, max(0, len(buf) - 1)))
        kind = data.draw(st.sampled_from(["flip", "delete", "insert", "truncate"]))
        if not buf:
            break
        if kind == "flip":
            buf[pos] ^= data.draw(st.integers(1, 255))
        elif kind == "delete":
            del buf[pos]
        elif kind == "insert":
            buf.insert(pos, data.draw(st.integers(0, 255)))
        else:
            del buf[pos:]
    return bytes(buf)


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(data=st.data())
def test_responder_survives_mutated_sigma1_and_sigma3(
    data: st.DataObject, server: OperationalCredentials, client: OperationalCredentials
) -> None:
    i = CASEInitiator(client, SERVER_NODE, 6, now=clock)
    op1, sigma1 = i.start()
    r = CASEResponder([server], 5, now=clock)
    mutated1 = _mutate(data, sigma1)
    out = r.receive(op1, mutated1)
    assert len(out) == 1
    if out[0][0] == OPCODE_STATUS_REPORT:
        assert r.done and r.session is None
        return
    assert out[0][0] == OPCODE_SIGMA2
    sigma3_out = i.receive(*out[0])
    if sigma3_out[0][0] != OPCODE_SIGMA3:
        return  # mutated Sigma1 changed the transcript: the initiator gave up
    final = r.receive(OPCODE_SIGMA3, _mutate(data, sigma3_out[0][1]))
    assert len(final) == 1 and final[0][0] == OPCODE_STATUS_REPORT
    report = status_of(final[0][1])
    assert (report.protocol_code == 0) == (r.session is not None)


def test_decode_rejects_wrong_types_with_field_names() -> None:
    with pytest.raises(SigmaFormatError, match="Sigma1: field 2 must be an unsigned 16-bit"):
        Sigma1.decode(tlv.encode(tlv.Struct({1: bytes(32), 2: tlv.UInt(70000), 3: bytes(32), 4: bytes(65)})))
    with pytest.raises(SigmaFormatError, match="resumptionID and initiatorResumeMIC"):
        Sigma1.decode(
            tlv.encode(tlv.Struct({1: bytes(32), 2: tlv.UInt(1), 3: bytes(32), 4: bytes(65), 6: bytes(16)}))
        )
    with pytest.raises(SigmaFormatError, match="TBEData3: field 3 must be 64 bytes"):
        TBEData.decode(tlv.encode(tlv.Struct({1: b"x", 3: bytes(63)})), "TBEData3", with_resumption=False)
    with pytest.raises(SigmaFormatError, match="longer than"):
        TBEData.decode(
            tlv.encode(tlv.Struct({1: bytes(certs.MAX_CERT_TLV_LENGTH + 1), 3: bytes(64)})),
            "TBEData3",
            with_resumption=False,
        )
