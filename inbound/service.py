"""Starting the inbound roles in a worker: the port-25 listener and the one-click http endpoint."""
from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Callable

from aiohttp import web

from inbound.actions import Actions
from inbound.http import make_app
from inbound.mailbox import Mailbox
from inbound.server import InboundHandler, protocol_factory
from policy.keys import server_ssl_context
from policy.settings import Listen, Settings
from policy.engines import open_store
from policy.store import Store
from policy.tokens import TokenKeys

Bind = Callable[[Listen], socket.socket]
EXPIRE_EVERY = 3600.0


class InboundService:
    def __init__(self, handler: InboundHandler, servers: list[asyncio.Server], store: Store,
                 housekeeping: asyncio.Task, tls: ssl.SSLContext):
        self.handler, self.servers, self.store, self.housekeeping = handler, servers, store, housekeeping
        self.tls = tls
        self.ports = [s.sockets[0].getsockname()[1] for s in servers]

    def reload(self) -> None:
        settings = self.handler.settings
        self.tls.load_cert_chain(settings.tls_cert, settings.tls_key)

    async def close(self) -> None:
        for server in self.servers:
            server.close()
        self.housekeeping.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.housekeeping
        await self.handler.drain()
        self.handler.mailbox.close()
        self.store.close()


async def start_inbound(settings: Settings, index: int, bind: Bind) -> InboundService:
    # the actions run in a thread of their own (DKIM checks may wait on DNS), with a connection of their own,
    # whose commits are fsync'ed before the mailbox marks the message processed
    store = open_store(settings, other_thread=True, durable=True)
    mailbox = Mailbox(settings.mailbox_path, settings.inbound.retention)
    handler = InboundHandler(settings, mailbox, Actions(store, TokenKeys.load(store, settings.tokens.secret_file),
                                                        settings))
    tls = server_ssl_context(settings.tls_cert, settings.tls_key)
    loop = asyncio.get_running_loop()
    factory = protocol_factory(handler, tls, settings.node.workers)
    servers = [await loop.create_server(factory, sock=bind(address)) for address in settings.inbound.listen]
    return InboundService(handler, servers, store, asyncio.create_task(_housekeeping(handler, index)), tls)


async def _housekeeping(handler: InboundHandler, index: int) -> None:
    """Worker 0 processes what a crash left unprocessed, and every worker expires old raw messages."""
    if index == 0:
        await handler.recover()
    while True:
        await handler.mailbox.expire()
        await asyncio.sleep(EXPIRE_EVERY)


class HttpService:
    def __init__(self, runner: web.AppRunner, store: Store, ports: list[int]):
        self.runner, self.store, self.ports = runner, store, ports

    def reload(self) -> None:
        """Nothing to re-read: the http role listens without TLS, behind the operator's proxy."""

    async def close(self) -> None:
        await self.runner.cleanup()
        self.store.close()


# (settings, store) -> (collectors for /metrics, named checks for /healthz); given by the composition root
Observers = Callable[[Settings, Store], tuple[list, dict[str, Callable[[], None]]]]
Apps = Callable[[Settings, Store], dict[str, web.Application]]      # prefix -> application mounted there


async def start_http(settings: Settings, index: int, bind: Bind, observers: Observers | None = None,
                     apps: Apps | None = None) -> HttpService:
    """The HTTP role; the composition root adds its scrape-time observers and the applications mounted
    beside the unsubscribe pages (the tenant API at /v1/, relay/api)."""
    store = open_store(settings)
    collectors, checks = observers(settings, store) if observers else ([], {})
    # a message sent over the tenant API, in base64 (4/3 of its size) inside its JSON, is the largest body
    max_body = settings.submission.max_message_size * 4 // 3 + 1024 * 1024 if apps else 16 * 1024
    app = make_app(store, TokenKeys.load(store, settings.tokens.secret_file), collectors, checks, max_body)
    for prefix, mounted in (apps(settings, store) if apps else {}).items():
        app.add_subapp(prefix, mounted)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    ports = []
    for address in settings.http.listen:
        sock = bind(address)
        await web.SockSite(runner, sock).start()
        ports.append(sock.getsockname()[1])
    return HttpService(runner, store, ports)
