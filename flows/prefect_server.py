"""`python -m flows.prefect_server server start ...`: Prefect's own CLI, with SQLite write transactions
that wait for the database lock instead of failing.

Prefect 3.8.8 opens its SQLite transactions DEFERRED. A transaction that reads and then writes fails
at once with "database is locked" (SQLITE_BUSY_SNAPSHOT, answered as a 503) when another connection
wrote in between; waiting cannot help it. The UI does not retry: a click on a deployment's Submit
then shows "Something went wrong trying to create a flow run". With a worker polling, 3 and 4 in 100
create calls failed so here, and 0 in 100 with BEGIN IMMEDIATE, which takes the write lock first and
so waits (busy_timeout, 60 s) for the other writer (benchmarks/prefect_sqlite.py; task runs are
recorded no slower). tests/test_server.py reproduces the interleaving.
A server on PostgreSQL is not touched.
"""

from __future__ import annotations

import sys
from contextlib import asynccontextmanager


def immediate_sqlite_transactions() -> None:
    """Make every SQLite transaction Prefect's server begins take the write lock first."""
    from prefect.server.database import configurations

    @asynccontextmanager
    async def begin_transaction(self, session, with_for_update: bool = False):
        token = configurations.SQLITE_BEGIN_MODE.set("IMMEDIATE")
        try:
            async with session.begin() as transaction:
                yield transaction
        finally:
            configurations.SQLITE_BEGIN_MODE.reset(token)

    configurations.AioSqliteConfiguration.begin_transaction = begin_transaction


if __name__ == "__main__":
    immediate_sqlite_transactions()
    from prefect.cli import app

    sys.argv[0] = "prefect"
    app()
