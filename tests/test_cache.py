"""policy/cache.py `Recent`, the one TTL cache of the workers (tenants, trusted networks, DKIM keys, held
tenants, lockouts at STARTTLS), on an injected clock: the tests move time instead of sleeping."""
from __future__ import annotations

import asyncio

from policy.cache import Recent


class Loads:
    """A loader that counts its calls and answers the current value of the store it stands for."""

    def __init__(self, value: object):
        self.value, self.calls = value, 0

    async def __call__(self) -> object:
        self.calls += 1
        return self.value


def test_a_value_is_trusted_for_the_ttl_then_read_again():
    now = [0.0]
    recent: Recent[object] = Recent(5.0, clock=lambda: now[0])
    store = Loads("active")

    async def read() -> object:
        return await recent.get("acme", store)
    assert asyncio.run(read()) == "active" and store.calls == 1
    store.value = "suspended"
    now[0] = 4.9
    assert asyncio.run(read()) == "active" and store.calls == 1          # within the TTL: what was read
    now[0] = 5.1
    assert asyncio.run(read()) == "suspended" and store.calls == 2       # past it: read again


def test_none_is_kept_like_any_value_and_put_replaces_what_was_read():
    now = [0.0]
    recent: Recent[object] = Recent(5.0, clock=lambda: now[0])
    store = Loads(None)
    assert asyncio.run(recent.get("ghost", store)) is None
    assert asyncio.run(recent.get("ghost", store)) is None and store.calls == 1
    recent.put("ghost", True)                                            # what the worker just wrote itself
    assert asyncio.run(recent.get("ghost", store)) is True and store.calls == 1


def test_ttl_zero_never_caches_and_the_size_is_bounded():
    store = Loads(1)
    off: Recent[object] = Recent(0)
    off.put("x", 2)
    assert [asyncio.run(off.get("x", store)) for _ in range(3)] == [1, 1, 1] and store.calls == 3
    now = [0.0]
    small: Recent[object] = Recent(60, size=2, clock=lambda: now[0])
    counted = Loads("v")
    for key in ("a", "b", "c", "a"):                                     # "a" was pushed out by "c"
        asyncio.run(small.get(key, counted))
    assert counted.calls == 4
