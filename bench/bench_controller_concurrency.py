"""Benchmark: how much the chip SDK controller worker gains by running requests side by side.

    python bench/bench_controller_concurrency.py [--ops 2,6] [--seconds 1.0] [--rounds 3]

A real `ControllerRunner` worker process (adapters/matter/fabric/controller.py) loaded with this module's `sleep`
op, which awaits asyncio.sleep on the worker's event loop (as an SDK read-back to a rebooting node waits). For
each N in `--ops`, N callers on N threads each call `sleep` for `--seconds` at once; printed: wall time (best of
`--rounds`) against the serial time N x seconds, and their ratio. A worker that serialised requests would show a
ratio near 1; side by side it approaches 1/N. (tests/matter/test_controller_concurrency.py asserts the behaviour,
without timing.)
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapters.matter.fabric.controller import ControllerRunner, runner_unavailable_reason


async def _op_sleep(st: Any, a: dict[str, Any]) -> Any:
    await asyncio.sleep(float(a["s"]))
    return a["tag"]


OPS = {"sleep": _op_sleep}
OPS_MODULE = "bench.bench_controller_concurrency"  # as the worker imports it (repo root on its path)


def side_by_side(runner: ControllerRunner, n: int, seconds: float) -> float:
    with ThreadPoolExecutor(n) as pool:
        t0 = time.perf_counter()
        futures = [pool.submit(runner.call, "sleep", s=seconds, tag=f"t{i}") for i in range(n)]
        assert [f.result(timeout=60) for f in futures] == [f"t{i}" for i in range(n)]
        return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--ops", default="2,6", help="comma-separated numbers of concurrent callers")
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    reason = runner_unavailable_reason()
    if reason is not None:
        print(f"controller worker unavailable: {reason}")
        return 1
    with (
        tempfile.TemporaryDirectory() as tmp,
        ControllerRunner(Path(tmp) / "gw", ops_module=OPS_MODULE, timeout_s=60.0) as runner,
    ):
        runner.call("sleep", s=0.0, tag="warm-up")
        for n in (int(x) for x in args.ops.split(",")):
            best = min(side_by_side(runner, n, args.seconds) for _ in range(args.rounds))
            serial = n * args.seconds
            print(
                f"{n} concurrent {args.seconds:.1f}s ops: {best:.3f} s wall (best of {args.rounds}) vs "
                f"{serial:.1f} s one after another: ratio {best / serial:.2f} (ideal {1 / n:.2f})"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
