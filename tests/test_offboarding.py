"""`websofttt tenant remove|restore` against a real `serve`: credentials gone (535), queued mail dropped and its
body erased, restore with new credentials, --erase refused under a legal hold, then erasing what it must."""
from __future__ import annotations

import json
import smtplib
import sqlite3

import pytest

from policy import cases, complaints, dkimkeys, suppression
from policy.engines import open_store
from policy.settings import load_settings
from tests.conftest import PASSWORD, run_cli
from tests.test_serve import client, node, send  # noqa: F401  (node: the fixture)


def cli(node, *args: str, code: int = 0, stdin: str | None = None) -> str:
    done = run_cli(*args, cwd=node.dir, stdin=stdin)
    assert done.returncode == code, (args, done.stdout, done.stderr)
    return done.stdout + done.stderr


def spool(node, sql: str) -> list[tuple]:
    rows = []
    for path in sorted((node.dir / "var/spool").glob("*/shard-*.sqlite")):
        with sqlite3.connect(path) as conn:
            rows += conn.execute(sql).fetchall()
    return rows


def test_remove_drops_the_queue_and_the_credentials_and_restore_brings_the_tenant_back(node):
    node()
    with client(node) as c:
        queue_id = send(c)
    assert spool(node, "SELECT state FROM recipients") in ([("queued",)], [("deferred",)])   # next hop closed
    out = cli(node, "tenant", "remove", "acme", "--reason", "contract ended")
    assert "removed tenant acme (websofttt tenant restore acme brings it back)" in out and "credentials: 1" in out
    assert spool(node, f"SELECT r.state, m.data IS NULL FROM recipients r JOIN messages m ON m.id = r.queue_id "
                       f"WHERE m.id = '{queue_id}'") == [("dropped", 1)]
    with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
        client(node)
    assert refused.value.smtp_code == 535
    audit = json.loads(cli(node, "audit", "list", "--json"))
    assert audit[-1]["command"] == "tenant remove" and audit[-1]["reason"] == "contract ended"
    assert json.loads(cli(node, "tenant", "show", "acme", "--json"))["status"] == "removed"
    cli(node, "tenant", "resume", "acme", code=2)                    # a removed tenant is restored, not resumed

    assert "websofttt credential add acme USERNAME" in cli(node, "tenant", "restore", "acme")
    cli(node, "credential", "add", "acme", "app1", stdin=PASSWORD + "\n")
    with client(node) as c:
        assert c.mail("app@example.com")[0] == 250                  # its terms acceptance and domains stayed


def test_erase_waits_for_a_legal_hold_then_keeps_only_counts_and_global_suppressions(node):
    settings = load_settings(node.dir / "websofttt.toml")
    store = open_store(settings)
    try:
        suppression.add(store, "jane@example.net", "acme")
        suppression.add(store, "bob@example.net")                           # global: a recipient's opt-out
        dkimkeys.add_domain(store, "acme", "example.com", "s1")
        complaints.record(store, settings.policy, "acme", "jane@example.net", "abuse", "token", "t1", "arf")
        cases.open_case(store, "abuse", "reporter@example.org", "Buy now", "the whole message", "in-1", "acme",
                        "jane@example.net")
        hold = cli(node, "privacy", "hold", "--tenant", "acme", "--reason", "court order 7")
        out = cli(node, "tenant", "remove", "acme", "--reason", "contract ended", "--erase", code=1)
        assert "under legal hold: hold 1 (court order 7)" in out and "Nothing was removed" in out
        assert store.one("SELECT status FROM tenants WHERE id = 'acme'")["status"] == "active"
        cli(node, "privacy", "release", hold.split()[1], "--reason", "order lifted")

        out = json.loads(cli(node, "tenant", "remove", "acme", "--reason", "contract ended", "--erase", "--json"))
        assert out["removed"]["dkim_keys"] == 1 and out["removed"]["suppressions"] == 1
        assert [(r["address"], r["scope"]) for r in store.all("SELECT address, scope FROM suppressions")] == [
            ("bob@example.net", "global")]
        assert store.all("SELECT * FROM dkim_keys") == [] and store.all("SELECT * FROM credentials") == []
        assert store.all("SELECT tenant, recipient, token FROM complaints") == [
            {"tenant": "acme", "recipient": None, "token": None}]
        assert store.all("SELECT tenant, complainant, recipient, subject FROM cases") == [
            {"tenant": "acme", "complainant": "reporter@example.org", "recipient": None, "subject": None}]
        shown = json.loads(cli(node, "tenant", "show", "acme", "--json"))
        assert (shown["status"], shown["allowed_from"], shown["contact"]) == ("erased", [], None)
        assert "only a tenant removed without --erase can be restored" in cli(node, "tenant", "restore", "acme", code=2)
    finally:
        store.close()


@pytest.mark.parametrize("args, named", [
    (("tenant", "remove", "ghost", "--reason", "r"), "ghost"),
    (("tenant", "remove", "acme"), "--reason"),
    (("tenant", "restore", "acme"), "only a tenant removed without --erase"),
])
def test_remove_and_restore_name_what_is_wrong(node, args, named):
    assert named in cli(node, *args, code=2)
