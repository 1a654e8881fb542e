"""`websofttt serve`: the node's worker processes.

One Python process cannot use a second core, so the node runs `node.workers` processes. The parent
binds every listener once and the workers inherit the sockets: a connection waits in one queue until a
worker with time for it accepts it (with SO_REUSEPORT the kernel hashed each connection to one worker,
busy or not, and ten long-lived connections split 8:2 one time in nine; a dying worker's queue was
reset). Each worker owns one spool shard and its own store connection. The parent only supervises: it
tells systemd READY=1 once every worker listens, restarts a worker that dies, passes SIGHUP on (each
worker reloads its TLS certificate and DKIM keys; open connections stay), and on SIGTERM or SIGINT closes its
listeners, asks every worker to drain (finish open transactions) and exits 0. Counters reach /metrics through
prometheus-client's multiprocess files in data_dir/metrics (relay/cli/node.py points it there before this module is
imported).
"""
from __future__ import annotations

import asyncio
import contextlib
import fcntl
import gc
import logging
import multiprocessing
import os
import signal
import socket
import ssl
import sys
import time
from datetime import timedelta
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import dns.asyncresolver

from policy import logs, retention, shaping_rules, terms, terms_notices, tls_reports
from policy.groupcommit import GroupCommit
from policy.keys import server_ssl_context
from policy.settings import ConfigError, Listen, Settings
from policy.engines import open_store
from policy.store import Store
from policy.tokens import TokenKeys
from relay import eventloop, webhooks
from relay.delivery import DeliveryLoop
from relay.intake import Intake
from relay.egress import Sources
from relay.shaping import Shaper
from relay.routing import Router
from relay import resolver as relay_dns, tls_report
from relay.transport import Transport
from relay.signer import Signer
from relay.smtp_out import Courier
from relay.sdnotify import notify
from relay.spool import Spool, shard_path, shard_paths
from relay.submission import Sessions, SubmissionHandler, protocol_factory

log = logging.getLogger("websofttt.serve")
RETENTION_EVERY = 3600.0     # seconds between retention purges


class ServeError(Exception):
    """The node cannot start (a listener cannot be bound, another serve runs); exit status 1."""


def setup_logging(settings: Settings) -> None:
    logs.setup(settings.privacy.mask_recipients)


def bind(address: Listen) -> socket.socket:
    """A listening socket, bound once by the parent; the workers it forks inherit it.

    The protocol is named (IPPROTO_TCP): the sockets accepted from it inherit it, and only then does the
    event loop set TCP_NODELAY on them; with protocol 0 a multi-line reply's second segment waited ~40 ms
    for the client's delayed ACK.
    """
    host, port = address
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(1024)
    except OSError as e:
        sock.close()
        raise ServeError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    sock.setblocking(False)
    return sock


def listeners(settings: Settings, roles: tuple[str, ...]) -> list[tuple[Listen, bool]]:
    """(address, implicit TLS) for every listener of the given roles."""
    sub = settings.submission
    if "submission" not in roles:
        return []
    return [(a, False) for a in sub.listen] + [(a, True) for a in sub.tls_listen]


def lock_roles(settings: Settings, roles: tuple[str, ...]) -> int:
    """One `serve` per role and data dir: two would share one spool and one node name."""
    path = settings.data_dir / f"serve-{'-'.join(roles)}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = os.pread(fd, 32, 0).decode().strip() or "?"
        os.close(fd)
        raise ServeError(f"another 'websofttt serve' (pid {pid}) already runs {', '.join(roles)} "
                         f"for {settings.data_dir}") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def serve(settings: Settings, roles: tuple[str, ...], starters: Mapping[str, Starter]) -> int:
    """Supervise the workers until SIGTERM/SIGINT; return the exit status."""
    lock_roles(settings, roles)
    addresses = [a for a, _ in listeners(settings, roles)]
    addresses += [*settings.inbound.listen] * ("inbound" in roles) + [*settings.http.listen] * ("http" in roles)
    sockets = {address: bind(address) for address in addresses if address[1]}   # fails fast, in the parent
    store = open_store(settings)
    store.migrate()
    store.close()
    context = multiprocessing.get_context("fork")
    workers: dict[int, multiprocessing.context.ForkProcess] = {}
    stopping = False

    ready = {index: context.Event() for index in range(settings.node.workers)}

    def start(index: int) -> None:
        ready[index].clear()
        proc = context.Process(target=run_worker, args=(settings, index, roles, starters, ready[index], sockets),
                               name=f"worker-{index}")
        proc.start()
        workers[index] = proc

    def reload(signum, frame) -> None:
        for proc in workers.values():
            if proc.is_alive() and proc.pid is not None:     # alive: started, so it has a pid
                os.kill(proc.pid, signal.SIGHUP)

    def stop(signum, frame) -> None:
        nonlocal stopping
        stopping = True
        for sock in sockets.values():      # the workers close their copies as they drain: new clients are refused
            sock.close()
        for proc in workers.values():
            if proc.is_alive() and proc.pid is not None:
                os.kill(proc.pid, signal.SIGTERM)
        notify("STOPPING=1")

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, reload)
    # What the parent has allocated (modules, settings) goes where the collector never looks: the workers'
    # collections would otherwise touch, and so copy, every page they share with it after the fork.
    gc.freeze()
    for index in range(settings.node.workers):
        start(index)
    announced = False
    while workers:
        time.sleep(0.2)
        if not announced and not stopping and all(event.is_set() for event in ready.values()):
            announced = True
            notify("READY=1")
            log.info("node %s serving %s with %d workers", settings.node.name, ",".join(roles), len(workers))
        for index, proc in list(workers.items()):
            if proc.is_alive():
                continue
            del workers[index]
            if not stopping:
                log.error("worker %d exited with status %s; restarting it", index, proc.exitcode)
                time.sleep(1)
                start(index)
    return 0


def run_worker(settings: Settings, index: int, roles: tuple[str, ...], starters: Mapping[str, Starter],
               ready, sockets: Mapping[Listen, socket.socket]) -> None:
    """One worker; `sockets` are the parent's listening sockets (port 0, any free port, is bound here)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # the parent turns ^C into SIGTERM for each worker
    signal.signal(signal.SIGHUP, signal.SIG_IGN)   # until the worker can reload

    async def main() -> None:
        started = asyncio.get_running_loop().create_future()
        started.add_done_callback(lambda _: ready.set())
        await worker_main(settings, index, roles, started=started, starters=starters,
                          bind=lambda a: sockets[a] if a[1] else bind(a))
    try:
        eventloop.run(main())
    except Exception:               # logged as JSON, not printed by multiprocessing; the parent restarts it
        log.exception("worker %d failed", index)
        sys.exit(1)


def owned_shards(settings: Settings, index: int) -> list[Path]:
    """This worker's shard, plus any shard left without a worker (fewer workers than before): never stranded."""
    workers = settings.node.workers
    extra = [p for p in shard_paths(settings.spool_dir)
             if int(p.stem.split("-")[1]) >= workers and int(p.stem.split("-")[1]) % workers == index]
    return [shard_path(settings.spool_dir, index)] + extra


def smarthost_auth(settings: Settings) -> tuple[str, str] | None:
    """(username, password) for the smarthost, the password read from its own file; checked at start."""
    d = settings.delivery
    if not d.smarthost_username:
        return None
    assert d.smarthost_password_file is not None     # given with the username (checked when the settings load)
    try:
        password = d.smarthost_password_file.read_text(encoding="utf-8").splitlines()[0]
    except (OSError, UnicodeDecodeError, IndexError) as e:
        raise ConfigError(f"{settings.source}: [delivery] smarthost_password_file {d.smarthost_password_file} "
                          f"cannot be read: {getattr(e, 'strerror', None) or 'empty or not UTF-8'}") from None
    return d.smarthost_username, password


def tls_sessions(settings: Settings, writes: GroupCommit) -> Callable[[tls_reports.Session], None] | None:
    """Each MX session counted for TLS-RPT with the store's next group commit (`delivery.tls_report`)."""
    if not settings.delivery.tls_report:
        return None
    return lambda session: writes.later(tls_reports.count, terms.utc_today().isoformat(), session)


def delivery_loop(settings: Settings, store: Store, writes: GroupCommit, spool: Spool,
                  resolver: dns.asyncresolver.Resolver | None = None) -> DeliveryLoop:
    router = Router(settings.delivery, resolver, smarthost_auth=smarthost_auth(settings), dns_settings=settings.dns)
    sessions = tls_sessions(settings, writes)
    return DeliveryLoop(settings, store, writes, spool, Signer(settings, store),
                        TokenKeys.load(store, settings.tokens.secret_file), router,
                        Transport(settings, router, store, store.call, sessions),
                        Courier(settings.delivery, settings.provider.hostname, settings.node.workers, sessions),
                        Shaper(shaping_rules.load(settings.delivery.shaping_file), store, store.call),
                        Sources(settings.egress, store, store.call))


async def housekeeping_loop(settings: Settings, store: Store, spools: list[Spool], stop: asyncio.Event) -> None:
    """Worker 0 of the delivery role, at start and every RETENTION_EVERY: purges what is past its retention,
    sends the terms reminders that are due (every node does; each reminder goes once: policy/terms_notices.py)
    and yesterday's TLS-RPT reports (each domain's by one node: relay/tls_report.py)."""
    resolver: dns.asyncresolver.Resolver | None = None
    while not stop.is_set():
        try:
            counts: dict[str, Any] = retention.purge(store, settings)   # table names: none is a named field of event
            before = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - settings.delivery.sent_retention))
            counts["queue"] = sum([await spool.purge_finished(before) for spool in spools])
            logs.event("purged", **counts)
        except Exception:          # a busy store: the next round catches up
            log.exception("retention purge failed")
        try:
            for notice in terms_notices.remind(store, settings.provider, settings.node.name, terms.utc_today()):
                logs.event("terms_reminder", **notice)
        except Exception:
            log.exception("terms reminders failed")
        if settings.delivery.tls_report:
            try:
                resolver = resolver or relay_dns.make_resolver(settings.dns)
                today = terms.utc_today()
                await tls_report.send_day(settings, store, store.call, resolver, (today - timedelta(days=1)).isoformat())
                tls_reports.purge(store, today)
            except Exception:
                log.exception("TLS-RPT reports failed")
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), RETENTION_EVERY)


class Service(Protocol):
    """A role started by the composition root (relay/cli/node.py), e.g. the inbound listener or the http role."""
    ports: list[int]

    async def close(self) -> None: ...

    def reload(self) -> None:
        """Re-read certificates (SIGHUP)."""


# (settings, worker index, bind) -> the running service; `bind` gives the listening socket of an address
# A role from inbound/, started in each worker: (settings, worker index, bind, the worker's Intake, through which
# the http role's tenant API submits mail).
Starter = Callable[[Settings, int, Callable[[Listen], socket.socket], Intake], Awaitable[Service]]


async def worker_main(settings: Settings, index: int, roles: tuple[str, ...],
                      stop: asyncio.Event | None = None, started: asyncio.Future | None = None,
                      resolver: dns.asyncresolver.Resolver | None = None,
                      starters: Mapping[str, Starter] | None = None,
                      bind: Callable[[Listen], socket.socket] = bind) -> None:
    """Serve until SIGTERM or `stop` is set, then drain; `started` receives the bound ports by role.

    Submission and delivery are this module's; other roles come as `starters`. `resolver` replaces the
    system's DNS resolver for MX lookups (tests have no public DNS). Each resource is undone right where it
    is made, on one exit stack, so shutdown runs in the reverse order of start: the listeners close first,
    then open sessions drain, the delivery loops finish, the queued store writes are committed, and the
    spools and the store close last.
    """
    loop = asyncio.get_running_loop()
    own_stop = stop is None
    async with contextlib.AsyncExitStack() as stack:
        if stop is None:
            stop = asyncio.Event()
            loop.add_signal_handler(signal.SIGTERM, stop.set)
            stack.callback(loop.remove_signal_handler, signal.SIGTERM)
        store = stack.enter_context(contextlib.closing(open_store(settings)))
        spools = [stack.enter_context(contextlib.closing(Spool(path))) for path in owned_shards(settings, index)]
        writes = GroupCommit(store)       # the store writes of this worker's sessions and deliveries, batched
        stack.push_async_callback(writes.drain)
        deliveries = await stack.enter_async_context(_delivery(settings, store, writes, spools, roles, index, stop,
                                                               resolver))
        stack.callback(stop.set)          # whatever ends the worker (SIGTERM, a listener that fails) ends the loops
        tls = server_ssl_context(settings.tls_cert, settings.tls_key)
        intake = Intake(settings, store, writes, spools[0], handoff=deliveries[0].fresh if deliveries else None)
        ports = {"submission": await stack.enter_async_context(_submission(settings, intake, roles, tls, bind))}
        services = {}
        for role, start in (starters or {}).items():
            if role in roles:
                services[role] = service = await start(settings, index, bind, intake)
                stack.push_async_callback(service.close)
                ports[role] = service.ports

        def reload() -> None:
            """SIGHUP: new TLS certificate and DKIM keys for new connections and copies; nothing is dropped."""
            try:
                tls.load_cert_chain(settings.tls_cert, settings.tls_key)
                for service in services.values():
                    service.reload()
                for d in deliveries:
                    d.signer.reload()
                log.info("reloaded TLS certificate and DKIM keys")
            except Exception as e:     # a half-written certificate: keep serving with the old one
                log.error("reload failed, still using the previous certificate and keys: %s", e)
        if own_stop:
            loop.add_signal_handler(signal.SIGHUP, reload)
            stack.callback(loop.remove_signal_handler, signal.SIGHUP)
        if started is not None:
            started.set_result(ports)
        await stop.wait()


@contextlib.asynccontextmanager
async def _delivery(settings: Settings, store: Store, writes: GroupCommit, spools: list[Spool], roles: tuple[str, ...],
                    index: int, stop: asyncio.Event, resolver: dns.asyncresolver.Resolver | None
                    ) -> AsyncIterator[list[DeliveryLoop]]:
    """The delivery role: one loop per owned shard (and worker 0's housekeeping and webhook dispatcher), finished at shutdown
    once `stop` is set and the sessions that might still hand them mail have drained."""
    deliveries = [delivery_loop(settings, store, writes, spool, resolver) for spool in spools] if "delivery" in roles else []
    runs = [asyncio.create_task(d.run(stop)) for d in deliveries]
    if deliveries and index == 0:
        runs.append(asyncio.create_task(housekeeping_loop(settings, store, spools, stop)))
        runs.append(asyncio.create_task(webhooks.dispatch_loop(settings, store, stop)))
    try:
        yield deliveries
    finally:
        await asyncio.gather(*runs)


@contextlib.asynccontextmanager
async def _submission(settings: Settings, intake: Intake, roles: tuple[str, ...], tls: ssl.SSLContext,
                      bind: Callable[[Listen], socket.socket]) -> AsyncIterator[list[int]]:
    """The submission listeners (STARTTLS and implicit TLS); at shutdown they stop accepting, and open
    sessions get `submission.shutdown_grace` to finish their transaction."""
    loop = asyncio.get_running_loop()
    handler = SubmissionHandler(settings, intake)
    sessions = Sessions()
    servers = []
    try:
        for address, implicit in listeners(settings, roles):
            servers.append(await loop.create_server(protocol_factory(handler, sessions, tls, implicit),
                                                    sock=bind(address), ssl=tls if implicit else None))
        yield [server.sockets[0].getsockname()[1] for server in servers]
    finally:
        for server in servers:
            server.close()
        await sessions.drain(settings.submission.shutdown_grace)
