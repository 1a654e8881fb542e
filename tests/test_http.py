"""The one-click unsubscribe endpoint over a real aiohttp server and a real SQLite store."""
from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from inbound.http import choose_language, make_app
from policy.addresses import mask
from policy import sent, suppression, tenants
from policy.store import Store
from policy.store_sqlite import SqliteStore
from policy.tokens import TokenKeys, ensure_secret
from relay import eventloop

RECIPIENT = "jane@example.net"
MASKED = "j***@example.net"
HTML = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
ONE_CLICK = {"List-Unsubscribe": "One-Click"}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


@dataclass
class Env:
    store: Store
    keys: TokenKeys
    token: str

    def run(self, scenario: Callable[[TestClient], Awaitable[Any]]) -> Any:
        """Run `scenario` against the app served on 127.0.0.1:<ephemeral> (no pytest-asyncio needed)."""
        async def main() -> Any:
            async with TestClient(TestServer(make_app(self.store, self.keys), host="127.0.0.1")) as client:
                return await scenario(client)
        return eventloop.run(main())

    def suppressed(self, tenant: str = "acme") -> suppression.Suppression | None:
        return suppression.find(self.store, tenant, RECIPIENT)


@pytest.fixture
def env(tmp_path: Path):
    store = SqliteStore(tmp_path / "store.sqlite")
    store.migrate()
    ensure_secret(store, None)
    keys = TokenKeys.load(store, None)
    tenants.add(store, "acme", ["example.com"], [], None, name="Acme Inc.")
    tenants.add(store, "other", ["example.org"], [], None, name="Other Ltd")
    token = keys.issue()
    sent.record(store, token, "acme", RECIPIENT, "<m@x>", "q1", 86400)
    yield Env(store, keys, token)
    store.close()


class Page(HTMLParser):
    """What a test needs from a page; also checks that every non-void element is closed in order."""
    VOID = {"meta", "input", "br", "img", "link", "hr"}

    def __init__(self, text: str):
        super().__init__()
        self.doctype: str | None = None
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.stack: list[str] = []
        self.text: list[str] = []
        self.feed(text)
        self.close()
        assert not self.stack, f"unclosed elements: {self.stack}"

    def handle_decl(self, decl: str) -> None:
        self.doctype = decl

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes {self.stack[-1:]}"
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        if self.stack and self.stack[-1] not in ("style", "title"):
            self.text.append(data)

    def find(self, tag: str) -> list[dict[str, str | None]]:
        return [attrs for t, attrs in self.tags if t == tag]

    @property
    def visible(self) -> str:
        return " ".join(" ".join(self.text).split())


def check_page(text: str, lang: str = "en") -> Page:
    """The page requirements shared by every state: HTML5 head, no scripts, nothing loaded from elsewhere."""
    page = Page(text)
    assert page.doctype and page.doctype.lower() == "doctype html"
    assert page.find("html") == [{"lang": lang}]
    metas = page.find("meta")
    assert {"charset": "utf-8"} in metas
    assert {"name": "viewport", "content": "width=device-width, initial-scale=1"} in metas
    assert len(page.find("title")) == 1
    assert not page.find("script") and not page.find("img") and not page.find("link")
    assert "http://" not in text and "https://" not in text and "url(" not in text
    assert RECIPIENT not in text
    return page


def check_headers(resp) -> None:
    for name, value in SECURITY_HEADERS.items():
        assert resp.headers.get(name) == value, name
    assert "Set-Cookie" not in resp.headers


def test_one_click_post_suppresses_for_that_tenant_only(env, caplog):
    caplog.set_level(logging.DEBUG, logger="websofttt")

    async def scenario(client):
        resp = await client.post(f"/u/{env.token}", data=ONE_CLICK, headers={"Accept": "*/*"})
        return resp.status, resp.content_type, await resp.text(), resp
    status, ctype, text, resp = env.run(scenario)
    assert status == 200 and ctype == "text/plain"           # a mail robot, not a browser
    assert text.strip() == f"You have been unsubscribed from mail by Acme Inc. sent to {MASKED}."
    check_headers(resp)
    row = env.suppressed()
    assert row is not None and (row.scope, row.cause, row.source) == ("acme", "unsubscribe", "one-click")
    assert suppression.find(env.store, "other", RECIPIENT) is None
    assert env.token not in caplog.text and RECIPIENT not in caplog.text


def test_post_from_the_page_form_gets_html_confirmation_and_is_idempotent(env):
    async def scenario(client):
        out = []
        for _ in range(2):
            resp = await client.post(f"/u/{env.token}", data=ONE_CLICK, headers=HTML)
            out.append((resp.status, resp.content_type, await resp.text()))
            check_headers(resp)
        return out
    first, second = env.run(scenario)
    assert first == second
    status, ctype, text = first
    assert status == 200 and ctype == "text/html"
    page = check_page(text)
    assert f"You have been unsubscribed from mail by Acme Inc. sent to {MASKED}." in page.visible
    assert not page.find("form")
    assert len(suppression.entries(env.store)) == 1


def test_get_shows_one_post_form_and_never_suppresses(env):
    async def scenario(client):
        out = []
        for method in ("GET", "HEAD", "GET"):
            resp = await client.request(method, f"/u/{env.token}")
            out.append((resp.status, await resp.text()))
            check_headers(resp)
        return out
    (status, text), (head_status, _), _ = env.run(scenario)
    assert status == 200 and head_status == 200
    assert env.suppressed() is None and suppression.entries(env.store) == []
    page = check_page(text)
    forms = page.find("form")
    assert len(forms) == 1 and forms[0].get("method") == "post" and "action" not in forms[0]
    assert {"type": "hidden", "name": "List-Unsubscribe", "value": "One-Click"} in page.find("input")
    assert [b.get("type") for b in page.find("button")] == ["submit"]
    assert "Acme Inc." in page.visible and MASKED in page.visible
    assert "Unsubscribe" in page.visible


def test_get_after_post_shows_already_unsubscribed(env):
    async def scenario(client):
        assert (await client.post(f"/u/{env.token}", data=ONE_CLICK)).status == 200
        resp = await client.get(f"/u/{env.token}")
        return resp.status, await resp.text()
    status, text = env.run(scenario)
    page = check_page(text)
    assert status == 200
    assert f"You are already unsubscribed from mail by Acme Inc. sent to {MASKED}." in page.visible
    assert not page.find("form") and not page.find("button")


def flipped(token: str, i: int) -> str:
    return token[:i] + ("b" if token[i] != "b" else "c") + token[i + 1:]


def test_forged_unknown_and_garbage_tokens_are_404_and_suppress_nothing(env, caplog):
    caplog.set_level(logging.INFO, logger="websofttt")
    other_key = TokenKeys({1: os.urandom(32)}).issue()        # a well-formed token under a key we do not have
    unrecorded = env.keys.issue()                             # ours, but no sent copy stands behind it
    bad = [flipped(env.token, i) for i in range(len(env.token))]
    bad += [other_key, unrecorded, "not-a-token!", "a" * 200, "%2e%2e", "0189"]

    async def scenario(client):
        out = []
        for token in bad:
            post = await client.post(f"/u/{token}", data=ONE_CLICK, headers=HTML)
            get = await client.get(f"/u/{token}")
            check_headers(post)
            out.append((token, post.status, get.status, await get.text()))
        return out
    results = env.run(scenario)
    for token, post_status, get_status, _ in results:
        assert (post_status, get_status) == (404, 404), token
    page = check_page(results[0][3])
    assert "not valid" in page.visible and not page.find("form")
    assert suppression.entries(env.store) == []
    assert "unsubscribe token" in caplog.text                 # rejections are logged ...
    assert not any(token in caplog.text for token in [env.token, *bad[:-4]])   # ... without the token


def test_expired_copy_is_404(env):
    token = env.keys.issue()
    sent.record(env.store, token, "acme", "late@example.net", None, "q2", -1)
    status = env.run(lambda c: _status(c.post(f"/u/{token}", data=ONE_CLICK)))
    assert status == 404 and suppression.entries(env.store) == []


async def _status(request) -> int:
    return (await request).status


def test_upper_case_token_works(env):
    status = env.run(lambda c: _status(c.post(f"/u/{env.token.upper()}", data=ONE_CLICK)))
    assert status == 200 and env.suppressed() is not None


def test_multipart_one_click_body_is_accepted(env):
    """RFC 8058 allows the body as multipart/form-data too."""
    form = aiohttp.FormData(ONE_CLICK, default_to_multipart=True)

    async def scenario(client):
        resp = await client.post(f"/u/{env.token}", data=form)
        assert resp.content_type == "text/plain"
        return resp.status
    assert env.run(scenario) == 200 and env.suppressed() is not None


@pytest.mark.parametrize("data", [None, {}, {"List-Unsubscribe": "Yes"}, {"Unsubscribe": "One-Click"},
                                  "List-Unsubscribe=one-click"])
def test_missing_or_wrong_body_is_400(env, data):
    headers = {"Content-Type": "application/x-www-form-urlencoded"} if isinstance(data, str) else {}

    async def scenario(client):
        resp = await client.post(f"/u/{env.token}", data=data, headers=headers)
        check_headers(resp)
        return resp.status
    assert env.run(scenario) == 400
    assert suppression.entries(env.store) == []


@pytest.mark.parametrize("header, lang, phrase", [
    ("de", "de", "Keine E-Mails mehr von Acme Inc. an"),
    ("de-AT,de;q=0.9", "de", "Abmelden"),
    ("fr;q=0.9, en;q=0.8", "fr", "Ne plus recevoir les e-mails de Acme Inc."),
    ("es-ES", "es", "Darse de baja"),
    ("en;q=0.5, de", "de", "Abmelden"),
    ("xx", "en", "Stop mail from Acme Inc."),
    ("", "en", "Stop mail from Acme Inc."),
])
def test_language_from_accept_language(env, header, lang, phrase):
    async def scenario(client):
        resp = await client.get(f"/u/{env.token}", headers={"Accept-Language": header})
        return resp.headers.get("Content-Language"), await resp.text()
    content_language, text = env.run(scenario)
    page = check_page(text, lang)
    assert content_language == lang and phrase in page.visible and MASKED in page.visible


def test_german_confirmation(env):
    async def scenario(client):
        resp = await client.post(f"/u/{env.token}", data=ONE_CLICK, headers=HTML | {"Accept-Language": "de"})
        return await resp.text()
    page = check_page(env.run(scenario), "de")
    assert f"Sie wurden von E-Mails von Acme Inc. an {MASKED} abgemeldet." in page.visible


def test_choose_language_parses_q_values():
    assert choose_language("de;q=0, fr") == "fr"
    assert choose_language("it, es;q=0.2, de;q=0.3") == "de"
    assert choose_language("FR-ca") == "fr"
    assert choose_language("de;q=bogus, es") == "es"
    assert choose_language(None) == "en"


def test_mask():
    assert mask("jane@example.net") == "j***@example.net"
    assert mask("x@a.example") == "x***@a.example"


def test_sender_name_is_escaped(env):
    tenants.add(env.store, "evil", ["example.org"], [], None, name="Tom & <b>Jerry</b>")
    token = env.keys.issue()
    sent.record(env.store, token, "evil", RECIPIENT, None, "q3", 86400)

    async def scenario(client):
        return await (await client.get(f"/u/{token}")).text()
    text = env.run(scenario)
    page = check_page(text)
    assert "Tom &amp; &lt;b&gt;Jerry&lt;/b&gt;" in text and "<b>" not in text
    assert "Tom & <b>Jerry</b>" in page.visible


def test_healthz(env):
    async def scenario(client):
        ok = await client.get("/healthz")
        ok_text = await ok.text()
        env.store.close()
        down = await client.get("/healthz")
        return ok.status, ok_text, down.status
    assert env.run(scenario) == (200, "ok: store\n", 503)
    env.store = SqliteStore(env.store.path)          # so the fixture's close() has something to close
