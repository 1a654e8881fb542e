"""The PostgreSQL store (`store.url = "postgresql://…"`): what several nodes share.

psycopg 3 with a small connection pool per Store (a broken connection is replaced, not fatal).
`call` runs its function in one of the store's THREADS threads, which wait for a pooled connection at
most `acquire_timeout` (psycopg_pool's PoolTimeout, a psycopg.OperationalError, then answers the command
451 4.3.0): a slow or unreachable server holds up the commands that need it, not the event loop. There
are more threads than connections so that a command waiting for one is bounded by that timeout, not by
a queue of other commands. Statements run in autocommit; `transaction()` holds one pooled connection
for this thread's statements and sends them in psycopg's pipeline mode (a group commit of any size is
one round trip, see `_Batch`); `exclusive()` is a transaction holding a transaction-scoped advisory
lock, the counterpart of SQLite's BEGIN IMMEDIATE, so read-modify-write sections (migrations included)
are serialised across every node. The SQL of policy/ is translated once per statement: `?` and
`:name` parameters to psycopg's, and numeric sums back to Python ints.
"""
from __future__ import annotations

import asyncio
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from functools import lru_cache
from typing import Any
from collections.abc import Callable

import psycopg
from psycopg.types.numeric import NumericLoader
from psycopg_pool import ConnectionPool, PoolTimeout

from policy.schema import to_postgres
from policy.store import Params, Result, Store, T

EXCLUSIVE_LOCK = 0x5773_5454   # the advisory lock key of exclusive sections ("WsTT")
POOL_SIZE = 4                  # connections per Store (a worker, a CLI command)
THREADS = 16                   # threads of `call` per Store: the waits for a connection beyond POOL_SIZE
ACQUIRE_TIMEOUT = 10.0         # seconds to wait for a connection, unless the settings say (store.acquire_timeout)

_TOKENS = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|\?|(?<!:):([A-Za-z_]\w*)|%")


@lru_cache(maxsize=512)
def translate(sql: str) -> str:
    """`?` -> `%s`, `:name` -> `%(name)s`, `%` -> `%%`; quoted strings and names keep their `?` and `:`."""
    def one(m: re.Match) -> str:
        token = m.group(0)
        if token == "?":
            return "%s"
        if token == "%":
            return "%%"
        if m.group(1):
            return f"%({m.group(1)})s"
        return token.replace("%", "%%")          # a quoted string or name
    return _TOKENS.sub(one, sql)


class _IntegralNumeric(NumericLoader):
    """SUM() over BIGINT is NUMERIC in PostgreSQL; policy/ expects the int SQLite gives."""

    def load(self, data: Any) -> int | Decimal:  # type: ignore[override]  # an int where the sum is integral
        value = super().load(data)
        return int(value) if value == value.to_integral_value() else value


def _configure(conn: psycopg.Connection) -> None:
    conn.adapters.register_loader("numeric", _IntegralNumeric)


class _Batch:
    """The pipeline of a transaction (psycopg's pipeline mode): its statements go to the server together,
    one round trip for a group commit of any size instead of one per statement; a statement's results
    are waited for only when someone reads them."""

    def __init__(self, pipeline: psycopg.Pipeline):
        self.pipeline, self.open = pipeline, True

    def sync(self) -> None:
        if self.open:
            self.pipeline.sync()


class _Result:
    """A cursor's results, read before its connection goes back to the pool; inside a transaction, when
    first asked for (after the transaction they are all there)."""

    def __init__(self, cur: psycopg.Cursor, batch: _Batch | None = None):
        self._cur, self._batch = cur, batch
        if batch is None:
            self._read()

    def _read(self) -> None:
        if self._batch is not None:
            self._batch.sync()
            self._batch = None
        cur = self._cur
        self._rowcount, self._description = cur.rowcount, cur.description
        self._rows = list(cur.fetchall()) if cur.description else []

    @property
    def rowcount(self) -> int:
        if self._batch is not None:
            self._read()
        return self._rowcount

    @property
    def description(self):
        if self._batch is not None:
            self._read()
        return self._description

    def fetchone(self):
        if self._batch is not None:
            self._read()
        return self._rows.pop(0) if self._rows else None

    def fetchall(self):
        if self._batch is not None:
            self._read()
        rows, self._rows = self._rows, []
        return rows


class PostgresStore(Store):
    def __init__(self, url: str, acquire_timeout: float = ACQUIRE_TIMEOUT):
        info = psycopg.conninfo.conninfo_to_dict(url)
        self.where = f"postgresql://{info.get('host', 'localhost')}:{info.get('port', 5432)}/{info.get('dbname', '')}"
        self.acquire_timeout = acquire_timeout
        self.pool = ConnectionPool(url, min_size=1, max_size=POOL_SIZE, timeout=acquire_timeout, open=True,
                                   kwargs={"autocommit": True}, configure=_configure, name="websofttt")
        self._held = threading.local()      # the connection of this thread's exclusive section
        self._threads: ThreadPoolExecutor | None = None      # made at the first `call` (after a fork)

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """In a thread; a call that finds no thread free within `acquire_timeout` is dropped with PoolTimeout."""
        if self._threads is None:
            self._threads = ThreadPoolExecutor(THREADS, thread_name_prefix="store")
        begun = threading.Event()

        def run() -> T:
            begun.set()
            return fn(*args)
        job = asyncio.get_running_loop().run_in_executor(self._threads, run)
        done, _ = await asyncio.wait({job}, timeout=self.acquire_timeout)
        if not done and not begun.is_set() and job.cancel():
            raise PoolTimeout(f"no store connection within {self.acquire_timeout:g} s")
        return await job

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection]:
        held = getattr(self._held, "conn", None)
        if held is not None:
            yield held
            return
        with self.pool.connection() as conn:
            yield conn

    def execute(self, sql: str, params: Params = ()) -> Result:
        with self._connection() as conn:      # even (): psycopg then undoubles %%
            return _Result(conn.execute(translate(sql), params), getattr(self._held, "batch", None))

    def executemany(self, sql: str, rows: Iterable[Params]) -> int:
        with self._connection() as conn, conn.cursor() as cur:
            cur.executemany(translate(sql), list(rows))
            if (batch := getattr(self._held, "batch", None)) is not None:
                batch.sync()
            return cur.rowcount

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self.transaction():
            self.execute("SELECT pg_advisory_xact_lock(?)", [EXCLUSIVE_LOCK])
            yield

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """This thread's statements run on one pooled connection inside one transaction."""
        if getattr(self._held, "conn", None) is not None:
            raise RuntimeError("transactions do not nest")
        with self.pool.connection() as conn, conn.pipeline() as pipeline, conn.transaction():
            self._held.conn, self._held.batch = conn, _Batch(pipeline)
            try:
                yield
            finally:
                self._held.batch.open = False
                self._held.conn = self._held.batch = None

    def ddl(self, statement: str) -> str:
        return to_postgres(statement)

    def close(self) -> None:
        if self._threads is not None:
            self._threads.shutdown(wait=False, cancel_futures=True)
        self.pool.close()
