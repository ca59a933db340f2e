"""Fixtures for fleet tests: one real PostgreSQL cluster per session, a fresh database per test."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest

from tests.fleet.pgcluster import PgCluster, running_cluster

_db_names = itertools.count()


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    yield from running_cluster()


@pytest.fixture
async def pg_dsn(pg_cluster: PgCluster) -> AsyncIterator[str]:
    """A DSN to a new, empty database (dropped after the test)."""
    name = f"t{next(_db_names)}"
    admin = await asyncpg.connect(pg_cluster.dsn())
    try:
        await admin.execute(f"CREATE DATABASE {name}")
    finally:
        await admin.close()
    yield pg_cluster.dsn(database=name)
    admin = await asyncpg.connect(pg_cluster.dsn())
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        await admin.close()
