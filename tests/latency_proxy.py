"""A TCP proxy on 127.0.0.1 that puts a network between a client and a server: each chunk is written
`delay_ms / 2` after it arrived, in each direction, so a round trip grows by `delay_ms`.

Each chunk is scheduled for its own arrival time plus the one-way delay rather than slept on in
series, so the delay adds latency, not a throughput limit (a window in flight is delayed as a
whole, as on a long link). It can also stop forwarding (`pause`: a server that hangs) and cut every
connection (`close_connections`: a server that restarts).

It runs in a thread of its own with its own event loop, beside whatever the caller runs. That loop
waits with select(), whose timeout has microsecond resolution: epoll's (asyncio's default on Linux)
is a millisecond, which would round a 0.5 ms one-way delay up to 1 ms. Even so a timer fires late by
the machine's wake-up latency (~0.1 ms on a VM, more when the loop is busy), which would add a third
to a 1 ms round trip: the proxy keeps a running mean of that lateness and sets its timers that much
early, so that the delay is the one asked for on average.

Standalone (no import from the project) so that the benchmark can run it as a process of its own:
`python tests/latency_proxy.py TARGET_PORT DELAY_MS` prints the port it listens on, then forwards
until SIGTERM or SIGINT.
"""
from __future__ import annotations

import asyncio
import collections
import selectors
import signal
import sys
import threading
from collections.abc import Coroutine
from typing import Any

HOST = "127.0.0.1"
HIGH_WATER = 4 * 1024 * 1024     # bytes waiting in one direction before its source stops being read
LATENESS_WEIGHT = 0.05           # of each new sample in the running mean of the timers' lateness
_EOF = object()                  # the source half-closed: half-close the destination, in order
_CLOSE = object()                # the source is gone: close the destination once the data before it is out


class _End(asyncio.Protocol):
    """One socket of a proxied connection: the accepted client's or the one to the target."""

    def __init__(self, conn: _Connection) -> None:
        self.conn = conn
        self.transport: asyncio.Transport | None = None
        self.out: _Pipe | None = None       # what this end receives goes out through this pipe
        self.into: _Pipe | None = None      # the pipe that writes to this end

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport          # type: ignore[assignment]
        self.into.schedule()

    def data_received(self, data: bytes) -> None:
        self.out.push(data)

    def eof_received(self) -> bool:
        self.out.push(_EOF)
        return True                         # keep the other direction open (half-close)

    def connection_lost(self, exc: Exception | None) -> None:
        self.out.push(_CLOSE)
        self.conn.ends_lost += 1
        if self.conn.ends_lost == 2:
            self.conn.proxy.connections.discard(self.conn)

    def pause_writing(self) -> None:
        self.into.dest_blocked = True
        self.into.flow()

    def resume_writing(self) -> None:
        self.into.dest_blocked = False
        self.into.flow()


class _Pipe:
    """One direction of a connection: chunks queued with the time they are due, written in arrival order."""

    def __init__(self, proxy: DelayProxy, source: _End, dest: _End) -> None:
        self.proxy, self.source, self.dest = proxy, source, dest
        self.queue: collections.deque[tuple[float, Any]] = collections.deque()
        self.queued_bytes = 0
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = 0.0             # when the timer was asked to fire, if that was in the future; else 0
        self.dest_blocked = False
        self.reading_paused = False
        source.out, dest.into = self, self

    def push(self, item: Any) -> None:
        loop = self.proxy.loop
        self.queue.append((loop.time() + self.proxy.one_way, item))
        if isinstance(item, bytes):
            self.queued_bytes += len(item)
        self.flow()
        self.schedule()

    def schedule(self) -> None:
        """A timer for the first queued chunk, unless one is set or nothing may be written now."""
        if self.timer is None and self.queue and not self.proxy.paused and self.dest.transport is not None:
            loop = self.proxy.loop
            at = self.queue[0][0] - self.proxy.lateness
            self.timer_at = at if at > loop.time() else 0.0
            self.timer = loop.call_at(at, self.release)

    def release(self) -> None:
        """Write every chunk that is due (or due within the timers' usual lateness), in order."""
        self.timer = None
        if self.proxy.paused or self.dest.transport is None:
            return
        now = self.proxy.loop.time()
        if self.timer_at:
            self.proxy.observe_lateness(now - self.timer_at)
        transport = self.dest.transport
        while self.queue and self.queue[0][0] <= now + self.proxy.lateness:
            _, item = self.queue.popleft()
            if item is _CLOSE:
                transport.close()
                self.queue.clear()
                self.queued_bytes = 0
            elif item is _EOF:
                if transport.can_write_eof() and not transport.is_closing():
                    transport.write_eof()
                self.source.conn.eof_delivered()
            else:
                self.queued_bytes -= len(item)
                if not transport.is_closing():
                    transport.write(item)
        self.flow()
        self.schedule()

    def flow(self) -> None:
        """Stop reading the source while the destination or the delay queue is full; read it again after."""
        source = self.source.transport
        if source is None or source.is_closing():
            return
        full = self.dest_blocked or self.queued_bytes > HIGH_WATER
        if full and not self.reading_paused:
            source.pause_reading()
            self.reading_paused = True
        elif not full and self.reading_paused:
            source.resume_reading()
            self.reading_paused = False


class _Connection:
    """A client accepted by the proxy and its connection to the target."""

    def __init__(self, proxy: DelayProxy) -> None:
        self.proxy = proxy
        self.client, self.upstream = _End(self), _End(self)
        self.up, self.down = _Pipe(proxy, self.client, self.upstream), _Pipe(proxy, self.upstream, self.client)
        self.ends_lost = 0
        self.eofs = 0
        self.connecting: asyncio.Task | None = None

    async def connect(self) -> None:
        try:
            await self.proxy.loop.create_connection(lambda: self.upstream, self.proxy.target_host,
                                                    self.proxy.target_port)
        except OSError:
            self.proxy.connections.discard(self)
            if self.client.transport is not None:
                self.client.transport.abort()

    def eof_delivered(self) -> None:
        """Once both sides have half-closed and each EOF was passed on, nothing more can flow: close both."""
        self.eofs += 1
        if self.eofs == 2:
            for end in (self.client, self.upstream):
                end.transport.close()

    def abort(self) -> None:
        if self.connecting is not None:
            self.connecting.cancel()
        for end in (self.client, self.upstream):
            if end.transport is not None:
                end.transport.abort()
        for pipe in (self.up, self.down):
            pipe.queue.clear()
            if pipe.timer is not None:
                pipe.timer.cancel()
                pipe.timer = None


class DelayProxy:
    """Forwards 127.0.0.1:port to target_host:target_port with delay_ms / 2 added in each direction."""

    def __init__(self, target_host: str, target_port: int, delay_ms: float) -> None:
        self.target_host, self.target_port = target_host, target_port
        self.one_way = delay_ms / 2000
        self.lateness = 0.0             # running mean of how late a timer fires, in seconds
        self.paused = False
        self.connections: set[_Connection] = set()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.port = 0
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None

    def observe_lateness(self, late: float) -> None:
        """Fold one timer's lateness into the mean, capped at half the one-way delay (a stalled loop is no
        reason to send everything early)."""
        mean = self.lateness + LATENESS_WEIGHT * (late - self.lateness)
        self.lateness = min(max(mean, 0.0), self.one_way / 2)

    def start(self) -> int:
        """Listen on a free port of 127.0.0.1 and forward from a thread of its own; returns the port."""
        self.loop = asyncio.SelectorEventLoop(selectors.SelectSelector())
        ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(ready,), name="delay-proxy", daemon=True)
        self._thread.start()
        ready.wait()
        if not self.port:
            raise OSError(f"the proxy could not listen on {HOST}")
        return self.port

    def _serve(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self._server = self.loop.run_until_complete(self.loop.create_server(self._accept, HOST, 0))
            self.port = self._server.sockets[0].getsockname()[1]
        finally:
            ready.set()
        self.loop.run_forever()
        self.loop.close()

    def _accept(self) -> _End:
        conn = _Connection(self)
        self.connections.add(conn)
        conn.connecting = self.loop.create_task(conn.connect())
        return conn.client

    def _call(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run `coro` on the proxy's loop and return once it has run there."""
        asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    async def _set_paused(self, paused: bool) -> None:
        self.paused = paused
        if not paused:
            for conn in list(self.connections):
                conn.up.schedule()
                conn.down.schedule()

    def pause(self) -> None:
        """Stop forwarding: what arrives from now on (and what is still delayed) is held until `resume`."""
        self._call(self._set_paused(True))

    def resume(self) -> None:
        """Forward again: what was held goes out at once, in order."""
        self._call(self._set_paused(False))

    async def _close_connections(self) -> None:
        for conn in list(self.connections):
            conn.abort()
        self.connections.clear()

    def close_connections(self) -> None:
        """Reset every current connection (both sides); the proxy keeps accepting new ones."""
        self._call(self._close_connections())

    async def _shutdown(self) -> None:
        self._server.close()
        await self._close_connections()

    def stop(self) -> None:
        """Stop listening, drop every connection and end the thread."""
        if self._thread is None:
            return
        self._call(self._shutdown())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self._thread = None


def main(argv: list[str]) -> None:
    """`latency_proxy.py TARGET_PORT DELAY_MS`: print the port, forward until SIGTERM or SIGINT."""
    target_port, delay_ms = int(argv[0]), float(argv[1])
    stop = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop)      # the proxy's thread inherits the mask: only sigwait sees them
    proxy = DelayProxy(HOST, target_port, delay_ms)
    print(proxy.start(), flush=True)
    signal.sigwait(stop)
    proxy.stop()


if __name__ == "__main__":
    main(sys.argv[1:])
