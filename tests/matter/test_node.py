"""ProviderNode end to end on loopback UDP with an injected ManualClock.

CASE, an IM invoke and BDX downloads go through the node's real UDP socket; MRP behaviour is checked through it:
retransmission on the schedule the peer's CASE session parameters imply, duplicate suppression, refusal of IM/BDX
on unsecured sessions, silent drops (bad MIC, unknown session id), CloseSession, and the timer loop's guards
against deadlines that nothing consumes.

The peer is built from the stack's own sans-I/O parts: M2's CASEInitiator with DevCA certificates, M1's message
codecs, session table and exchange manager (a SecureSession with I2R/R2I swapped is the initiator's view of the
session), and M3's BdxReceiver. Time moves only when a test advances the clock; waiting is on loopback I/O with
bounded timeouts, and "nothing was sent" is established by a round trip through the node (`Peer.settle`).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pytest

import adapters.matter.node as node_module
from adapters.matter.bdx.messages import BDX_PROTOCOL_ID, BdxStatus, ReceiveInit, TransferControl
from adapters.matter.bdx.receiver import BdxReceiver
from adapters.matter.bdx.sender import BdxSender
from adapters.matter.discovery.dnssd import OperationalName
from adapters.matter.interaction.acl import AccessControl
from adapters.matter.interaction.clusters import (
    OtaStatus,
    QueryImage,
    build_provider_node,
)
from adapters.matter.interaction.messages import (
    IM_PROTOCOL_ID,
    CommandData,
    CommandPath,
    InvokeRequest,
    InvokeResponse,
    Opcode,
)
from adapters.matter.interaction.server import IMServer
from adapters.matter.node import TIMER_STALL_BACKOFF_MS, ProviderNode
from adapters.matter.secure.case import OPCODE_SIGMA2, SessionParameters
from adapters.matter.secure.case_initiator import CASEInitiator
from adapters.matter.secure.credentials import OperationalCredentials
from adapters.matter.secure.devca import DevCA
from adapters.matter.transport.exchange import (
    STALE_DEADLINE_RETRY_MS,
    Event,
    Exchange,
    ExchangeClosed,
    ExchangeManager,
    Send,
)
from adapters.matter.transport.message import (
    MessageError,
    MessageHeader,
    ProtocolHeader,
    ProtocolId,
    SecureChannelOpcode,
    decode_message_header,
    decode_protocol_header,
)
from adapters.matter.transport.mrp import ReliabilityTable
from adapters.matter.transport.session import (
    InboundMessage,
    MessageCounter,
    SecureSession,
    SessionError,
    SessionTable,
)
from adapters.matter.transport.status_report import GeneralCode, SecureChannelCode, StatusReport
from adapters.matter.transport.udp import UdpTransport, open_udp
from gateway.clock import ManualClock
from tests.matter.support import BdxServer, ProvisionalProvider

NODE_ID = 0x0000_0000_0A11_0001
REQUESTOR_ID = 0x0000_0000_0000_4242
IO_TIMEOUT_S = 10.0
BLOCK = 1024
MiB = 1 << 20

# what the requestor tells the node in Sigma1 (deliberately unlike the node's own defaults of 500/300/4000)
PEER_PARAMS = SessionParameters(idle_interval_ms=700, active_interval_ms=200, active_threshold_ms=1000)

QUERY_IMAGE = InvokeRequest(
    [CommandData(CommandPath(0, 0x0029, 0), QueryImage(0xFFF1, 0x8000, 1, (0,)).to_fields())]
).encode()


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


HOSTS = ["127.0.0.1", pytest.param("::1", marks=pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 lo"))]


# ---------------------------------------------------------------------------------------------- image side
class FileReader:
    """An ImageReader over a file with pread: the image never sits in memory whole. Counts what is read."""

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_RDONLY)
        self.size = os.fstat(self._fd).st_size
        self.reads = 0
        self.bytes_read = 0
        self.max_read = 0

    def read(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0 or offset > self.size:
            raise ValueError(f"read of {length} at {offset} outside a {self.size}-byte image")
        data = os.pread(self._fd, length, offset)
        self.reads += 1
        self.bytes_read += len(data)
        self.max_read = max(self.max_read, length)
        return data

    def close(self) -> None:
        os.close(self._fd)


class Observer:
    """TransferObserver recording what the node's senders report."""

    def __init__(self) -> None:
        self.completed: list[BdxSender] = []
        self.failures: list[tuple[BdxSender, BdxStatus, str]] = []
        self.progress_bytes = 0
        self._active: set[int] = set()  # transfers that sent a block and have not completed
        self.max_active = 0

    def progress(self, sender: BdxSender, offset: int, nbytes: int) -> None:
        self.progress_bytes += nbytes
        self._active.add(id(sender))
        self.max_active = max(self.max_active, len(self._active))

    def complete(self, sender: BdxSender) -> None:
        self.completed.append(sender)
        self._active.discard(id(sender))

    def failed(self, sender: BdxSender, code: BdxStatus, reason: str) -> None:
        self.failures.append((sender, code, reason))


# ---------------------------------------------------------------------------------------------- the peer
class Collect:
    """Initiator-side handler of a one-request exchange: keeps the response and is done."""

    def __init__(self) -> None:
        self.got: list[tuple[int, int, bytes]] = []
        self.done = False

    def receive(self, opcode: int, payload: bytes, protocol_id: int) -> list[tuple[int, bytes]]:
        self.got.append((protocol_id, opcode, payload))
        self.done = True
        return []


class Peer:
    """A requestor: CASE initiator, then either raw secure messages (MRP tests) or exchanges driven by its own
    ExchangeManager (`auto`, for IM and BDX flows)."""

    PING_EXCHANGE = 0xFEED

    def __init__(self, creds: OperationalCredentials, clock: ManualClock, host: str, node_port: int) -> None:
        self.creds = creds
        self.clock = clock
        self.host = host
        self.node_addr = (host, node_port)
        self.inbox: asyncio.Queue[bytes] = asyncio.Queue()
        self.table = SessionTable()
        self.exchanges = ExchangeManager(ReliabilityTable(lambda: 0.5))
        self.closed: dict[Exchange, str] = {}
        self.changed = asyncio.Event()
        self.session: SecureSession | None = None
        self.auto = False
        self.unsecured_counter = MessageCounter(wraps=True)
        self.ephemeral_node_id = secrets.randbits(63) | 1
        self.transport: UdpTransport | None = None

    async def open(self) -> Peer:
        self.transport = await open_udp(self._on_datagram, 0, self.host)
        return self

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def now_ms(self) -> int:
        return round(self.clock.monotonic() * 1000)

    # ----- datagrams
    def _on_datagram(self, data: bytes, addr: Any) -> None:
        if self.auto:
            try:
                msg = self.table.open(data, addr, self.now_ms())
            except (MessageError, SessionError):
                self.inbox.put_nowait(data)  # e.g. an unsecured ack for a ping
            else:
                self._process(self.exchanges.on_message(msg, self.now_ms()))
        else:
            self.inbox.put_nowait(data)
        self.changed.set()

    def _process(self, events: list[Event]) -> None:
        for ev in events:
            if isinstance(ev, Send):
                self.send_raw(ev.datagram)
            elif isinstance(ev, ExchangeClosed):
                self.closed[ev.exchange] = ev.reason

    def send_raw(self, datagram: bytes) -> None:
        assert self.transport is not None
        self.transport.send(datagram, self.node_addr)

    async def get(self) -> bytes:
        return await asyncio.wait_for(self.inbox.get(), IO_TIMEOUT_S)

    # ----- unsecured (CASE, pings)
    def send_unsecured(
        self,
        protocol: int,
        opcode: int,
        payload: bytes,
        exchange_id: int,
        *,
        ack: int | None = None,
        reliable: bool = True,
    ) -> int:
        ctr = self.unsecured_counter.next()
        h = MessageHeader(session_id=0, message_counter=ctr, source_node_id=self.ephemeral_node_id)
        p = ProtocolHeader(opcode, exchange_id, protocol, initiator=True, reliable=reliable, ack_counter=ack)
        self.send_raw(h.encode() + p.encode() + payload)
        return ctr

    @staticmethod
    def parse_unsecured(data: bytes) -> tuple[MessageHeader, ProtocolHeader, bytes] | None:
        h, off = decode_message_header(data)
        if h.is_secure:
            return None
        p, poff = decode_protocol_header(data, off)
        return h, p, data[poff:]

    async def recv_unsecured(self) -> tuple[MessageHeader, ProtocolHeader, bytes]:
        while True:
            got = self.parse_unsecured(await self.get())
            if got is not None:
                return got

    async def case(
        self, peer_node_id: int = NODE_ID, params: SessionParameters = PEER_PARAMS
    ) -> SecureSession | None:
        """Run CASE as initiator over the node's unsecured session; the session, or None if the node refused."""
        sid = 1 + secrets.randbelow(0xFFFE)
        init = CASEInitiator(self.creds, peer_node_id, sid, now=self.clock.now, session_params=params)
        eid = secrets.randbelow(0x10000)
        op, payload = init.start()
        c1 = self.send_unsecured(ProtocolId.SECURE_CHANNEL, op, payload, eid)
        h, p, body = await self.recv_unsecured()
        assert p.ack_counter == c1 and p.exchange_id == eid and not p.initiator
        if p.opcode != OPCODE_SIGMA2:  # refused with a StatusReport
            init.receive(p.opcode, body)
            self.send_unsecured(
                0, SecureChannelOpcode.STANDALONE_ACK, b"", eid, ack=h.message_counter, reliable=False
            )
            assert init.done and init.session is None
            return None
        ((op3, sigma3),) = init.receive(p.opcode, body)
        c3 = self.send_unsecured(ProtocolId.SECURE_CHANNEL, op3, sigma3, eid, ack=h.message_counter)
        h, p, body = await self.recv_unsecured()
        assert p.ack_counter == c3 and p.opcode == SecureChannelOpcode.STATUS_REPORT
        init.receive(p.opcode, body)
        self.send_unsecured(
            0, SecureChannelOpcode.STANDALONE_ACK, b"", eid, ack=h.message_counter, reliable=False
        )
        est = init.session
        assert est is not None, init.error
        # SecureSession is written from the responder's side (decrypt I2R, encrypt R2I): swap for the initiator
        self.session = SecureSession(
            peer_address=self.node_addr,
            local_session_id=est.local_session_id,
            peer_session_id=est.peer_session_id,
            local_node_id=self.creds.node_id,
            peer_node_id=est.peer_node_id,
            fabric_index=est.fabric_index,
            i2r_key=est.r2i_key,
            r2i_key=est.i2r_key,
            attestation_challenge=est.attestation_challenge,
        )
        self.table.add_secure(self.session)
        return self.session

    # ----- raw secure messages
    def encode_secure(
        self,
        protocol: int,
        opcode: int,
        payload: bytes,
        exchange_id: int,
        *,
        ack: int | None = None,
        reliable: bool = True,
        initiator: bool = True,
    ) -> tuple[bytes, int]:
        assert self.session is not None
        ph = ProtocolHeader(
            opcode, exchange_id, protocol, initiator=initiator, reliable=reliable, ack_counter=ack
        )
        return self.session.encode(ph, payload)

    def send_secure(
        self, protocol: int, opcode: int, payload: bytes, exchange_id: int, **kw: Any
    ) -> tuple[bytes, int]:
        datagram, ctr = self.encode_secure(protocol, opcode, payload, exchange_id, **kw)
        self.send_raw(datagram)
        return datagram, ctr

    def open_secure(self, data: bytes) -> InboundMessage:
        return self.table.open(data, self.node_addr, self.now_ms())

    async def recv_secure(self) -> InboundMessage:
        return self.open_secure(await self.get())

    async def settle(self) -> list[bytes]:
        """Let the node's timer run, then round-trip a ping through it (an IM message on the unsecured session,
        which the node refuses with a bare ack); return every datagram that arrived before that ack."""
        for _ in range(20):
            await asyncio.sleep(0)
        ctr = self.send_unsecured(IM_PROTOCOL_ID, Opcode.INVOKE_REQUEST, QUERY_IMAGE, self.PING_EXCHANGE)
        before: list[bytes] = []
        while True:
            data = await self.get()
            got = self.parse_unsecured(data)
            if got is not None:
                _, p, _ = got
                if p.exchange_id == self.PING_EXCHANGE and p.ack_counter == ctr:
                    assert p.opcode == SecureChannelOpcode.STANDALONE_ACK and not p.reliable
                    return before
            before.append(data)

    # ----- exchanges driven by the peer's exchange manager
    async def run(self, protocol: int, handler: Any, opcode: int, payload: bytes) -> Exchange:
        """Initiate an exchange and wait (bounded) until it closes."""
        assert self.session is not None
        self.auto = True
        ex, events = self.exchanges.initiate(self.session, protocol, handler, opcode, payload, self.now_ms())
        self._process(events)
        await self.until(lambda: ex in self.closed)
        return ex

    async def until(self, cond: Callable[[], bool], timeout: float = IO_TIMEOUT_S) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while not cond():
            self.changed.clear()
            remaining = end - loop.time()
            if remaining <= 0:
                raise AssertionError("condition not reached in time")
            with suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), remaining)

    async def download(self, receiver: BdxReceiver) -> Exchange:
        ((pid, op, payload),) = receiver.start()
        return await self.run(pid, receiver, op, payload)


# ---------------------------------------------------------------------------------------------- the world
@dataclass
class World:
    ca: DevCA
    clock: ManualClock
    node: ProviderNode
    provider: ProvisionalProvider
    bdx: BdxServer
    observer: Observer
    images: dict[bytes, FileReader]
    resolved: list[tuple[bytes, Any]]
    host: str
    peers: list[Peer] = field(default_factory=list)

    async def peer(
        self,
        node_id: int = REQUESTOR_ID,
        *,
        ca: DevCA | None = None,
        fabric_index: int = 1,
        connect: bool = True,
    ) -> Peer:
        creds = (ca or self.ca).credentials(node_id, fabric_index)
        p = await Peer(creds, self.clock, self.host, self.node.port).open()
        self.peers.append(p)
        if connect:
            assert await p.case() is not None
        return p


def write_image(path: Path, size: int) -> bytes:
    data = os.urandom(size)
    path.write_bytes(data)
    return data


@asynccontextmanager
async def make_world(
    tmp_path: Path,
    host: str = "127.0.0.1",
    *,
    bdx_factory: Any = None,
    images: dict[bytes, int] | None = None,
    **node_kw: Any,
) -> AsyncIterator[World]:
    ca = DevCA(fabric_id=1)
    clock = ManualClock()
    provider = ProvisionalProvider()
    registry, _ = build_provider_node(delegate=provider, acl=AccessControl.default([1, 2]))
    readers = {name: FileReader(_img(tmp_path, name, size)) for name, size in (images or {}).items()}
    resolved: list[tuple[bytes, Any]] = []

    def resolve(designator: bytes, ctx: Any) -> FileReader | None:
        resolved.append((designator, ctx))
        return readers.get(designator)

    observer = Observer()
    bdx = BdxServer(resolve, now=clock.monotonic, observer=observer, max_transfers=16)
    node = ProviderNode(
        [ca.credentials(NODE_ID, 1)],
        im_factory=IMServer(registry, now=clock.monotonic),
        bdx_factory=bdx_factory or bdx,
        port=0,
        host=host,
        advertise=False,
        clock=clock,
        **node_kw,
    )
    world = World(ca, clock, node, provider, bdx, observer, readers, resolved, host)
    await node.start()
    try:
        yield world
    finally:
        for p in world.peers:
            p.close()
        await node.stop()
        for r in readers.values():
            r.close()


def _img(tmp_path: Path, name: bytes, size: int) -> Path:
    path = tmp_path / name.decode()
    write_image(path, size)
    return path


async def advance_to(clock: ManualClock, t_ms: float) -> None:
    await clock.advance(t_ms / 1000 - clock.monotonic())


def im_exchanges(node: ProviderNode) -> list[Exchange]:
    return [e for e in node.exchanges.exchanges.values() if e.protocol_id == IM_PROTOCOL_ID]


# ---------------------------------------------------------------------------------------------- CASE + IM + BDX
@pytest.mark.parametrize("host", HOSTS)
async def test_case_invoke_and_download_through_the_node(tmp_path: Path, host: str) -> None:
    async with make_world(tmp_path, host, images={b"img-small": 5000}) as w:
        peer = await w.peer()
        (s,) = w.node.sessions.secure.values()
        assert (s.peer_node_id, s.local_node_id, s.fabric_index) == (REQUESTOR_ID, NODE_ID, 1)
        assert (s.peer_mrp.idle_retrans_ms, s.peer_mrp.active_retrans_ms, s.peer_mrp.active_threshold_ms) == (
            700,
            200,
            1000,
        )  # the requestor's Sigma1 session parameters drive our retransmissions
        assert peer.session is not None and s.local_session_id == peer.session.peer_session_id

        handler = Collect()
        ex = await peer.run(IM_PROTOCOL_ID, handler, Opcode.INVOKE_REQUEST, QUERY_IMAGE)
        assert peer.closed[ex] == "done"
        ((pid, op, payload),) = handler.got
        assert (pid, op) == (IM_PROTOCOL_ID, Opcode.INVOKE_RESPONSE)
        (item,) = InvokeResponse.decode(payload).invoke_responses
        assert isinstance(item, CommandData) and item.path == CommandPath(0, 0x0029, 1)  # QueryImageResponse
        assert item.fields is not None and item.fields[0] == OtaStatus.NOT_AVAILABLE
        assert [(q.vendor_id, q.product_id) for q in w.provider.queries] == [(0xFFF1, 0x8000)]

        receiver = BdxReceiver(b"img-small", now=w.clock.monotonic, max_block_size=BLOCK)
        await peer.download(receiver)
        assert receiver.state.value == "done", receiver.reason
        assert bytes(receiver.data) == (tmp_path / "img-small").read_bytes()
        (designator, ctx) = w.resolved[-1]
        assert designator == b"img-small" and ctx.is_secure and ctx.peer_node_id == REQUESTOR_ID
        await peer.until(lambda: not w.node.exchanges.exchanges)  # every node exchange closed once acked


async def test_full_1mib_transfer(tmp_path: Path) -> None:
    async with make_world(tmp_path, images={b"fw-1mib": MiB}) as w:
        peer = await w.peer()
        digest = hashlib.sha256()
        offsets: list[int] = []

        def sink(offset: int, data: bytes) -> None:
            offsets.append(offset)
            digest.update(data)

        receiver = BdxReceiver(b"fw-1mib", now=w.clock.monotonic, max_block_size=BLOCK, sink=sink)
        await peer.download(receiver)
        assert receiver.state.value == "done", receiver.reason
        assert digest.digest() == hashlib.sha256((tmp_path / "fw-1mib").read_bytes()).digest()
        assert offsets == list(range(0, MiB, BLOCK))
        (sender,) = w.observer.completed
        assert (sender.blocks_sent, sender.bytes_sent, w.observer.progress_bytes) == (MiB // BLOCK, MiB, MiB)
        assert w.bdx.slots.in_use == 0 and not w.observer.failures


@pytest.mark.parametrize(("start", "max_length"), [(300_001, None), (MiB - 1, None), (700_000, 50_000)])
async def test_resume_with_start_offset(tmp_path: Path, start: int, max_length: int | None) -> None:
    async with make_world(tmp_path, images={b"fw": MiB}) as w:
        peer = await w.peer()
        receiver = BdxReceiver(
            b"fw", now=w.clock.monotonic, max_block_size=BLOCK, start_offset=start, max_length=max_length
        )
        await peer.download(receiver)
        assert receiver.state.value == "done", receiver.reason
        image = (tmp_path / "fw").read_bytes()
        end = MiB if max_length is None else start + max_length
        assert bytes(receiver.data) == image[start:end]
        (sender,) = w.observer.completed
        assert (sender.start_offset, sender.bytes_sent) == (start, end - start)
        assert w.images[b"fw"].bytes_read == end - start  # nothing before the resume point was read again


def _hashing_sink(h: Any) -> Callable[[int, bytes], None]:
    return lambda offset, data: h.update(data)


async def test_ten_concurrent_transfers_share_one_reader(tmp_path: Path) -> None:
    n = 10
    size = 256 * 1024  # per transfer: 2560 blocks interleaved over ten sessions
    async with make_world(tmp_path, images={b"shared": size}) as w:
        peers = [await w.peer(REQUESTOR_ID + i) for i in range(n)]
        digests = [hashlib.sha256() for _ in range(n)]
        receivers = [
            BdxReceiver(b"shared", now=w.clock.monotonic, max_block_size=BLOCK, sink=_hashing_sink(h))
            for h in digests
        ]
        await asyncio.gather(*(p.download(r) for p, r in zip(peers, receivers, strict=True)))
        want = hashlib.sha256((tmp_path / "shared").read_bytes()).digest()
        assert all(r.state.value == "done" for r in receivers), [r.reason for r in receivers]
        assert all(h.digest() == want for h in digests)
        assert len(w.observer.completed) == n and w.bdx.slots.in_use == 0
        assert w.observer.max_active == n  # they really ran at the same time, interleaved on one node
        # every transfer resolved to the one shared (file-backed) reader and was served from it block by block:
        # no transfer read the image whole (a copy), none read a byte twice
        reader = w.images[b"shared"]
        assert [d for d, _ in w.resolved] == [b"shared"] * n
        assert reader.max_read == BLOCK
        assert (reader.reads, reader.bytes_read) == (n * size // BLOCK, n * size)


async def test_unknown_designator_gets_file_designator_unknown(tmp_path: Path) -> None:
    async with make_world(tmp_path, images={b"known": 4096}) as w:
        peer = await w.peer()
        receiver = BdxReceiver(b"../../etc/passwd", now=w.clock.monotonic, max_block_size=BLOCK)
        await peer.download(receiver)
        assert receiver.failed and receiver.status == BdxStatus.FILE_DESIGNATOR_UNKNOWN
        (sender, code, _reason) = w.observer.failures[0]
        assert code == BdxStatus.FILE_DESIGNATOR_UNKNOWN and sender.bytes_sent == 0
        assert w.images[b"known"].reads == 0 and w.bdx.slots.in_use == 0
        await peer.until(lambda: not w.node.exchanges.exchanges)


# ---------------------------------------------------------------------------------------------- MRP via the node
async def test_retransmission_follows_spec_backoff_with_peer_session_params(tmp_path: Path) -> None:
    # jitter draw pinned to 0.5: t = I * 1.1 * 1.6^max(0, n-1) * 1.125, I = peer SAI (200 ms) while the peer is
    # active (heard from within its SAT of 1000 ms), its SII (700 ms) after that
    expected = [
        (247, 2),  # 200 * 1.1 * 1.125
        (494, 3),  # + 247
        (890, 4),  # + 200 * 1.1 * 1.6 * 1.125 = 396
        (1523, 5),  # + 200 * 1.1 * 1.6^2 * 1.125 = 633.6
    ]
    give_up = 1523 + 3548  # idle by now: 700 * 1.1 * 1.6^3 * 1.125 = 3548.2, then no 6th transmission
    async with make_world(tmp_path, mrp_jitter=lambda: 0.5) as w:
        peer = await w.peer()
        t0 = w.clock.monotonic() * 1000
        peer.send_secure(IM_PROTOCOL_ID, Opcode.INVOKE_REQUEST, QUERY_IMAGE, 0x100)
        first = await peer.get()
        msg = peer.open_secure(first)
        assert msg.protocol.opcode == Opcode.INVOKE_RESPONSE and msg.protocol.reliable
        for at, transmission in expected:
            await advance_to(w.clock, t0 + at - 1)
            assert await peer.settle() == [], f"transmission {transmission} came before {at} ms"
            await advance_to(w.clock, t0 + at + 0.4)
            got = await peer.settle()
            assert got == [first], (
                f"expected transmission {transmission} at {at} ms, got {len(got)} datagrams"
            )
        assert im_exchanges(w.node)
        await advance_to(w.clock, t0 + give_up - 1)
        assert await peer.settle() == []
        await advance_to(w.clock, t0 + give_up + 0.4)
        assert await peer.settle() == [] and not im_exchanges(w.node)  # gave up after 5 transmissions
        await w.clock.advance(30)
        assert await peer.settle() == []
        assert len(w.node.sessions.secure) == 1  # the exchange died, not the session


async def test_duplicate_is_acked_again_but_not_redelivered(tmp_path: Path) -> None:
    async with make_world(tmp_path) as w:
        peer = await w.peer()
        request, ctr = peer.send_secure(IM_PROTOCOL_ID, Opcode.INVOKE_REQUEST, QUERY_IMAGE, 0x200)
        response = await peer.recv_secure()
        assert response.protocol.opcode == Opcode.INVOKE_RESPONSE and response.protocol.ack_counter == ctr
        peer.send_raw(request)  # as if our ack-carrying retransmission logic resent it
        (dup_ack,) = [peer.open_secure(d) for d in await peer.settle()]
        assert dup_ack.protocol.opcode == SecureChannelOpcode.STANDALONE_ACK
        assert (dup_ack.protocol.ack_counter, dup_ack.protocol.exchange_id) == (ctr, 0x200)
        assert len(w.provider.queries) == 1  # delivered once
        # acknowledging the response closes the node's exchange
        peer.send_secure(
            0,
            SecureChannelOpcode.STANDALONE_ACK,
            b"",
            0x200,
            ack=response.header.message_counter,
            reliable=False,
        )
        assert await peer.settle() == [] and not im_exchanges(w.node)


@pytest.mark.parametrize(
    ("protocol", "opcode", "payload"),
    [
        (IM_PROTOCOL_ID, Opcode.INVOKE_REQUEST, QUERY_IMAGE),
        (
            BDX_PROTOCOL_ID,
            ReceiveInit.OPCODE,
            ReceiveInit(0, TransferControl.RECEIVER_DRIVE, BLOCK, b"fw", 0, None).encode(),
        ),
    ],
)
async def test_unsecured_im_and_bdx_are_refused(
    tmp_path: Path, protocol: int, opcode: int, payload: bytes
) -> None:
    async with make_world(tmp_path, images={b"fw": 4096}) as w:
        peer = await w.peer(connect=False)
        ctr = peer.send_unsecured(protocol, opcode, payload, 0x300)
        _, p, body = await peer.recv_unsecured()
        # only MRP's ack comes back: no exchange, no handler, no answer
        assert (p.opcode, p.ack_counter, body) == (SecureChannelOpcode.STANDALONE_ACK, ctr, b"")
        assert await peer.settle() == []
        assert not w.provider.queries and not w.resolved and not w.node.exchanges.exchanges


async def test_bad_mic_is_dropped_silently_and_does_not_move_the_window(tmp_path: Path) -> None:
    async with make_world(tmp_path) as w:
        peer = await w.peer()
        good, ctr = peer.encode_secure(IM_PROTOCOL_ID, Opcode.INVOKE_REQUEST, QUERY_IMAGE, 0x400)
        for i in (len(good) - 1, len(good) - 20, 20):  # MIC, ciphertext, AAD (message header: counter byte)
            forged = bytearray(good)
            forged[i] ^= 0x01
            peer.send_raw(bytes(forged))
        assert await peer.settle() == [] and not w.provider.queries
        peer.send_raw(good)  # same counter: still fresh, since nothing unauthenticated touched the window
        response = await peer.recv_secure()
        assert response.protocol.opcode == Opcode.INVOKE_RESPONSE and response.protocol.ack_counter == ctr
        assert len(w.provider.queries) == 1


async def test_unknown_session_id_is_ignored(tmp_path: Path) -> None:
    async with make_world(tmp_path) as w:
        peer = await w.peer()
        assert peer.session is not None
        datagram, _ = peer.encode_secure(IM_PROTOCOL_ID, Opcode.INVOKE_REQUEST, QUERY_IMAGE, 0x500)
        unknown = next(i for i in range(1, 0x10000) if i not in w.node.sessions.secure)
        peer.send_raw(datagram[:1] + unknown.to_bytes(2, "little") + datagram[3:])
        assert await peer.settle() == []
        assert not w.provider.queries and not w.node.exchanges.exchanges


async def test_close_session_drops_the_session_and_aborts_its_transfer(tmp_path: Path) -> None:
    async with make_world(tmp_path, images={b"fw": 64 * BLOCK}) as w:
        peer = await w.peer()
        assert peer.session is not None
        sid = peer.session.peer_session_id
        init = ReceiveInit(0, TransferControl.RECEIVER_DRIVE, BLOCK, b"fw", 0, None).encode()
        peer.send_secure(BDX_PROTOCOL_ID, ReceiveInit.OPCODE, init, 0x600)
        accept = await peer.recv_secure()
        assert accept.protocol.protocol_id == BDX_PROTOCOL_ID and w.bdx.slots.in_use == 1
        close = StatusReport(GeneralCode.SUCCESS, ProtocolId.SECURE_CHANNEL, SecureChannelCode.CLOSE_SESSION)
        peer.send_secure(0, SecureChannelOpcode.STATUS_REPORT, close.encode(), 0x601, reliable=False)
        assert await peer.settle() == []
        assert sid not in w.node.sessions.secure and not w.node.exchanges.exchanges
        # the half-done transfer was told: its slot is free and the failure was reported
        assert w.bdx.slots.in_use == 0
        ((sender, _code, _reason),) = w.observer.failures
        assert sender.designator == b"fw" and sender.failed
        # the old session's keys open nothing any more
        peer.send_secure(IM_PROTOCOL_ID, Opcode.INVOKE_REQUEST, QUERY_IMAGE, 0x602)
        assert await peer.settle() == [] and not w.provider.queries


async def test_stop_sends_close_session_to_every_peer_and_aborts_transfers(tmp_path: Path) -> None:
    async with make_world(tmp_path, images={b"fw": 64 * BLOCK}) as w:
        downloading = await w.peer()
        idle = await w.peer(REQUESTOR_ID + 1)
        init = ReceiveInit(0, TransferControl.RECEIVER_DRIVE, BLOCK, b"fw", 0, None).encode()
        downloading.send_secure(BDX_PROTOCOL_ID, ReceiveInit.OPCODE, init, 0x700)
        accept = await downloading.recv_secure()
        assert accept.protocol.protocol_id == BDX_PROTOCOL_ID and w.bdx.slots.in_use == 1
        await w.node.stop()
        for peer in (downloading, idle):
            msg = await peer.recv_secure()  # the first thing each peer hears after stop() is CloseSession
            ph = msg.protocol
            assert (ph.protocol_id, ph.opcode) == (
                ProtocolId.SECURE_CHANNEL,
                SecureChannelOpcode.STATUS_REPORT,
            )
            assert ph.initiator and not ph.reliable and ph.ack_counter is None
            report = StatusReport.decode(msg.payload)
            assert (report.general_code, report.protocol_id, report.protocol_code) == (
                GeneralCode.SUCCESS,
                ProtocolId.SECURE_CHANNEL,
                SecureChannelCode.CLOSE_SESSION,
            )
            assert peer.inbox.empty()
        assert not w.node.sessions.secure and not w.node.exchanges.exchanges
        # the half-done transfer was aborted: its slot is free and the failure was reported
        assert w.bdx.slots.in_use == 0
        ((sender, _code, _reason),) = w.observer.failures
        assert sender.designator == b"fw"


# ---------------------------------------------------------------------------------------------- timer guards
class StuckHandler:
    """A handler whose deadline stays in the past whatever poll() does (a bug, or a clock other than the node's)."""

    instances: ClassVar[list[StuckHandler]] = []

    def __init__(self, ctx: Any) -> None:
        self.deadline: float | None = 1.0
        self.done = False
        self.polls = 0
        StuckHandler.instances.append(self)

    def receive(self, opcode: int, payload: bytes, protocol_id: int) -> list[tuple[int, bytes]]:
        return []

    def poll(self) -> list[tuple[int, bytes]]:
        self.polls += 1
        if self.polls > 1000:  # without the guard the timer loop would spin here forever: fail, don't hang
            raise RuntimeError("timer loop spinning on a stale deadline")
        return []


async def test_past_handler_deadline_is_retried_later_not_spun_on(tmp_path: Path) -> None:
    StuckHandler.instances.clear()
    async with make_world(tmp_path, bdx_factory=StuckHandler) as w:
        peer = await w.peer()
        await advance_to(w.clock, 5000)  # the handler's deadline (1.0 s) is now well in the past
        peer.send_secure(BDX_PROTOCOL_ID, ReceiveInit.OPCODE, b"x", 0x700)
        await peer.settle()
        (h,) = StuckHandler.instances
        assert h.polls == 1  # one pass at 5 s; then left alone for STALE_DEADLINE_RETRY_MS
        await advance_to(w.clock, 5000 + STALE_DEADLINE_RETRY_MS - 1)
        await peer.settle()
        assert h.polls == 1
        await advance_to(w.clock, 5000 + STALE_DEADLINE_RETRY_MS + 0.4)
        await peer.settle()
        assert h.polls == 2
        h.deadline = 9.0  # moved: honoured again, at its time
        await advance_to(w.clock, 8999)
        await peer.settle()
        assert h.polls == 2
        await advance_to(w.clock, 9000.4)
        await peer.settle()
        assert h.polls == 3
        # the node kept serving throughout
        peer.send_secure(IM_PROTOCOL_ID, Opcode.INVOKE_REQUEST, QUERY_IMAGE, 0x701)
        assert (await peer.recv_secure()).protocol.opcode in (
            SecureChannelOpcode.STANDALONE_ACK,
            Opcode.INVOKE_RESPONSE,
        )


async def test_timer_loop_backs_off_from_a_deadline_no_pass_consumes(tmp_path: Path) -> None:
    clock = ManualClock()
    ca = DevCA()
    node = ProviderNode([ca.credentials(NODE_ID)], port=0, host="127.0.0.1", advertise=False, clock=clock)
    passes: list[int] = []
    real_on_timer = node.exchanges.on_timer

    def counting_on_timer(now_ms: int) -> list[Event]:
        passes.append(now_ms)
        if len(passes) > 1000:
            node._running = False  # stop a spinning loop so the test fails instead of hanging
        return real_on_timer(now_ms)

    node.exchanges.next_deadline = lambda: 0  # type: ignore[method-assign]
    node.exchanges.on_timer = counting_on_timer  # type: ignore[method-assign]
    await clock.advance(1)
    async with node:
        for _ in range(50):
            await asyncio.sleep(0)
        assert passes == [1000]
        await advance_to(clock, 1000 + TIMER_STALL_BACKOFF_MS - 1)
        assert passes == [1000]
        await advance_to(clock, 1000 + TIMER_STALL_BACKOFF_MS + 0.4)
        assert passes == [1000, 1000 + TIMER_STALL_BACKOFF_MS]
        await advance_to(clock, 1000 + 3 * TIMER_STALL_BACKOFF_MS + 0.4)
        assert passes == [1000 + i * TIMER_STALL_BACKOFF_MS for i in range(4)]


# ---------------------------------------------------------------------------------------------- fabrics
async def test_add_and_remove_fabric_at_runtime(tmp_path: Path) -> None:
    async with make_world(tmp_path) as w:
        ca2 = DevCA(fabric_id=2)
        stranger = await w.peer(0x77, ca=ca2, fabric_index=2, connect=False)
        assert await stranger.case() is None  # no fabric 2 yet: no shared trust root
        await w.node.add_fabric(ca2.credentials(NODE_ID, 2))
        assert await stranger.case() is not None
        s2 = [s for s in w.node.sessions.secure.values() if s.fabric_index == 2]
        assert [s.peer_node_id for s in s2] == [0x77]
        peer1 = await w.peer()
        await w.node.remove_fabric(2)
        assert [s.fabric_index for s in w.node.sessions.secure.values()] == [1]
        assert [f.fabric_index for f in w.node.fabrics] == [1]
        assert await stranger.case() is None
        handler = Collect()
        await peer1.run(IM_PROTOCOL_ID, handler, Opcode.INVOKE_REQUEST, QUERY_IMAGE)  # fabric 1 unaffected
        assert handler.got


class FakeAdvertiser:
    """Stands in for OperationalAdvertiser (zeroconf needs multicast, covered by test_dnssd in a netns)."""

    log: ClassVar[list[tuple[str, Any]]] = []

    def __init__(self, port: int, interfaces: Any = None, *, mrp: Any = None) -> None:
        self.published: set[OperationalName] = set()
        FakeAdvertiser.log.append(("init", port))

    async def start(self) -> None:
        FakeAdvertiser.log.append(("start", None))

    async def advertise(self, name: OperationalName) -> None:
        self.published.add(name)
        FakeAdvertiser.log.append(("advertise", name))

    async def withdraw(self, name: OperationalName) -> None:
        self.published.discard(name)
        FakeAdvertiser.log.append(("withdraw", name))

    async def close(self) -> None:
        FakeAdvertiser.log.append(("close", sorted(self.published, key=lambda n: n.instance)))


@pytest.fixture
def fake_advertiser(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, Any]]]:
    FakeAdvertiser.log = []
    monkeypatch.setattr(node_module, "OperationalAdvertiser", FakeAdvertiser)
    yield FakeAdvertiser.log


async def test_advertising_follows_fabrics_and_is_withdrawn_on_stop(
    fake_advertiser: list[tuple[str, Any]],
) -> None:
    ca1, ca2 = DevCA(fabric_id=1), DevCA(fabric_id=2)
    f1, f2 = ca1.credentials(NODE_ID, 1), ca2.credentials(NODE_ID, 2)
    f2b = ca2.credentials(NODE_ID + 1, 2)  # new credentials for fabric index 2 under another node id
    name = lambda f: OperationalName(f.compressed_fabric_id_int, f.node_id)  # noqa: E731
    node = ProviderNode([f1], port=0, host="127.0.0.1", clock=ManualClock())
    async with node:
        await node.add_fabric(f2)
        await node.add_fabric(f2b)
        extra = OperationalName(0x1234, NODE_ID)
        await node.advertise_name(extra)
        await node.remove_fabric(2)
    port = node.port
    assert fake_advertiser == [
        ("init", port),
        ("start", None),
        ("advertise", name(f1)),
        ("advertise", name(f2)),
        ("withdraw", name(f2)),
        ("advertise", name(f2b)),
        ("advertise", extra),
        ("withdraw", name(f2b)),
        ("close", sorted([name(f1), extra], key=lambda n: n.instance)),
    ]
