"""The one-click unsubscribe endpoint (RFC 8058) behind `{public_url}/u/{TOKEN}`, /metrics and /healthz.

Mailbox providers POST `List-Unsubscribe=One-Click` without a browser; people who open the link get a
page with one button. A GET never unsubscribes: link scanners and previews follow GETs. The page names
the sender and a masked address (the link may be forwarded), loads nothing from elsewhere, needs no
JavaScript and sets no cookie. Tokens and addresses are never logged at INFO.
"""
from __future__ import annotations

import html
import logging
import os
from collections.abc import Callable, Iterable, Mapping

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest, multiprocess

from policy import logs, optout
from policy.optout import Subscription
from policy.addresses import mask
from policy.store import Store
from policy.tokens import TokenKeys

log = logging.getLogger("websofttt.http")

_FIELD, _VALUE = "List-Unsubscribe", "One-Click"
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

# One dict per language; {sender} and {address} are filled in already escaped.
TEXTS: dict[str, dict[str, str]] = {
    "en": {"ask_title": "Unsubscribe", "ask": "Stop mail from {sender} to {address}?", "button": "Unsubscribe",
           "hint": "After you press the button, this sender will send no more mail to this address.",
           "done_title": "Unsubscribed",
           "done": "You have been unsubscribed from mail by {sender} sent to {address}.",
           "already": "You are already unsubscribed from mail by {sender} sent to {address}.",
           "gone_title": "Link not valid",
           "gone": "This unsubscribe link is not valid or has expired. Please use the link in the latest message.",
           "bad_title": "Bad request",
           "bad": "This request was not understood. Please open the link in the message again."},
    "de": {"ask_title": "Abmelden", "ask": "Keine E-Mails mehr von {sender} an {address}?", "button": "Abmelden",
           "hint": "Nach dem Klick sendet dieser Absender keine E-Mails mehr an diese Adresse.",
           "done_title": "Abgemeldet", "done": "Sie wurden von E-Mails von {sender} an {address} abgemeldet.",
           "already": "Sie sind bereits von E-Mails von {sender} an {address} abgemeldet.",
           "gone_title": "Link ungültig",
           "gone": "Dieser Abmeldelink ist ungültig oder abgelaufen. Nutzen Sie den Link der neuesten Nachricht.",
           "bad_title": "Ungültige Anfrage",
           "bad": "Diese Anfrage war ungültig. Bitte öffnen Sie den Link erneut."},
    "fr": {"ask_title": "Se désabonner", "ask": "Ne plus recevoir les e-mails de {sender} à {address}\u00a0?",
           "button": "Se désabonner",
           "hint": "Après le clic, cet expéditeur n’enverra plus d’e-mails à cette adresse.",
           "done_title": "Désabonnement confirmé",
           "done": "Vous avez été désabonné des e-mails de {sender} envoyés à {address}.",
           "already": "Vous êtes déjà désabonné des e-mails de {sender} envoyés à {address}.",
           "gone_title": "Lien non valide",
           "gone": "Ce lien de désabonnement n’est pas valide ou a expiré. Utilisez le lien du dernier message.",
           "bad_title": "Requête non valide",
           "bad": "Cette requête n’a pas été comprise. Rouvrez le lien du message."},
    "es": {"ask_title": "Darse de baja", "ask": "¿Dejar de recibir correos de {sender} en {address}?",
           "button": "Darse de baja",
           "hint": "Después de pulsar el botón, este remitente no enviará más correos a esta dirección.",
           "done_title": "Baja confirmada",
           "done": "Se ha dado de baja de los correos de {sender} enviados a {address}.",
           "already": "Ya está dado de baja de los correos de {sender} enviados a {address}.",
           "gone_title": "Enlace no válido",
           "gone": "Este enlace de baja no es válido o ha caducado. Use el enlace del mensaje más reciente.",
           "bad_title": "Solicitud no válida",
           "bad": "No se entendió la solicitud. Vuelva a abrir el enlace del mensaje."},
}
DEFAULT_LANG = "en"

_PAGE = """<!doctype html>
<html lang="{lang}">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body{{margin:0;padding:1.5rem 1rem;font:1.125rem/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;\
color:#1a1a1a;background:#fff}}
main{{max-width:32rem;margin:0 auto}}
h1{{font-size:1.5rem;margin:0 0 1rem}}
p,form{{margin:0 0 1rem}}
.hint{{color:#444}}
button{{display:block;width:100%;min-height:3rem;padding:.75rem 1rem;font:inherit;font-weight:600;color:#fff;\
background:#0b57d0;border:0;border-radius:.5rem;cursor:pointer}}
button:focus-visible{{outline:3px solid #1a1a1a;outline-offset:3px}}
</style>
</head>
<body>
<main>
<h1>{title}</h1>
{body}
</main>
</body>
</html>
"""
_FORM = """<p id="what">{ask}</p>
<form method="post">
<input type="hidden" name="{field}" value="{value}">
<button type="submit" aria-describedby="what">{button}</button>
</form>
<p class="hint">{hint}</p>"""


def choose_language(header: str | None) -> str:
    """The first language by q-value (ties keep header order) that has a translation; English otherwise."""
    ranked: list[tuple[float, int, str]] = []
    for i, item in enumerate((header or "").split(",")):
        tag, *params = (part.strip() for part in item.split(";"))
        q = 1.0
        for p in params:
            name, _, value = p.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        primary = tag.split("-")[0].lower()
        if q > 0 and primary in TEXTS:
            ranked.append((-q, i, primary))
    return min(ranked)[2] if ranked else DEFAULT_LANG


def token_of(request: web.Request) -> str:
    """Tokens are compared in lower case: mail systems may change the case (forged ones fail the MAC)."""
    return request.match_info["token"].lower()


def _wants_html(request: web.Request) -> bool:
    """GETs are people with browsers; a POST gets HTML only if it asks for it (mail robots get text)."""
    return request.method != "POST" or "text/html" in request.headers.get("Accept", "")


def _reply(request: web.Request, status: int, title_key: str, text_key: str,
           sub: Subscription | None = None, form: bool = False) -> web.Response:
    lang = choose_language(request.headers.get("Accept-Language"))
    t = TEXTS[lang]
    values = {"sender": sub.sender, "address": mask(sub.recipient)} if sub else {}
    headers = {"Content-Language": lang, "Vary": "Accept, Accept-Language"}
    if not form and not _wants_html(request):
        return web.Response(status=status, text=t[text_key].format(**values) + "\n", headers=headers)
    esc = {k: html.escape(v) for k, v in values.items()}
    if form:
        body = _FORM.format(ask=t["ask"].format(**esc), button=html.escape(t["button"]),
                            hint=html.escape(t["hint"]), field=_FIELD, value=_VALUE)
    else:
        body = f"<p>{t[text_key].format(**esc)}</p>"
    page = _PAGE.format(lang=lang, title=html.escape(t[title_key]), body=body)
    return web.Response(status=status, text=page, content_type="text/html", charset="utf-8", headers=headers)


class _ThisProcess:
    """The default registry of this process, when there are no worker files to sum (tests, one process)."""

    def collect(self):
        return REGISTRY.collect()


def metrics_registry(collectors: Iterable = ()) -> CollectorRegistry:
    """Every worker's counters (multiprocess mode) or this process's, plus the scrape-time collectors."""
    registry = CollectorRegistry(auto_describe=False)
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.MultiProcessCollector(registry)
    else:
        registry.register(_ThisProcess())
    for collector in collectors:
        registry.register(collector)
    return registry


def make_app(store: Store, keys: TokenKeys, collectors: Iterable = (),
             checks: Mapping[str, Callable[[], object]] | None = None, max_body: int = 16 * 1024) -> web.Application:
    """The HTTP role. Store calls go through `store.call`: inline on SQLite, in a thread on PostgreSQL.

    `collectors` add scrape-time gauges to /metrics; `checks` are named health checks beyond the store,
    each raising when its part cannot serve (both come from the composition root). `max_body` bounds every
    request body, also those of the applications mounted beside it (aiohttp reads it from this one).
    """
    registry = metrics_registry(collectors)
    checks = {"store": lambda: store.one("SELECT 1"), **(checks or {})}

    def not_found(request: web.Request) -> web.Response:
        log.warning("unknown, forged or expired unsubscribe token (%s %s)", request.method, request.remote)
        return _reply(request, 404, "gone_title", "gone")

    async def show(request: web.Request) -> web.Response:
        sub = await store.call(optout.lookup, store, keys, token_of(request))
        if sub is None:
            return not_found(request)
        if sub.opted_out:
            return _reply(request, 200, "done_title", "already", sub)
        return _reply(request, 200, "ask_title", "ask", sub, form=True)

    async def unsubscribe(request: web.Request) -> web.Response:
        form = await request.post()
        if form.get(_FIELD) != _VALUE:
            return _reply(request, 400, "bad_title", "bad")
        sub = await store.call(optout.by_token, store, keys, token_of(request), "one-click")
        if sub is None:
            return not_found(request)
        logs.event("unsubscribe", tenant=sub.tenant, recipient=sub.recipient, via="one-click")
        return _reply(request, 200, "done_title", "done", sub)

    async def healthz(request: web.Request) -> web.Response:
        failed = []
        for name, check in checks.items():
            try:
                await store.call(check)
            except Exception as e:      # a closed store, an unreadable spool: take this node out of rotation
                log.warning("health check %s failed: %s", name, e)
                failed.append(name)
        if failed:
            return web.Response(status=503, text=f"unavailable: {', '.join(failed)}\n")
        return web.Response(text=f"ok: {', '.join(checks)}\n")

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def secure(request: web.Request, response: web.StreamResponse) -> None:
        response.headers.update(SECURITY_HEADERS)

    app = web.Application(client_max_size=max_body)
    app.on_response_prepare.append(secure)
    app.router.add_get("/u/{token}", show)
    app.router.add_post("/u/{token}", unsubscribe)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    return app
