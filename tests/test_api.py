"""The tenant API (/v1/) on a running HTTP role, reached over loopback by a real HTTP client, with real SMTP
submission beside it: keys, errors, throttling, audit, and a suppression added by the API refused at RCPT."""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest
from openapi_spec_validator import validate

from policy import apikeys, complaints, suppression, tenants
from policy.settings import Rate
from relay.api import make_api, openapi
from tests.conftest import message, run_cli

KEY_HEADER = "Authorization"


@pytest.fixture
def api(relay_factory):
    """submission + http roles in one worker, tenants acme (key crm: write, key ro: read) and beta (key b)."""
    relay = relay_factory(roles=("submission", "http"), http={"api_rate": Rate(1000, 60)}, auth_failures=3)
    relay.add_tenant()
    relay.add_tenant("beta", username="app-beta")
    relay.keys = {"crm": apikeys.add(relay.store, "acme", "crm", "write")[1],
                  "ro": apikeys.add(relay.store, "acme", "ro", "read")[1],
                  "beta": apikeys.add(relay.store, "beta", "b", "write")[1]}
    relay.http_port = relay.ports["http"][0]
    return relay


def call(relay, method: str, path: str, key: str | None = "crm", body=None, raw: bytes | None = None,
         headers: dict | None = None) -> tuple[int, dict, dict]:
    """(status, JSON body or {}, headers) of one request."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(f"http://127.0.0.1:{relay.http_port}/v1{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json", **(headers or {})})
    if key:
        request.add_header(KEY_HEADER, f"Bearer {relay.keys.get(key, key)}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            text = response.read()
            return response.status, json.loads(text) if text else {}, dict(response.headers)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read()), dict(e.headers)


def test_the_openapi_document_is_valid_and_describes_every_route(api):
    status, document, _ = call(api, "GET", "/openapi.json", key=None)
    assert status == 200 and document == json.loads(json.dumps(openapi.DOCUMENT))
    validate(document)
    routes = {(r.method, r.resource.canonical) for r in make_api(api.settings, api.store).router.routes()
              if r.method != "HEAD" and r.resource and r.resource.canonical != "/openapi.json"}
    documented = {(m.upper(), path) for path, item in document["paths"].items() for m in item if m != "parameters"}
    assert routes == documented


def test_an_app_manages_its_list_and_the_relay_applies_it_at_rcpt(api):
    with api.connect() as smtp:
        smtp.mail("app@example.com")
        assert smtp.rcpt("jane@example.net")[0] == 250
        smtp.rset()
        status, entry, _ = call(api, "PUT", "/suppressions/Jane@Example.net", body={"cause": "unsubscribe"})
        assert status == 201 and (entry["address"], entry["cause"], entry["source"]) == (
            "jane@example.net", "unsubscribe", "api:crm")
        smtp.mail("app@example.com")
        code, text = smtp.rcpt("jane@example.net")
        assert code == 550 and text.decode().startswith("5.7.1") and "unsubscribed" in text.decode()
        assert call(api, "PUT", "/suppressions/jane@example.net", body={"cause": "manual"})[:2] == (200, entry)
        assert call(api, "GET", "/suppressions/jane@example.net", key="ro")[:2] == (200, entry)
        assert call(api, "DELETE", "/suppressions/jane@example.net")[0] == 204
        assert call(api, "DELETE", "/suppressions/jane@example.net")[0] == 404
        smtp.rset()
        smtp.mail("app@example.com")
        assert smtp.rcpt("jane@example.net")[0] == 250
    audit = api.store.all("SELECT command, shown, reason FROM audit")
    assert {"command": "api PUT /v1/suppressions/Jane@Example.net", "shown": "j***@example.net",
            "reason": "API key acme/crm"} in audit
    assert {"command": "api GET /v1/suppressions/jane@example.net", "shown": "j***@example.net",
            "reason": "API key acme/ro"} in audit


def test_pages_imports_and_the_global_list_stays_out_of_reach(api):
    suppression.add(api.store, "global@example.net")                            # the operator's, for everyone
    status, summary, _ = call(api, "POST", "/suppressions:import",
                              body={"addresses": ["a@example.net", "b@example.net", "not an address", "a@example.net"],
                                    "cause": "complaint"})
    assert status == 200 and (summary["added"], summary["already_present"], summary["invalid"]) == (2, 1, 1)
    call(api, "PUT", "/suppressions/c@example.net", body={})
    status, first, _ = call(api, "GET", "/suppressions?limit=2")
    assert status == 200 and [e["address"] for e in first["data"]] == ["a@example.net", "b@example.net"]
    status, second, _ = call(api, "GET", f"/suppressions?limit=2&cursor={first['next_cursor']}")
    assert [e["address"] for e in second["data"]] == ["c@example.net"] and second["next_cursor"] is None
    assert call(api, "GET", "/suppressions/global@example.net")[0] == 404
    assert call(api, "DELETE", "/suppressions/global@example.net")[0] == 404
    assert suppression.get(api.store, "global", "global@example.net") is not None
    # another tenant's entries do not exist for this key
    assert call(api, "GET", "/suppressions/a@example.net", key="beta")[0] == 404
    assert call(api, "GET", "/suppressions", key="beta")[1]["data"] == []


@pytest.mark.parametrize("method, path, body, raw, status, code, named", [
    ("PUT", "/suppressions/not-an-address", {}, None, 400, "bad_address", "not-an-address"),
    ("PUT", "/suppressions/x@example.net", {"cause": "whim"}, None, 422, "bad_cause", "manual"),
    ("PUT", "/suppressions/x@example.net", None, b"{not json", 400, "bad_json", "JSON object"),
    ("POST", "/suppressions:import", {"addresses": ["x@example.net"] * 10_001}, None, 413, "too_many", "10000"),
    ("POST", "/suppressions:import", {"addresses": "x@example.net"}, None, 422, "bad_addresses", "list"),
    ("GET", "/suppressions?limit=0", None, None, 400, "bad_limit", "limit"),
    ("GET", "/suppressions?cursor=%%%", None, None, 400, "bad_cursor", "cursor"),
    ("GET", "/nowhere", None, None, 404, "not_found", ""),
    ("PATCH", "/suppressions/x@example.net", {}, None, 405, "method_not_allowed", ""),
])
def test_bad_requests_get_one_json_error_shape(api, method, path, body, raw, status, code, named):
    got, answer, _ = call(api, method, path, body=body, raw=raw)
    assert (got, answer["error"]["code"]) == (status, code) and named in answer["error"]["message"]


def test_keys_scope_suspension_and_removal(api):
    status, answer, headers = call(api, "GET", "/suppressions", key=None)
    assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer") and answer["error"]["code"] == "unauthorized"
    assert call(api, "PUT", "/suppressions/x@example.net", key="ro", body={})[1]["error"]["code"] == "insufficient_scope"
    tenants.suspend(api.store, "acme", "complaints under review")
    status, answer, _ = call(api, "GET", "/suppressions")
    assert status == 403 and "suspended: complaints under review" in answer["error"]["message"]
    tenants.resume(api.store, "acme")
    apikeys.remove(api.store, "acme", "crm")
    assert call(api, "GET", "/suppressions")[0] == 401
    assert [k.name for k in apikeys.of_tenant(api.store, "acme")] == ["ro"]
    assert apikeys.of_tenant(api.store, "acme")[0].last_used is not None


def test_wrong_keys_lock_the_client_address_out_and_each_key_has_a_rate(relay_factory):
    relay = relay_factory(roles=("http",), http={"api_rate": Rate(3, 60)}, auth_failures=3)
    relay.add_tenant(username=None)
    relay.keys = {"crm": apikeys.add(relay.store, "acme", "crm", "read")[1]}
    relay.http_port = relay.ports["http"][0]
    for _ in range(3):
        assert call(relay, "GET", "/suppressions")[0] == 200
    status, answer, headers = call(relay, "GET", "/suppressions")
    assert (status, answer["error"]["code"], headers["Retry-After"]) == (429, "rate_limited", "60")
    for _ in range(3):
        assert call(relay, "GET", "/suppressions", key="wst_api_guess")[0] == 401
    status, answer, headers = call(relay, "GET", "/suppressions", key="wst_api_guess")
    assert (status, answer["error"]["code"]) == (429, "locked_out") and int(headers["Retry-After"]) > 0


def test_apikey_commands_print_the_key_once_and_never_list_it(tmp_path):
    (tmp_path / "websofttt.toml").write_text('[node]\nname = "n1"\n')
    for args in (["init"], ["tenant", "add", "acme", "--allow-from", "example.com"]):
        assert run_cli(*args, cwd=tmp_path).returncode == 0
    added = run_cli("apikey", "add", "acme", "--name", "crm", "--scope", "write", cwd=tmp_path)
    key = added.stdout.strip()
    assert added.returncode == 0 and key.startswith("wst_api_") and len(key) >= 8 + 43 and "shown only now" in added.stderr
    listed = run_cli("apikey", "list", "acme", "--json", cwd=tmp_path)
    assert key not in listed.stdout and [(k["name"], k["scope"]) for k in json.loads(listed.stdout)] == [("crm", "write")]
    assert run_cli("apikey", "add", "acme", "--name", "crm", cwd=tmp_path).returncode == 2        # names are unique
    assert run_cli("apikey", "add", "ghost", cwd=tmp_path).returncode == 2
    assert run_cli("apikey", "remove", "acme", "crm", cwd=tmp_path).returncode == 0
    assert run_cli("apikey", "remove", "acme", "crm", cwd=tmp_path).returncode == 2


def wait_events(relay, path: str, count: int, key: str = "crm") -> list[dict]:
    """The events at `path` once there are `count` (they are served SETTLE seconds after they are written)."""
    deadline = time.monotonic() + 20
    while True:
        data = call(relay, "GET", path, key=key)[1]["data"]
        if len(data) >= count or time.monotonic() > deadline:
            return data
        time.sleep(0.3)


def test_an_app_follows_its_messages_through_events_and_catches_up(relay_factory, sink):
    relay = relay_factory(roles=("submission", "delivery", "http"),
                          delivery={"routes": {"example.net": ("127.0.0.1", sink.port)}})
    relay.add_tenant()
    relay.add_tenant("beta", username="app-beta")
    relay.keys = {"crm": apikeys.add(relay.store, "acme", "crm", "read")[1],
                  "beta": apikeys.add(relay.store, "beta", "b", "read")[1]}
    relay.http_port = relay.ports["http"][0]
    recipients = [f"r{i}@example.net" for i in range(5)]
    with relay.connect() as smtp:
        smtp.sendmail("app@example.com", recipients, message())
    [(queue_id,)] = relay.spool_rows("SELECT id FROM messages")
    delivered = wait_events(relay, "/events", 5)
    assert sorted((e["type"], e["recipient"], e["queue_id"]) for e in delivered) == [
        ("delivered", r, queue_id) for r in recipients]
    status, message_state, _ = call(relay, "GET", f"/messages/{queue_id}")
    assert status == 200 and {(r["address"], r["state"], r["attempts"]) for r in message_state["recipients"]} == {
        (r, "delivered", 1) for r in recipients}
    assert call(relay, "GET", f"/messages/{queue_id}", key="beta")[0] == 404       # not found, never forbidden
    assert call(relay, "GET", "/events", key="beta")[1]["data"] == []

    cursor = call(relay, "GET", "/events")[1]["next_cursor"]
    token = relay.store.one("SELECT token FROM sent WHERE recipient = 'r0@example.net'")["token"]
    complaints.record(relay.store, relay.settings.policy, "acme", "r0@example.net", "abuse", "token", token, "test")
    one_click = urllib.request.Request(f"http://127.0.0.1:{relay.http_port}/u/"
                                       + relay.store.one("SELECT token FROM sent WHERE recipient = 'r1@example.net'")["token"],
                                       data=b"List-Unsubscribe=One-Click", method="POST")
    assert urllib.request.urlopen(one_click, timeout=10).status == 200
    later = wait_events(relay, f"/events?after={cursor}", 2)
    assert [(e["type"], e["recipient"], e["queue_id"]) for e in later] == [
        ("complained", "r0@example.net", queue_id), ("unsubscribed", "r1@example.net", queue_id)]
    only = call(relay, "GET", f"/events?type=unsubscribed&after={cursor}")[1]
    assert [e["recipient"] for e in only["data"]] == ["r1@example.net"]
    assert call(relay, "GET", f"/events?after={only['next_cursor']}&type=unsubscribed")[1]["data"] == []

    today = time.strftime("%Y-%m-%d", time.gmtime())
    status, days, _ = call(relay, "GET", f"/stats?from={today}&to={today}")
    assert status == 200 and days["min_count"] == 5
    assert [(d["day"], d["delivered"], d["complaints"]) for d in days["data"]] == [(today, 5, None)]   # 1 < k: null
    for path, code in (("/events?after=x", "bad_cursor"), ("/events?type=opened", "bad_type"),
                       ("/stats?from=yesterday", "bad_date"), (f"/stats?from={today}&to=2000-01-01", "bad_date")):
        assert call(relay, "GET", path)[1]["error"]["code"] == code
