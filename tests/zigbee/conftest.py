"""Fixtures for the Zigbee adapter tests: zigpy's own real-time retry delays are zeroed for the harness."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from adapters.zigbee.sim import fast_zigpy_timing


@pytest.fixture(autouse=True)
def _fast_zigpy() -> Iterator[None]:
    with fast_zigpy_timing():
        yield
