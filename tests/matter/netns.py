"""The `netns_pair` pytest fixture: two network namespaces joined by a veth (the pair itself lives in
`adapters.matter.sim.netns`, shared with `otagw demo`; re-exported here for the tests and bench/).
Skips (with the reason) when not root or `ip netns` is unavailable.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from adapters.matter.sim.netns import (
    CLONE_NEWNET,
    NetnsPair,
    NetnsSide,
    create_pair,
    delete_pair,
    netns_unavailable_reason,
)

__all__ = [
    "CLONE_NEWNET",
    "NetnsPair",
    "NetnsSide",
    "create_pair",
    "delete_pair",
    "netns_pair",
    "netns_unavailable_reason",
]


@pytest.fixture
def netns_pair() -> Iterator[NetnsPair]:
    reason = netns_unavailable_reason()
    if reason:
        pytest.skip(reason)
    pair = create_pair()
    try:
        yield pair
    finally:
        delete_pair(pair)
