"""Queue ids sort as they were made, and `queue list` shows messages in the order they were queued, also
those a spool kept from before, whose base32 ids (alphabet a-z then 2-7) do not sort like their times."""
from __future__ import annotations

import base64
import datetime
import time
from pathlib import Path

from policy.queue_ids import new_queue_id
from relay.spool import connect, shard_path
from tests.test_cli import config, ok, ok_json  # noqa: F401  (fixtures)

NODE = "t1"
UTC = datetime.UTC
AT_0319 = datetime.datetime(2025, 6, 3, 3, 19, tzinfo=UTC).timestamp()
AT_0322 = datetime.datetime(2025, 6, 3, 3, 22, tzinfo=UTC).timestamp()


def old_style_id(when: float) -> str:
    """An id as it was made before: 48-bit milliseconds and 40 random bits (zero here), base32."""
    raw = int(when * 1000).to_bytes(6, "big") + bytes(5)
    return base64.b32encode(raw).decode().rstrip("=").lower() + "." + NODE


def iso(when: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))


def queue(spool_dir: Path, shard: int, queue_id: str, when: float) -> None:
    """A message as the spool stores it, queued at `when`."""
    conn = connect(shard_path(spool_dir, shard))
    try:
        conn.execute("INSERT INTO messages (id, tenant, mail_from, size, received, data) VALUES (?, 'acme', "
                     "'app@example.com', 1, ?, x'00')", (queue_id, iso(when)))
        conn.execute("INSERT INTO recipients (queue_id, recipient, next_attempt, updated) VALUES (?, ?, 0, ?)",
                     (queue_id, "you@example.net", iso(when)))
    finally:
        conn.close()


def test_queue_list_is_in_the_order_messages_were_queued(config, ok_json, monkeypatch):
    first, second = old_style_id(AT_0319), old_style_id(AT_0322)
    assert first > second                                  # the old ids sort against their times
    monkeypatch.setattr(time, "time", lambda: AT_0322 + 180)
    third = new_queue_id(NODE)
    monkeypatch.undo()
    spool_dir = config.parent / "var" / "spool" / NODE
    spool_dir.mkdir(parents=True)
    queue(spool_dir, 0, second, AT_0322)
    queue(spool_dir, 0, third, AT_0322 + 180)
    queue(spool_dir, 1, first, AT_0319)                     # in another shard
    assert [row["id"] for row in ok_json("queue", "list")] == [first, second, third]


def test_new_ids_sort_in_the_order_they_were_made(monkeypatch):
    times = sorted({AT_0319, AT_0322,
                    *(AT_0319 + second for second in range(0, 180)),        # each second from 03:19 to 03:22
                    *(AT_0319 + 2 ** bit / 1000 for bit in range(42))})     # each bit of the milliseconds
    ids = []
    for when in times:
        monkeypatch.setattr(time, "time", lambda: when)
        ids.append(new_queue_id(NODE))
    monkeypatch.undo()
    assert len({len(i) for i in ids}) == 1 and all(i.endswith("." + NODE) for i in ids)
    assert ids == sorted(ids)
