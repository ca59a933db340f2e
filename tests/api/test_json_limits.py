"""Request bodies nested absurdly deep (under the size cap) are a 400 naming the problem on every JSON body route,
never a RecursionError answered as 500 with a logged traceback."""

from __future__ import annotations

import logging
import re

import pytest

from gateway.api.app import TABLE_KEY
from gateway.api.openapi import MAX_JSON_BODY, MAX_JSON_DEPTH, json_depth, load_json_body
from tests.api.conftest import ApiHarness

DEEP = b'{"device": ' + b"[" * 5000 + b"]" * 5000 + b"}"


def test_depth_walk_is_iterative_and_exact() -> None:
    assert json_depth([]) == 1 and json_depth({"a": [1, {"b": []}]}) == 4 and json_depth(7) == 0
    nested: list[object] = []
    for _ in range(50_000):  # far past the interpreter's recursion limit
        nested = [nested]
    assert json_depth(nested, limit=10) == 11


def test_limit_boundary() -> None:
    assert load_json_body(b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH) is not None
    with pytest.raises(Exception, match=f"deeper than {MAX_JSON_DEPTH}"):
        load_json_body(b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1))
    # brackets inside strings are not nesting
    assert load_json_body(b'{"a": "' + b"[" * 500 + b'"}') == {"a": "[" * 500}


async def test_every_json_body_route_answers_400_for_deep_nesting(
    harness: ApiHarness, caplog: pytest.LogCaptureFixture
) -> None:
    assert len(DEEP) < MAX_JSON_BODY
    ops = [o for o in harness.app[TABLE_KEY].ops if o.body is not None]
    paths = {o.path for o in ops}
    assert {"/api/v1/query", "/api/v1/status", "/api/v1/rollouts"} <= paths
    caplog.set_level(logging.ERROR)
    for o in ops:
        path = re.sub(r"\{\w+(?::[^}]*)?\}", "x", o.path)
        for body in (DEEP, b"[" * 5000 + b"]" * 5000, b'{"a": ' + b'{"b": ' * 100 + b"1" + b"}" * 101):
            resp = await harness.call(
                o.method, path, 400, data=body, headers={"Content-Type": "application/json"}
            )
            assert resp["error"]["code"] == "too_deep", (o.path, resp)
            assert f"deeper than {MAX_JSON_DEPTH}" in resp["error"]["message"]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], "a traceback was logged"
