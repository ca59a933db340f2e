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


async def create_database(cluster: PgCluster) -> str:
    """A new, empty database on `cluster`; returns its superuser DSN."""
    name = f"t{next(_db_names)}"
    admin = await asyncpg.connect(cluster.dsn())
    try:
        await admin.execute(f"CREATE DATABASE {name}")
    finally:
        await admin.close()
    return cluster.dsn(database=name)


async def drop_database(cluster: PgCluster, dsn: str) -> None:
    admin = await asyncpg.connect(cluster.dsn())
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {dsn.rsplit('/', 1)[1]} WITH (FORCE)")
    finally:
        await admin.close()


@pytest.fixture
async def pg_dsn(pg_cluster: PgCluster) -> AsyncIterator[str]:
    """A DSN to a new, empty database (dropped after the test)."""
    dsn = await create_database(pg_cluster)
    yield dsn
    await drop_database(pg_cluster, dsn)
