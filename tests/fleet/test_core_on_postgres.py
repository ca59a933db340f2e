"""The update core's flow and rollout tests, run again with `store.backend: postgres` on a real server.

The tests are imported from tests/core unchanged; only `make_core` is overridden here so every UpdateCore they
start keeps its records, history and rollouts in PostgreSQL (one database per data_dir, so a test that restarts
a gateway on the same data_dir finds its state again, as it would on SQLite).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.clock import ManualClock
from gateway.core.pg_repository import PostgresRecordsRepository
from gateway.core.service import UpdateCore
from tests.core.conftest import CoreFactory, FakeStore, clock, config, store
from tests.core.test_flow import *  # noqa: F403  (the tests themselves)
from tests.core.test_rollouts import *  # noqa: F403
from tests.fleet.conftest import create_database, drop_database
from tests.fleet.pgcluster import PgCluster

__all__ = ["clock", "store"]  # fixtures re-exported for the imported tests


@pytest.fixture
async def make_core(
    tmp_path: Path, clock: ManualClock, store: FakeStore, pg_cluster: PgCluster
) -> AsyncIterator[CoreFactory]:
    cores: list[UpdateCore] = []
    databases: dict[Path, str] = {}
    counter = iter(range(1, 10**9))

    async def factory(
        *, data_dir: Path | None = None, st: Any = None, role: str = "gateway", **policy: Any
    ) -> UpdateCore:
        cfg = config(data_dir or tmp_path, **policy)
        if cfg.data_dir not in databases:
            databases[cfg.data_dir] = await create_database(pg_cluster)
        cfg = cfg.model_copy(
            update={
                "store": cfg.store.model_copy(
                    update={"backend": "postgres", "dsn": databases[cfg.data_dir], "tls_mode": "disable"}
                )
            }
        )
        core = UpdateCore(
            cfg,
            st or store,
            clock,
            role=role,  # type: ignore[arg-type]
            auto_sweep=False,
            token_factory=lambda: next(counter).to_bytes(16, "big"),
        )
        assert isinstance(core._repo, PostgresRecordsRepository)
        await core.start()
        cores.append(core)
        return core

    yield factory
    for c in cores:
        if c._started:
            await c.stop()
    for dsn in databases.values():
        await drop_database(pg_cluster, dsn)
