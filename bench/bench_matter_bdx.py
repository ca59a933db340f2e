"""Benchmark: BDX throughput of the provider's sender for a 1 MiB image (blocks/s, MiB/s, sender CPU per block).

Runs
  1. in-process, sans-I/O: BdxSender <-> BdxReceiver exchanging payload bytes directly (protocol cost only);
  2. over M1's UDP transport (adapters.matter.transport.udp) on 127.0.0.1: each BDX message is one datagram
     (opcode + protocol id + payload; no Matter message layer or encryption — that cost belongs to the node);
  3. N concurrent in-process transfers sharing one image reader (the reference provider serves one at a time).
Usage: python bench/bench_matter_bdx.py [--size BYTES] [--block 1024] [--concurrent 16]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapters.matter.bdx.receiver import BdxReceiver
from adapters.matter.bdx.sender import BdxSender, Outgoing
from adapters.matter.transport.udp import open_udp

MiB = 1 << 20


class Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.size = len(data)

    def read(self, offset: int, length: int) -> bytes:
        return self.data[offset : offset + length]


def run_in_process(image: bytes, block: int) -> tuple[float, float, int]:
    reader = Reader(image)
    sender = BdxSender(lambda d: reader, now=time.monotonic, max_block_size=block)
    receiver = BdxReceiver(b"img", now=time.monotonic, max_block_size=block, sink=lambda o, d: None)
    cpu = 0.0
    t0 = time.perf_counter()
    pending = receiver.start()
    while pending:
        c0 = time.process_time()
        back: list[Outgoing] = []
        for m in pending:
            back += sender.receive(m.opcode, m.payload, m.protocol_id)
        cpu += time.process_time() - c0
        pending = []
        for m in back:
            pending += receiver.receive(m.opcode, m.payload, m.protocol_id)
    wall = time.perf_counter() - t0
    assert sender.state.value == "done" and receiver.received == len(image)
    return wall, cpu, sender.blocks_sent


_HDR = struct.Struct("<IB")  # protocol id, opcode


async def run_udp(image: bytes, block: int) -> tuple[float, float, int]:
    reader = Reader(image)
    sender = BdxSender(lambda d: reader, now=time.monotonic, max_block_size=block)
    receiver = BdxReceiver(b"img", now=time.monotonic, max_block_size=block, sink=lambda o, d: None)
    done = asyncio.get_running_loop().create_future()
    cpu = [0.0]
    server_tr = client_tr = None

    def on_server(data: bytes, addr: object) -> None:
        pid, op = _HDR.unpack_from(data)
        c0 = time.process_time()
        out = sender.receive(op, data[_HDR.size :], pid)
        for m in out:
            server_tr.send(_HDR.pack(m.protocol_id, m.opcode) + m.payload, addr)  # type: ignore[union-attr]
        cpu[0] += time.process_time() - c0

    def on_client(data: bytes, addr: object) -> None:
        pid, op = _HDR.unpack_from(data)
        for m in receiver.receive(op, data[_HDR.size :], pid):
            client_tr.send(_HDR.pack(m.protocol_id, m.opcode) + m.payload, addr)  # type: ignore[union-attr]
        if receiver.done and not done.done():
            done.set_result(None)

    server_tr = await open_udp(on_server, 0, "127.0.0.1")
    client_tr = await open_udp(on_client, 0, "127.0.0.1")
    try:
        t0 = time.perf_counter()
        for m in receiver.start():
            client_tr.send(_HDR.pack(m.protocol_id, m.opcode) + m.payload, ("127.0.0.1", server_tr.port))
        await asyncio.wait_for(done, 60)
        wall = time.perf_counter() - t0
    finally:
        server_tr.close()
        client_tr.close()
    assert receiver.received == len(image), receiver.reason
    return wall, cpu[0], sender.blocks_sent


def run_concurrent(image: bytes, block: int, n: int) -> tuple[float, int]:
    reader = Reader(image)
    pairs = []
    for _ in range(n):
        s = BdxSender(lambda d: reader, now=time.monotonic, max_block_size=block)
        r = BdxReceiver(b"img", now=time.monotonic, max_block_size=block, sink=lambda o, d: None)
        pairs.append([s, r, r.start()])
    t0 = time.perf_counter()
    active = True
    while active:
        active = False
        for p in pairs:
            s, r, pending = p
            if not pending:
                continue
            active = True
            back: list[Outgoing] = []
            for m in pending:
                back += s.receive(m.opcode, m.payload, m.protocol_id)
            nxt: list[Outgoing] = []
            for m in back:
                nxt += r.receive(m.opcode, m.payload, m.protocol_id)
            p[2] = nxt
    wall = time.perf_counter() - t0
    assert all(p[1].received == len(image) for p in pairs)
    return wall, sum(p[0].blocks_sent for p in pairs)


def report(label: str, wall: float, cpu: float | None, blocks: int, nbytes: int) -> None:
    cpu_s = f", sender CPU {cpu / blocks * 1e6:.1f} µs/block" if cpu is not None else ""
    print(
        f"{label:<38} {wall * 1000:8.1f} ms  {blocks / wall:10.0f} blocks/s  {nbytes / MiB / wall:8.1f} MiB/s{cpu_s}"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=MiB)
    ap.add_argument("--block", type=int, default=1024)
    ap.add_argument("--concurrent", type=int, default=16)
    args = ap.parse_args()
    image = os.urandom(args.size)
    print(f"BDX sender, image {args.size} bytes, block {args.block} bytes")
    run_in_process(image, args.block)  # warm-up
    wall, cpu, blocks = min((run_in_process(image, args.block) for _ in range(3)), key=lambda r: r[0])
    report("in-process sans-I/O (best of 3)", wall, cpu, blocks, args.size)
    wall, cpu, blocks = asyncio.run(run_udp(image, args.block))
    report("UDP loopback (M1 udp.py, no crypto)", wall, cpu, blocks, args.size)
    wall, blocks = run_concurrent(image, args.block, args.concurrent)
    report(
        f"{args.concurrent} concurrent, one shared reader", wall, None, blocks, args.size * args.concurrent
    )
    print("reference: matter.js provider moved 1 MiB to a matter.js requestor in 1.14 s (shared notes)")


if __name__ == "__main__":
    main()
