"""Operating a real `websofttt serve`: systemd readiness, SIGHUP reloads, JSON logs, /metrics over workers."""
from __future__ import annotations

import importlib.util
import io
import json
import logging
import os
import re
import shutil
import signal
import smtplib
import ssl
import time
import urllib.request
from contextlib import closing
from pathlib import Path

import pytest

from policy import cases, logs
from policy.keys import generate_tls_cert
from policy.store_sqlite import SqliteStore
from tests.conftest import PASSWORD
from tests.test_serve import client, node, send  # noqa: F401  (fixture)


def http_url(node, path: str) -> str:
    port = re.search(r'\[http\]\nlisten = \["127\.0\.0\.1:(\d+)"\]', (node.dir / "websofttt.toml").read_text()).group(1)
    return f"http://127.0.0.1:{port}{path}"


def peer_certificate(node) -> bytes:
    c = client(node)
    der = c.sock.getpeercert(binary_form=True)
    c.quit()
    return der


def wait_for_log(node, text: str, count: int = 1, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while (log := node.log()).count(text) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return log


def test_sighup_reloads_the_certificate_without_dropping_connections(node, tmp_path):
    proc = node()
    before = peer_certificate(node)
    open_session = client(node)
    fresh = tmp_path / "fresh"
    generate_tls_cert(fresh / "cert.pem", fresh / "key.pem", "relay.websofttt.com")
    for name in ("key.pem", "cert.pem"):
        shutil.copy(fresh / name, node.dir / "var" / "tls" / (name + ".new"))
        os.replace(node.dir / "var" / "tls" / (name + ".new"), node.dir / "var" / "tls" / name)
    os.kill(proc.pid, signal.SIGHUP)
    wait_for_log(node, "reloaded TLS certificate and DKIM keys", count=2)   # both workers
    assert peer_certificate(node) != before
    assert send(open_session)                    # the session opened before the reload goes on
    assert proc.poll() is None


def test_logs_are_json_lines_without_secrets(node):
    proc = node()
    c = client(node)
    queue_id = send(c)
    c.quit()
    wrong = smtplib.SMTP("127.0.0.1", node.port, timeout=10)
    wrong.starttls(context=ssl.create_default_context(cafile=str(node.dir / "var/tls/cert.pem")))
    with pytest.raises(smtplib.SMTPAuthenticationError):
        wrong.login("app1", "wrong-" + PASSWORD)
    wait_for_log(node, '"event": "auth_failure"')
    inbound_port = int(re.search(r'\[inbound\]\nlisten = \["127\.0\.0\.1:(\d+)"\]',
                                 (node.dir / "websofttt.toml").read_text()).group(1))
    with smtplib.SMTP("127.0.0.1", inbound_port, timeout=10) as mx:
        mx.sendmail("someone@example.org", ["postmaster@websofttt.com"],
                    b"From: someone@example.org\r\nSubject: hello\r\n\r\nhi\r\n")
    wait_for_log(node, '"event": "inbound"')
    os.kill(proc.pid, signal.SIGTERM)
    proc.wait(15)
    log = node.log()
    entries = []
    for line in log.splitlines():                                  # every line is one JSON object
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"not a JSON line in the log: {line!r}")
    assert {"time", "level", "logger", "message"} <= set(entries[0])
    events = {e["event"]: e for e in entries if "event" in e}
    assert events["queued"]["queue_id"] == queue_id and events["queued"]["tenant"] == "acme"
    assert events["received"]["tenant"] == "acme"
    assert events["auth_failure"]["reason"] == "bad_credentials"
    assert events["inbound"]["kind"] == "other" and not [e for e in entries if e["level"] == "error"]
    assert PASSWORD not in log and "app1" not in log
    assert "you@example.net" not in log and "y***@example.net" in log     # masked by default
    assert not re.search(r"(bounce|unsubscribe)\+[a-z2-7]{8}", log)


def not_json_object(line: str) -> bool:
    try:
        return not isinstance(json.loads(line), dict)
    except json.JSONDecodeError:
        return True


def test_serve_writes_only_json_without_flanker_parse_tables(node, tmp_path, monkeypatch):
    """As under systemd after an install: flanker without its PLY tables, in a read-only directory. Building
    its parsers prints nothing and writes no table (root writes despite the chmod, so that is checked too)."""
    copy = tmp_path / "site"
    installed = Path(importlib.util.find_spec("flanker").origin).parent
    shutil.copytree(installed, copy / "flanker", ignore=shutil.ignore_patterns("*parsetab*", "__pycache__"))
    directories = [copy, *(p for p in copy.rglob("*") if p.is_dir())]
    for directory in directories:
        directory.chmod(0o555)
    monkeypatch.setenv("PYTHONPATH", str(copy), prepend=os.pathsep)
    try:
        proc = node()
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        for directory in directories:
            directory.chmod(0o755)
    assert not list(copy.rglob("*parsetab*"))
    log = node.log()
    assert log and [line for line in log.splitlines() if not_json_object(line)] == []


def test_metrics_sum_every_worker_and_healthz(node):
    node()
    for _ in range(6):                       # one connection each: both workers get some
        c = client(node)
        send(c)
        c.quit()
    text = urllib.request.urlopen(http_url(node, "/metrics"), timeout=10).read().decode()
    assert 'websofttt_messages_received_total{tenant="acme"} 6.0' in text
    assert 'websofttt_recipients_queued_total{tenant="acme"} 6.0' in text
    assert "websofttt_queue_depth 6.0" in text                  # the next hop is closed: all still waiting
    assert 'websofttt_tenant_suspended{tenant="acme"} 0.0' in text
    assert "websofttt_complaint_rate_limit 0.003" in text
    assert "websofttt_cases_open 0.0" in text and "websofttt_case_oldest_open_age_seconds 0.0" in text
    with closing(SqliteStore(node.dir / "var/websofttt.sqlite")) as store:
        case_id = cases.open_case(store, "abuse", "jane@example.net", "spam", "", "in-1")
        store.execute("UPDATE cases SET opened = '2020-01-01T00:00:00Z' WHERE id = ?", [case_id])
    text = urllib.request.urlopen(http_url(node, "/metrics"), timeout=10).read().decode()
    age = float(re.search(r"^websofttt_case_oldest_open_age_seconds (\S+)$", text, re.M).group(1))
    assert "websofttt_cases_open 1.0" in text and age > 86400 * 365
    health = urllib.request.urlopen(http_url(node, "/healthz"), timeout=10)
    assert health.status == 200 and health.read() == b"ok: store, spool\n"


def test_every_logger_writes_json_with_tokens_cut_out():
    root = logging.getLogger()
    saved = root.handlers[:], root.level, logging.getLogger("mail.log").level
    out = io.StringIO()
    try:
        logs.setup(mask_recipients=False, stream=out)
        logging.getLogger("aiosmtplib").warning("MAIL FROM:<bounce+abcdefghijklmnopqrstuvwxyz234567ab@b.example>")
        logging.getLogger("aiohttp.access").info("GET /u/abcdefghijklmnopqrstuvwxyz234567ab 200")
        logs.event("delivered", queue_id="q1", tenant="acme", recipient="jane@example.net", reply="250 ok")
    finally:
        root.handlers[:], _, _ = saved
        root.setLevel(saved[1])
        logging.getLogger("mail.log").setLevel(saved[2])
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["message"] for line in lines[:2]] == ["MAIL FROM:<bounce+…@b.example>", "GET /u/… 200"]
    assert {k: lines[2][k] for k in ("event", "queue_id", "tenant", "recipient", "reply")} == {
        "event": "delivered", "queue_id": "q1", "tenant": "acme", "recipient": "jane@example.net", "reply": "250 ok"}
