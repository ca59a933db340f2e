"""Suite-wide hooks: the skip policy (a skip whose reason is not in tests/skip_allowlist.txt fails the run)."""

from __future__ import annotations

import pytest

from tests.skip_policy import register


def pytest_configure(config: pytest.Config) -> None:
    register(config)
