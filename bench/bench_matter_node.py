"""Benchmark: BDX through the provider node over loopback UDP (the whole stack), and secure-session message crypto.

1. BDX over the node: a ProviderNode (real UDP on 127.0.0.1, system clock, no DNS-SD) runs in a separate server
   process with M3's BdxServer over a file-backed image. This process opens CASE to it (CASEInitiator, DevCA
   certificates) and downloads the image with BdxReceiver (receiver drive, one block in flight, as requestors do)
   through its own session / exchange / MRP stack. Every message is framed, AES-CCM encrypted, MRP-acked
   (piggybacked). Printed: blocks/s and MiB/s, and the server process's CPU time per block (`time.process_time`
   in the server, sampled just before and after each transfer).
2. Secure-session messages/s: `SecureSession.encode` (header + AES-128-CCM) on one side and `SessionTable.open`
   (decrypt + replay window) on the other, for a 1024-byte BDX block and for a small (ack-sized) message.

Usage: python bench/bench_matter_node.py [--size BYTES] [--block 1024] [--runs 3] [--messages 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import secrets
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapters.matter.bdx.messages import Block
from adapters.matter.bdx.receiver import BdxReceiver
from adapters.matter.node import ProviderNode
from adapters.matter.secure.case_initiator import CASEInitiator
from adapters.matter.secure.credentials import OperationalCredentials
from adapters.matter.secure.devca import DevCA
from adapters.matter.transport.exchange import Exchange, ExchangeClosed, ExchangeManager, Send
from adapters.matter.transport.message import (
    MessageError,
    MessageHeader,
    ProtocolHeader,
    ProtocolId,
    SecureChannelOpcode,
    decode_message_header,
    decode_protocol_header,
)
from adapters.matter.transport.session import MessageCounter, SecureSession, SessionError, SessionTable
from adapters.matter.transport.udp import UdpTransport, open_udp
from tests.matter.support import BdxServer

MiB = 1 << 20
NODE_ID = 0x0A11_0001
CLIENT_ID = 0x4242
DESIGNATOR = b"bench-image"


# ---------------------------------------------------------------------------------------------- server process
class FileReader:
    """The core's ImageReader shape over a file (pread per block, shared by all transfers)."""

    def __init__(self, path: str) -> None:
        self._fd = os.open(path, os.O_RDONLY)
        self.size = os.fstat(self._fd).st_size

    def read(self, offset: int, length: int) -> bytes:
        return os.pread(self._fd, length, offset)


def serve(conn: Connection, creds: OperationalCredentials, image_path: str, block: int) -> None:
    asyncio.run(_serve(conn, creds, image_path, block))


async def _serve(conn: Connection, creds: OperationalCredentials, image_path: str, block: int) -> None:
    reader = FileReader(image_path)
    bdx = BdxServer(
        lambda d, ctx: reader if d == DESIGNATOR else None, now=time.monotonic, max_block_size=block
    )
    node = ProviderNode([creds], bdx_factory=bdx, port=0, host="127.0.0.1", advertise=False)
    await node.start()
    stop = asyncio.Event()

    def on_command() -> None:
        cmd = conn.recv()
        if cmd == "cpu":
            conn.send(time.process_time())
        else:
            stop.set()

    loop = asyncio.get_running_loop()
    loop.add_reader(conn.fileno(), on_command)
    conn.send(node.port)
    await stop.wait()
    loop.remove_reader(conn.fileno())
    await node.stop()


# ---------------------------------------------------------------------------------------------- requestor
class Requestor:
    """CASE initiator + BDX receiver over the stack's own session table and exchange manager."""

    def __init__(self, creds: OperationalCredentials, node_addr: tuple[str, int]) -> None:
        self.creds = creds
        self.node_addr = node_addr
        self.table = SessionTable()
        self.exchanges = ExchangeManager()
        self.unsecured: asyncio.Queue[bytes] = asyncio.Queue()
        self.counter = MessageCounter(wraps=True)
        self.ephemeral = secrets.randbits(63) | 1
        self.session: SecureSession | None = None
        self.closed: dict[Exchange, asyncio.Event] = {}
        self.transport: UdpTransport | None = None

    @staticmethod
    def now_ms() -> int:
        return round(time.monotonic() * 1000)

    async def open(self) -> None:
        self.transport = await open_udp(self._on_datagram, 0, "127.0.0.1")

    def _on_datagram(self, data: bytes, addr: Any) -> None:
        try:
            msg = self.table.open(data, addr, self.now_ms())
        except (MessageError, SessionError):
            self.unsecured.put_nowait(data)  # CASE replies (unsecured, addressed to our ephemeral id)
            return
        self._process(self.exchanges.on_message(msg, self.now_ms()))

    def _process(self, events: list[Any]) -> None:
        assert self.transport is not None
        for ev in events:
            if isinstance(ev, Send):
                self.transport.send(ev.datagram, self.node_addr)
            elif isinstance(ev, ExchangeClosed) and ev.exchange in self.closed:
                self.closed[ev.exchange].set()

    def _send_unsecured(
        self, opcode: int, payload: bytes, eid: int, ack: int | None, reliable: bool = True
    ) -> int:
        assert self.transport is not None
        ctr = self.counter.next()
        h = MessageHeader(session_id=0, message_counter=ctr, source_node_id=self.ephemeral)
        p = ProtocolHeader(
            opcode, eid, ProtocolId.SECURE_CHANNEL, initiator=True, reliable=reliable, ack_counter=ack
        )
        self.transport.send(h.encode() + p.encode() + payload, self.node_addr)
        return ctr

    async def _recv_unsecured(self) -> tuple[int, int, bytes]:
        data = await asyncio.wait_for(self.unsecured.get(), 10)
        h, off = decode_message_header(data)
        p, poff = decode_protocol_header(data, off)
        return h.message_counter, p.opcode, data[poff:]

    async def case(self) -> None:
        init = CASEInitiator(self.creds, NODE_ID, 1 + secrets.randbelow(0xFFFE), now=time.time)
        eid = secrets.randbelow(0x10000)
        op, payload = init.start()
        self._send_unsecured(op, payload, eid, None)
        ctr, op, body = await self._recv_unsecured()
        ((op3, sigma3),) = init.receive(op, body)
        self._send_unsecured(op3, sigma3, eid, ctr)
        ctr, op, body = await self._recv_unsecured()
        init.receive(op, body)
        self._send_unsecured(SecureChannelOpcode.STANDALONE_ACK, b"", eid, ctr, reliable=False)
        est = init.session
        if est is None:
            raise RuntimeError(f"CASE failed: {init.error}")
        # SecureSession is the responder's view (decrypt I2R, encrypt R2I): swap the keys for the initiator
        self.session = SecureSession(
            peer_address=self.node_addr,
            local_session_id=est.local_session_id,
            peer_session_id=est.peer_session_id,
            local_node_id=self.creds.node_id,
            peer_node_id=est.peer_node_id,
            fabric_index=est.fabric_index,
            i2r_key=est.r2i_key,
            r2i_key=est.i2r_key,
        )
        self.table.add_secure(self.session)

    async def download(self, block: int) -> BdxReceiver:
        assert self.session is not None
        receiver = BdxReceiver(DESIGNATOR, now=time.monotonic, max_block_size=block, sink=lambda o, d: None)
        ((pid, op, payload),) = receiver.start()
        ex, events = self.exchanges.initiate(self.session, pid, receiver, op, payload, self.now_ms())
        self.closed[ex] = done = asyncio.Event()
        self._process(events)
        ticker = asyncio.create_task(self._tick())  # our MRP timers (a lost datagram on loopback is rare)
        try:
            await asyncio.wait_for(done.wait(), 120)
        finally:
            ticker.cancel()
        return receiver

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(0.05)
            self._process(self.exchanges.on_timer(self.now_ms()))


async def bdx_over_node(size: int, block: int, runs: int) -> None:
    ca = DevCA(fabric_id=1)
    node_creds, client_creds = ca.credentials(NODE_ID), ca.credentials(CLIENT_ID)
    with tempfile.TemporaryDirectory() as tmp:
        image = Path(tmp) / "image.ota"
        image.write_bytes(os.urandom(size))
        ctx = mp.get_context("fork")  # credentials (private key objects) are inherited, not pickled
        parent, child = ctx.Pipe()
        server = ctx.Process(target=serve, args=(child, node_creds, str(image), block), daemon=True)
        server.start()
        try:
            port = await asyncio.to_thread(parent.recv)
            client = Requestor(client_creds, ("127.0.0.1", port))
            await client.open()
            t0 = time.perf_counter()
            await client.case()
            print(f"CASE over loopback UDP to the node process: {(time.perf_counter() - t0) * 1000:.1f} ms")
            print(
                f"BDX via the node, image {size} bytes, block {block} bytes, receiver drive, 1 block in flight"
            )
            results = []
            for i in range(runs + 1):  # the first run warms both processes up
                parent.send("cpu")
                cpu0 = await asyncio.to_thread(parent.recv)
                t0 = time.perf_counter()
                receiver = await client.download(block)
                wall = time.perf_counter() - t0
                parent.send("cpu")
                cpu1 = await asyncio.to_thread(parent.recv)
                if receiver.received != size or receiver.failed:
                    raise RuntimeError(f"transfer failed: {receiver.reason} ({receiver.received} bytes)")
                blocks = -(-size // block)
                if i:
                    results.append((wall, cpu1 - cpu0, blocks))
            for wall, cpu, blocks in sorted(results):
                print(
                    f"  {wall * 1000:8.1f} ms  {blocks / wall:8.0f} blocks/s  {size / MiB / wall:6.2f} MiB/s"
                    f"  server CPU {cpu / blocks * 1e6:6.1f} µs/block ({cpu / wall * 100:.0f}% of a core)"
                )
            if client.transport is not None:
                client.transport.close()
        finally:
            parent.send("stop")
            server.join(10)
            if server.is_alive():
                server.terminate()
    print("reference: matter.js provider moved 1 MiB to a matter.js requestor in 1.14 s (shared notes)")


# ---------------------------------------------------------------------------------------------- session crypto
def session_crypto(messages: int) -> None:
    keys = os.urandom(16), os.urandom(16)
    responder = SecureSession(
        peer_address=("peer", 1),
        local_session_id=1,
        peer_session_id=2,
        local_node_id=NODE_ID,
        peer_node_id=CLIENT_ID,
        i2r_key=keys[0],
        r2i_key=keys[1],
    )
    initiator = SecureSession(
        peer_address=("node", 1),
        local_session_id=2,
        peer_session_id=1,
        local_node_id=CLIENT_ID,
        peer_node_id=NODE_ID,
        i2r_key=keys[1],
        r2i_key=keys[0],
    )
    table = SessionTable()
    table.add_secure(initiator)
    print(f"secure session, {messages} messages each: encode (our side) + open (peer side)")
    for label, opcode, payload in (
        ("BDX Block, 1024 B", Block.OPCODE, Block(7, os.urandom(1024)).encode()),
        ("standalone ack, 0 B", SecureChannelOpcode.STANDALONE_ACK, b""),
    ):
        ph = ProtocolHeader(opcode, 0x1234, ProtocolId.BDX, reliable=True, ack_counter=99)
        enc = dec = 0.0
        for _ in range(messages):
            t0 = time.perf_counter()
            datagram, _ = responder.encode(ph, payload)
            t1 = time.perf_counter()
            msg = table.open(datagram, ("node", 1), 0)
            enc += t1 - t0
            dec += time.perf_counter() - t1
            assert not msg.duplicate
        total = enc + dec
        print(
            f"  {label:<20} {messages / total:9.0f} msgs/s round trip"
            f"  (encode {enc / messages * 1e6:5.1f} µs, open {dec / messages * 1e6:5.1f} µs)"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=MiB)
    ap.add_argument("--block", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--messages", type=int, default=20000)
    args = ap.parse_args()
    asyncio.run(bdx_over_node(args.size, args.block, args.runs))
    session_crypto(args.messages)


if __name__ == "__main__":
    main()
