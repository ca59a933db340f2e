"""ControllerRunner with a real worker process: requests run concurrently in the worker and every caller (from any
thread) gets its own reply, whatever order the replies come back in.

The worker loads this module as its `--ops-module` (the `OPS` below): `sleep` awaits asyncio.sleep on the worker's
event loop, like an SDK read-back to a rebooting node waits on it; `fail` raises; `meet` returns only once `n` calls
of its group are inside the worker at the same time (a rendezvous), so a worker that ran requests one after another
would never complete the first. That is how concurrency is asserted here, by behaviour, not by wall-clock time;
the timing (how much faster side by side is) is bench/bench_controller_concurrency.py.
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from adapters.matter.fabric.controller import ControllerError, ControllerRunner, runner_unavailable_reason


async def _op_sleep(st: Any, a: dict[str, Any]) -> Any:
    await asyncio.sleep(float(a["s"]))
    return {"tag": a["tag"], "thread": threading.get_ident()}


async def _op_fail(st: Any, a: dict[str, Any]) -> Any:
    raise LookupError(f"no {a['what']}")


_arrived: dict[str, int] = {}
_all_in: dict[str, asyncio.Event] = {}


async def _op_meet(st: Any, a: dict[str, Any]) -> Any:
    """Wait until `n` calls of group `group` are in the worker at once; fails after `wait_s` if they never are."""
    group, n = str(a["group"]), int(a["n"])
    _arrived[group] = _arrived.get(group, 0) + 1
    event = _all_in.setdefault(group, asyncio.Event())
    if _arrived[group] >= n:
        event.set()
    try:
        await asyncio.wait_for(event.wait(), timeout=float(a.get("wait_s", 20.0)))
    except TimeoutError:
        raise RuntimeError(
            f"only {_arrived[group]} of {n} calls of {group} were ever in the worker at once"
        ) from None
    return {"tag": a["tag"], "thread": threading.get_ident(), "arrived": _arrived[group]}


OPS = {"sleep": _op_sleep, "fail": _op_fail, "meet": _op_meet}
OPS_MODULE = "tests.matter.test_controller_concurrency"  # as the worker imports it (repo root on its path)

_reason = runner_unavailable_reason()
pytestmark = pytest.mark.skipif(_reason is not None, reason=_reason or "")


@pytest.fixture
def runner(tmp_path: Path) -> Any:
    with ControllerRunner(tmp_path / "gw", ops_module=OPS_MODULE, timeout_s=30.0) as r:
        yield r


def test_two_ops_are_in_the_worker_at_once(runner: ControllerRunner) -> None:
    with ThreadPoolExecutor(2) as pool:
        a = pool.submit(runner.call, "meet", group="pair", n=2, tag="a")
        b = pool.submit(runner.call, "meet", group="pair", n=2, tag="b")
        ra, rb = a.result(timeout=30), b.result(timeout=30)
    assert (ra["tag"], rb["tag"]) == ("a", "b")
    assert ra["arrived"] == rb["arrived"] == 2  # neither returned before the other had arrived
    assert ra["thread"] == rb["thread"]  # both on the worker's one event-loop thread


def test_a_lone_meet_fails_so_the_rendezvous_can_fail(runner: ControllerRunner) -> None:
    # the assertion above is not vacuous: one call of a group of two never completes
    with pytest.raises(ControllerError, match="only 1 of 2 calls of alone"):
        runner.call("meet", group="alone", n=2, tag="x", wait_s=0.2)


def test_out_of_order_replies_reach_their_own_callers(runner: ControllerRunner) -> None:
    # delays decrease with the request order, so the worker answers in reverse; a failing op sits in the middle
    delays = [0.8, 0.6, 0.4, 0.2, 0.0]
    done_order: list[str] = []
    lock = threading.Lock()

    def one(i: int) -> Any:
        try:
            if i == 2:
                return runner.call("fail", what=f"thing{i}")
            return runner.call("sleep", s=delays[i], tag=f"t{i}")
        finally:
            with lock:
                done_order.append(f"t{i}")

    with ThreadPoolExecutor(len(delays)) as pool:
        futures = []
        for i in range(len(delays)):
            futures.append(pool.submit(one, i))
            time.sleep(0.05)  # orders the requests (not a timing assertion)
        results = []
        for i, f in enumerate(futures):
            if i == 2:
                with pytest.raises(ControllerError, match="LookupError: no thing2"):
                    f.result(timeout=30)
                results.append(None)
            else:
                results.append(f.result(timeout=30)["tag"])
    assert results == ["t0", "t1", None, "t3", "t4"]
    assert done_order.index("t4") < done_order.index("t0")  # replies came back out of request order
    assert runner.call("ping") == "pong"  # and the pipe is still in step afterwards


async def test_concurrent_calls_from_asyncio_to_thread(runner: ControllerRunner) -> None:
    got = await asyncio.gather(
        *(asyncio.to_thread(runner.call, "meet", group="six", n=6, tag=f"n{i}") for i in range(6))
    )
    assert [g["tag"] for g in got] == [f"n{i}" for i in range(6)]
    assert {g["arrived"] for g in got} == {6}


def test_a_timed_out_caller_does_not_disturb_the_next(runner: ControllerRunner) -> None:
    with pytest.raises(ControllerError, match="no reply within the timeout"):
        runner.call("sleep", _timeout=0.2, s=0.5, tag="late")
    # the late reply arrives while this call waits: it must be dropped, not taken for this one
    assert runner.call("sleep", s=0.6, tag="next")["tag"] == "next"


def test_shutdown_cancels_running_ops(tmp_path: Path) -> None:
    r = ControllerRunner(tmp_path / "gw", ops_module=OPS_MODULE, timeout_s=30.0)
    r.start()
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(r.call, "sleep", s=20.0, tag="slow")
        time.sleep(0.3)  # lets the request reach the worker (not a timing assertion)
        t0 = time.monotonic()
        r.close()
        with pytest.raises(ControllerError, match=r"shutting down|worker exited"):
            slow.result(timeout=30)
    assert time.monotonic() - t0 < 15
