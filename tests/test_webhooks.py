"""Webhooks from a running worker (submission + delivery) to a real receiver on loopback that answers 200, 500,
hangs or closes; every delivery verified with the `standardwebhooks` library, as a receiver would."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time

import aiohttp
import pytest
from aiohttp import web
from standardwebhooks import Webhook, WebhookVerificationError

from policy import tenants, webhooks
from relay.resolver import PublicOnly
from tests.conftest import PASSWORD, free_port, run_cli
from tests.test_abuse import wait_for
from tests.test_serve import client, node  # noqa: F401  (node: the fixture)
from tests.test_serve import send as send_one


class Receiver:
    """An aiohttp endpoint in a thread of its own: records each request, answers as `mode` says."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.requests: list[tuple[dict, bytes]] = []
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        threading.Thread(target=self._run, args=(ready,), daemon=True).start()
        assert ready.wait(10)

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)

        async def hook(request: web.Request) -> web.StreamResponse:
            body = await request.read()
            if self.mode == "hang":
                await asyncio.sleep(30)
            if self.mode == "close":
                assert request.transport is not None
                request.transport.close()
                return web.Response()
            self.requests.append((dict(request.headers), body))
            return web.Response(status=500 if self.mode == "fail" else 204)

        async def start() -> None:
            app = web.Application()
            app.router.add_post("/hook", hook)
            runner = web.AppRunner(app)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", self.port).start()
            ready.set()
        self.loop.run_until_complete(start())
        self.loop.run_forever()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def verified(self, secret: str) -> list[dict]:
        """Every request of a 2xx answer, verified with the secret, in the order received."""
        return [Webhook(secret).verify(body, headers) for headers, body in self.requests]


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.loop.call_soon_threadsafe(r.loop.stop)


@pytest.fixture
def relay(relay_factory, sink):
    relay = relay_factory(roles=("submission", "delivery"), delivery={"routes": {"example.net": ("127.0.0.1", sink.port)}},
                          webhooks={"allow_private_targets": True, "retry_first": 0.3, "timeout": 1.0})
    relay.add_tenant()
    relay.add_tenant("beta", username="app-beta")
    return relay


def send(relay, recipients: list[str], login=("app1", PASSWORD)) -> None:
    with relay.connect(login=login) as smtp:
        smtp.sendmail("app@example.com", recipients,
                      b"From: App <app@example.com>\r\nSubject: hi\r\nX-Campaign: spring\r\n\r\nHello.\r\n")


def test_each_event_is_posted_signed_in_order_and_only_to_its_tenant(relay, receiver):
    hook, secret = webhooks.add(relay.store, "acme", receiver.url, ["delivered"], allow_private=True)
    webhooks.add(relay.store, "beta", receiver.url + "?beta", ["delivered"], allow_private=True)
    send(relay, ["a@example.net", "b@example.net"])
    payloads = wait_for(lambda: len(receiver.requests) >= 2 and receiver.verified(secret))
    assert sorted((p["type"], p["data"]["recipient"], p["data"]["tenant"], p["data"]["campaign"]) for p in payloads) == [
        ("delivered", "a@example.net", "acme", "spring"), ("delivered", "b@example.net", "acme", "spring")]
    assert all(p["data"]["queue_id"] for p in payloads) and "Hello" not in json.dumps(payloads)     # no bodies
    time.sleep(1.5)
    assert len(receiver.requests) == 2                          # beta sent nothing: its endpoint got nothing


def test_a_receiver_down_for_a_while_gets_everything_after_in_order_under_the_same_ids(relay, receiver):
    hook, secret = webhooks.add(relay.store, "acme", receiver.url, ["delivered"], allow_private=True)
    receiver.mode = "fail"
    send(relay, ["a@example.net"])
    send(relay, ["b@example.net"])
    failing = wait_for(lambda: len(receiver.requests) >= 3 and receiver.requests)
    assert {h["webhook-id"] for h, _ in failing} == {failing[0][0]["webhook-id"]}       # the head, retried
    listed = webhooks.of_tenant(relay.store, "acme")[0]
    assert listed.status().startswith("retrying since") and listed.last_error == "HTTP 500"
    receiver.requests.clear()
    receiver.mode = "ok"
    payloads = wait_for(lambda: len(receiver.requests) >= 2 and receiver.verified(secret), timeout=30)
    assert [p["data"]["recipient"] for p in payloads] == ["a@example.net", "b@example.net"]
    ids = [h["webhook-id"] for h, _ in receiver.requests]
    assert len(set(ids)) == 2 and ids[0] == failing[0][0]["webhook-id"]
    assert webhooks.of_tenant(relay.store, "acme")[0].status() == "ok"
    time.sleep(1.5)
    assert len(receiver.requests) == 2                          # acknowledged: never again


@pytest.mark.parametrize("mode, errors", [("hang", ("TimeoutError", "ServerTimeoutError")),
                                           ("close", ("ServerDisconnectedError", "ClientOSError"))])
def test_a_receiver_that_hangs_or_closes_is_retried(relay, receiver, mode, errors):
    webhooks.add(relay.store, "acme", receiver.url, ["delivered"], allow_private=True)
    receiver.mode = mode
    send(relay, ["a@example.net"])
    hook = wait_for(lambda: (h := webhooks.of_tenant(relay.store, "acme")[0]).attempts >= 2 and h, timeout=20)
    assert hook.last_error.split(":")[0] in errors and hook.status().startswith("retrying")


def test_a_rotated_secret_signs_beside_the_old_one_for_a_day(relay, receiver):
    hook, old = webhooks.add(relay.store, "acme", receiver.url, ["delivered", "bounced"], allow_private=True)
    new = webhooks.rotate(relay.store, "acme", hook.id)
    send(relay, ["a@example.net"])
    wait_for(lambda: receiver.requests)
    headers, body = receiver.requests[0]
    assert len(headers["webhook-signature"].split()) == 2
    assert Webhook(old).verify(body, headers) == Webhook(new).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(webhooks.new_secret()).verify(body, headers)


def test_private_targets_are_refused_unless_allowed(relay, receiver):
    with pytest.raises(tenants.TenantError, match="https://"):
        webhooks.add(relay.store, "acme", receiver.url, ["delivered"], allow_private=False)

    async def resolve():
        return await PublicOnly(aiohttp.ThreadedResolver(), "webhooks.allow_private_targets").resolve("localhost",
                                                                                                      receiver.port)
    with pytest.raises(OSError, match="no public address"):
        asyncio.run(resolve())


def test_an_endpoint_is_claimed_by_one_node_at_a_time(any_store):
    """Two nodes' dispatchers share the store: while one holds an endpoint, the other is not given it."""
    tenants.add(any_store, "acme", ["example.com"], [], None)
    hook, _ = webhooks.add(any_store, "acme", "https://hooks.example/x", ["delivered"], allow_private=False)
    assert [h.id for h in webhooks.claim(any_store, lease=120)] == [hook.id]
    assert webhooks.claim(any_store, lease=120) == []                          # the other node
    assert webhooks.claim(any_store, lease=120, now=time.time() + 121) != []   # a node that died: the lease ends
    webhooks.release(any_store, hook)
    assert [h.id for h in webhooks.claim(any_store, lease=120, node="n1")] == [hook.id]
    assert webhooks.release_node(any_store, "n2") == 0                         # not n2's to give back
    assert webhooks.claim(any_store, lease=120) == []
    assert webhooks.release_node(any_store, "n1") == 1                         # n1 restarted after a kill
    assert [h.id for h in webhooks.claim(any_store, lease=120)] == [hook.id]


def test_webhook_commands(tmp_path, receiver):
    (tmp_path / "websofttt.toml").write_text('[node]\nname = "n1"\n[webhooks]\nallow_private_targets = true\n')
    for args in (["init"], ["tenant", "add", "acme", "--allow-from", "example.com"]):
        assert run_cli(*args, cwd=tmp_path).returncode == 0
    added = run_cli("webhook", "add", "acme", receiver.url, "--events", "delivered,complained", cwd=tmp_path)
    secret = added.stdout.strip()
    assert added.returncode == 0 and secret.startswith("whsec_") and "shown only now" in added.stderr
    listed = run_cli("webhook", "list", "acme", "--json", cwd=tmp_path)
    assert secret not in listed.stdout
    [hook] = json.loads(listed.stdout)
    assert (hook["url"], hook["events"], hook["status"]) == (receiver.url, ["delivered", "complained"], "ok")
    tested = run_cli("webhook", "test", "acme", str(hook["id"]), cwd=tmp_path)
    assert tested.returncode == 0 and receiver.verified(secret)[0]["type"] == "test"
    receiver.mode = "fail"
    failed = run_cli("webhook", "test", "acme", str(hook["id"]), cwd=tmp_path)
    assert failed.returncode == 1 and "HTTP 500" in failed.stderr
    assert run_cli("webhook", "add", "acme", receiver.url, "--events", "opened", cwd=tmp_path).returncode == 2
    assert run_cli("webhook", "remove", "acme", "99", cwd=tmp_path).returncode == 2
    assert run_cli("webhook", "remove", "acme", str(hook["id"]), cwd=tmp_path).returncode == 0


def test_kill_9_loses_no_event(node, receiver):
    """`serve` killed with SIGKILL while the receiver fails: after the restart the event arrives, same id."""
    with open(node.dir / "websofttt.toml", "a") as config:
        config.write('[webhooks]\nallow_private_targets = true\nretry_first = "0.5s"\n')
    added = run_cli("webhook", "add", "acme", receiver.url, "--events", "deferred", cwd=node.dir)
    secret = added.stdout.strip()
    receiver.mode = "fail"
    proc = node()
    with client(node) as c:
        send_one(c)                                   # its next hop is closed: a `deferred` event
    [(headers, _)] = wait_for(lambda: receiver.requests[:1], timeout=20)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    receiver.requests.clear()
    receiver.mode = "ok"
    node()
    [payload] = wait_for(lambda: receiver.verified(secret)[:1], timeout=30)
    assert payload["type"] == "deferred" and receiver.requests[0][0]["webhook-id"] == headers["webhook-id"]
