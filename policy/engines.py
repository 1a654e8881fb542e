"""Which engine the store is on: the one place that knows both (policy/store_sqlite.py, policy/store_postgres.py)."""
from __future__ import annotations

from policy.settings import Settings
from policy.store import Store
from policy.store_sqlite import SqliteStore


def open_store(settings: Settings, *, other_thread: bool = False, durable: bool = False) -> Store:
    """The configured store: PostgreSQL when `store.url` is set, else the SQLite file in data_dir.
    `other_thread`: used by one thread other than the one opening it. `durable`: every commit is on
    disk before it returns, for writers that mark their input done elsewhere right after (inbound)."""
    if settings.store.url:
        from policy.store_postgres import PostgresStore
        return PostgresStore(settings.store.url, settings.store.acquire_timeout)
    return SqliteStore(settings.store_path, other_thread=other_thread, durable=durable)


def is_set_up(settings: Settings) -> bool:
    """Whether `init` ran for this node: its SQLite store exists or, on a shared store, its data dir."""
    return settings.data_dir.exists() if settings.store.url else settings.store_path.exists()
