"""The store's schema: named migrations in SQL that both engines run, applied once each, in order.

Written in SQLite's spelling; the PostgreSQL backend translates the few type names that differ
(`to_postgres`): an `INTEGER PRIMARY KEY` is a row id (an identity column there), INTEGER is 64-bit,
REAL a double, BLOB a bytea. Never edit a migration that has shipped: add a new one.
"""
from __future__ import annotations

import re

MIGRATIONS: list[tuple[str, tuple[str, ...]]] = [
    ("0001_initial_schema", (
        """CREATE TABLE tenants (id TEXT PRIMARY KEY, status TEXT NOT NULL DEFAULT 'active', reason TEXT,
           terms_version TEXT, allowed_from TEXT DEFAULT '[]', networks TEXT DEFAULT '[]', rate TEXT,
           created TEXT NOT NULL)""",
        """CREATE TABLE credentials (username TEXT PRIMARY KEY, tenant TEXT NOT NULL REFERENCES tenants(id),
           hash TEXT NOT NULL, created TEXT NOT NULL, last_used TEXT)""",
        "CREATE INDEX idx_credentials_tenant ON credentials (tenant)",
        """CREATE TABLE suppressions (scope TEXT, address TEXT, cause TEXT NOT NULL, source TEXT,
           created TEXT NOT NULL, expires TEXT, PRIMARY KEY (address, scope))""",
        "CREATE TABLE counters (key TEXT PRIMARY KEY, started REAL, count INTEGER)",
        """CREATE TABLE events (id INTEGER PRIMARY KEY, time TEXT, kind TEXT, tenant TEXT, queue_id TEXT,
           recipient TEXT, detail TEXT)""",
        "CREATE INDEX idx_events_queue_id ON events (queue_id)",
        """CREATE TABLE audit (id INTEGER PRIMARY KEY, time TEXT, os_user TEXT, command TEXT, shown TEXT,
           reason TEXT)""",
        "CREATE TABLE secrets (name TEXT PRIMARY KEY, value TEXT, created TEXT)",
    )),
    ("0002_sent_copies", (
        """CREATE TABLE sent (token TEXT PRIMARY KEY, tenant TEXT NOT NULL, recipient TEXT NOT NULL,
           message_id TEXT, queue_id TEXT NOT NULL, created TEXT NOT NULL, expires TEXT NOT NULL)""",
        "CREATE INDEX idx_sent_expires ON sent (expires)",
        "CREATE INDEX idx_sent_message_id ON sent (message_id)",
    )),
    ("0003_tenant_dkim_keys", (
        """CREATE TABLE dkim_keys (domain TEXT PRIMARY KEY, tenant TEXT NOT NULL REFERENCES tenants(id),
           selector TEXT NOT NULL, private_pem TEXT NOT NULL, created TEXT NOT NULL)""",
    )),
    ("0004_tenant_names", ("ALTER TABLE tenants ADD COLUMN name TEXT",)),
    ("0005_sent_by_recipient", ("CREATE INDEX idx_sent_recipient ON sent (recipient)",)),
    ("0006_bounce_events", (
        """CREATE TABLE bounces (id INTEGER PRIMARY KEY, time TEXT NOT NULL, tenant TEXT NOT NULL,
           recipient TEXT NOT NULL, status TEXT, class TEXT NOT NULL, source TEXT)""",
        "CREATE INDEX idx_bounces_tenant_time ON bounces (tenant, time)",
    )),
    ("0007_abuse_desk", (
        """CREATE TABLE complaints (id INTEGER PRIMARY KEY, received TEXT NOT NULL, tenant TEXT NOT NULL,
           recipient TEXT, feedback_type TEXT NOT NULL, identified_by TEXT NOT NULL, counted INTEGER NOT NULL,
           token TEXT, source TEXT, case_id TEXT, user_agent TEXT, source_ip TEXT, reported_domain TEXT,
           arrival_date TEXT)""",
        "CREATE INDEX idx_complaints_tenant_received ON complaints (tenant, received)",
        "CREATE UNIQUE INDEX idx_complaints_token ON complaints (token)",   # one complaint per copy
        """CREATE TABLE cases (id TEXT PRIMARY KEY, kind TEXT NOT NULL, opened TEXT NOT NULL, complainant TEXT,
           subject TEXT, evidence TEXT, tenant TEXT, recipient TEXT, status TEXT NOT NULL, inbound_id TEXT,
           acknowledged INTEGER)""",
        "CREATE INDEX idx_cases_opened ON cases (opened)",
        "CREATE INDEX idx_cases_inbound_id ON cases (inbound_id)",
        """CREATE TABLE outbox (id TEXT PRIMARY KEY, created TEXT NOT NULL, recipient TEXT NOT NULL,
           raw BLOB NOT NULL, claimed REAL)""",
        """CREATE TABLE activity (tenant TEXT, hour TEXT, delivered INTEGER DEFAULT 0, failed INTEGER DEFAULT 0,
           PRIMARY KEY (tenant, hour))""",
        "ALTER TABLE tenants ADD COLUMN resumed TEXT",
    )),
    ("0008_received_counts", ("ALTER TABLE activity ADD COLUMN received INTEGER NOT NULL DEFAULT 0",)),
    ("0009_provider_key_rotation", (
        """CREATE TABLE provider_dkim_keys (selector TEXT PRIMARY KEY, private_pem TEXT NOT NULL,
           created TEXT NOT NULL, active_from TEXT NOT NULL)""",
    )),
    ("0010_tenant_contact", ("ALTER TABLE tenants ADD COLUMN contact TEXT",)),
    ("0011_legal_holds", (
        """CREATE TABLE holds (id INTEGER PRIMARY KEY, address TEXT, tenant TEXT, reason TEXT NOT NULL,
           created TEXT NOT NULL, until TEXT, released TEXT, release_reason TEXT)""",
    )),
    ("0012_terms_versions", (
        """CREATE TABLE terms (version TEXT PRIMARY KEY, published TEXT NOT NULL, effective TEXT NOT NULL,
           summary TEXT NOT NULL, url TEXT)""",
        """CREATE TABLE terms_accepted (tenant TEXT NOT NULL, version TEXT NOT NULL, accepted TEXT NOT NULL,
           PRIMARY KEY (tenant, version))""",
        """CREATE TABLE terms_notices (tenant TEXT NOT NULL, version TEXT NOT NULL, kind TEXT NOT NULL,
           sent TEXT NOT NULL, recipient TEXT NOT NULL, queue_id TEXT NOT NULL, PRIMARY KEY (tenant, version, kind))""",
    )),
    ("0013_api_keys", (
        """CREATE TABLE api_keys (hash TEXT PRIMARY KEY, tenant TEXT NOT NULL, name TEXT NOT NULL, scope TEXT NOT NULL,
           created TEXT NOT NULL, last_used TEXT, UNIQUE (tenant, name))""",
    )),
    ("0014_idempotency_keys", (
        """CREATE TABLE idempotency (tenant TEXT NOT NULL, key TEXT NOT NULL, created TEXT NOT NULL, status INTEGER,
           body TEXT, PRIMARY KEY (tenant, key))""",
    )),
    ("0015_webhooks", (
        """CREATE TABLE webhooks (id INTEGER PRIMARY KEY, tenant TEXT NOT NULL, url TEXT NOT NULL, events TEXT NOT NULL,
           secret TEXT NOT NULL, old_secret TEXT, old_until REAL, created TEXT NOT NULL, cursor INTEGER NOT NULL,
           attempts INTEGER NOT NULL DEFAULT 0, next_attempt REAL NOT NULL DEFAULT 0, failing_since REAL,
           last_error TEXT, claimed_until REAL NOT NULL DEFAULT 0)""",
    )),
    ("0016_event_campaigns", ("ALTER TABLE events ADD COLUMN campaign TEXT",)),
    ("0017_case_work", (
        "ALTER TABLE cases ADD COLUMN assignee TEXT",
        "ALTER TABLE cases ADD COLUMN closed TEXT",
        "ALTER TABLE cases ADD COLUMN resolution TEXT",
        """CREATE TABLE case_history (id INTEGER PRIMARY KEY, case_id TEXT NOT NULL, time TEXT NOT NULL,
           author TEXT NOT NULL, action TEXT NOT NULL, text TEXT)""",
        "CREATE INDEX idx_case_history_case ON case_history (case_id)",
    )),
    ("0018_shaping_actions", (
        """CREATE TABLE shaping_actions (id INTEGER PRIMARY KEY, site TEXT NOT NULL, kind TEXT NOT NULL,
           factor REAL NOT NULL DEFAULT 1, until REAL NOT NULL, reason TEXT NOT NULL, rule TEXT NOT NULL,
           created TEXT NOT NULL)""",
        "CREATE INDEX idx_shaping_actions_until ON shaping_actions (until)",
    )),
    ("0019_webhook_claimed_by", ("ALTER TABLE webhooks ADD COLUMN claimed_by TEXT",)),
    ("0020_tenant_pools", ("ALTER TABLE tenants ADD COLUMN pool TEXT",)),
    ("0021_shaping_action_source", ("ALTER TABLE shaping_actions ADD COLUMN source TEXT NOT NULL DEFAULT ''",)),
    ("0022_shaping_pace", ("CREATE TABLE shaping_pace (site TEXT PRIMARY KEY, tat REAL NOT NULL)",)),
    ("0023_transport_security", (
        """CREATE TABLE mta_sts_policies (domain TEXT PRIMARY KEY, policy_id TEXT NOT NULL, mode TEXT NOT NULL,
           mx TEXT NOT NULL, max_age INTEGER NOT NULL, fetched REAL NOT NULL)""",
        """CREATE TABLE tls_sessions (day TEXT NOT NULL, domain TEXT NOT NULL, policy_type TEXT NOT NULL,
           policy TEXT NOT NULL, mx_host TEXT NOT NULL, address TEXT NOT NULL, result TEXT NOT NULL,
           sending_ip TEXT NOT NULL, sessions INTEGER NOT NULL,
           PRIMARY KEY (day, domain, policy_type, policy, mx_host, address, result, sending_ip))""",
        """CREATE TABLE tls_reports_sent (day TEXT NOT NULL, domain TEXT NOT NULL, node TEXT NOT NULL,
           PRIMARY KEY (day, domain))""",
    )),
]

_TYPES = re.compile(r"\b(INTEGER PRIMARY KEY|INTEGER|REAL|BLOB)\b")
_POSTGRES_TYPES = {"INTEGER PRIMARY KEY": "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
                   "INTEGER": "BIGINT", "REAL": "DOUBLE PRECISION", "BLOB": "BYTEA"}


def to_postgres(ddl: str) -> str:
    return _TYPES.sub(lambda m: _POSTGRES_TYPES[m.group(1)], ddl)
