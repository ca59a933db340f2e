"""Benchmark: CASE handshakes per second on the server side (our responder), in-process, single thread.

Each handshake is a full Sigma1 -> Sigma2 -> Sigma3 -> StatusReport run between `CASEInitiator` and
`CASEResponder` with a NOC -> ICAC -> RCAC chain on both sides. Reported: total handshakes/s (both halves
on this one core), the responder's own CPU time per handshake (what a gateway pays per controller connection),
and its split between Sigma1 (ECDH + sign) and Sigma3 (chain validation + verify).

Usage: python bench/bench_matter_case.py [--seconds 5] [--fabrics 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapters.matter.secure.case import CASEResponder
from adapters.matter.secure.case_initiator import CASEInitiator
from adapters.matter.secure.devca import DevCA


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--fabrics", type=int, default=1, help="fabrics on the responder (destination id search)")
    args = ap.parse_args()

    cas = [DevCA(fabric_id=0x1000 + n) for n in range(args.fabrics)]
    server_fabrics = [ca.credentials(0xABC, fabric_index=n + 1) for n, ca in enumerate(cas)]
    client = cas[-1].credentials(0xDEF)  # worst case: the last fabric matches
    now = time.time

    t_sigma1: list[float] = []
    t_sigma3: list[float] = []
    count = 0
    start = time.perf_counter()
    deadline = start + args.seconds
    while time.perf_counter() < deadline:
        responder = CASEResponder(server_fabrics, 1 + count % 0xFFFE, now=now)
        initiator = CASEInitiator(client, 0xABC, 1, now=now)
        op, payload = initiator.start()
        t0 = time.perf_counter()
        ((op2, sigma2),) = responder.receive(op, payload)
        t1 = time.perf_counter()
        ((op3, sigma3),) = initiator.receive(op2, sigma2)
        t2 = time.perf_counter()
        ((op4, status),) = responder.receive(op3, sigma3)
        t3 = time.perf_counter()
        initiator.receive(op4, status)
        if responder.session is None or initiator.session is None:
            print("handshake failed:", responder.error or initiator.error, file=sys.stderr)
            return 1
        t_sigma1.append(t1 - t0)
        t_sigma3.append(t3 - t2)
        count += 1
    elapsed = time.perf_counter() - start

    resp = [a + b for a, b in zip(t_sigma1, t_sigma3, strict=True)]
    print(
        f"CASE handshakes (responder + initiator in one thread): {count} in {elapsed:.2f} s "
        f"= {count / elapsed:.1f} handshakes/s"
    )
    print(
        f"responder CPU per handshake: median {statistics.median(resp) * 1e3:.2f} ms "
        f"(Sigma1->Sigma2 {statistics.median(t_sigma1) * 1e3:.2f} ms, "
        f"Sigma3 validation {statistics.median(t_sigma3) * 1e3:.2f} ms), "
        f"p95 {sorted(resp)[int(0.95 * (len(resp) - 1))] * 1e3:.2f} ms"
    )
    print(
        f"responder-only capacity: {1 / statistics.median(resp):.0f} handshakes/s per core "
        f"({args.fabrics} fabric(s) searched)"
    )
    print(f"responder share of handshake time: {sum(resp) / elapsed:.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
